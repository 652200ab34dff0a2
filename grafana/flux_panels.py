"""The Flux queries of the dashboards, built from collector.schema's names.

Shapes Grafana needs:
- time series (timeseries panels): one table per series, ``_time`` and ``_value``;
- one wide frame (trend and bar-chart panels, tables): ``group()`` then ``pivot`` so that
  each run (or run and client) is a column, keyed by epoch or round.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector import schema
from grafana.flux import (
    ROUND_NUMBER,
    any_of,
    columns,
    equals,
    literal,
    pipeline,
    query,
    select,
    with_round_number,
)

SERIES_COLUMNS = ("_time", "_value", "_field", schema.RUN_ID, schema.CLIENT_ID)
"""What a time-series panel keeps: Grafana names each series by field and run (and client)."""

CENTRALIZED_CURVE = f"not exists r.{schema.CLIENT_ID}"
"""Epoch points of the run itself, not of federated clients (whose epochs restart each round)."""

TOP_LAYERS = 10


def run_ids_variable(*measurements: str) -> str:
    """The ``run_id`` variable's values: runs with points in the dashboard's time range.

    ``schema.tagValues`` looks back 30 days unless told otherwise: the explicit ``start`` and
    ``stop`` follow the dashboard's time range (the variable refreshes when it changes).
    """
    arguments = [
        "bucket: v.defaultBucket",
        f"tag: {literal(schema.RUN_ID)}",
    ]
    if measurements:
        arguments.append(f"predicate: (r) => {any_of('_measurement', measurements)}")
    arguments += ["start: v.timeRangeStart", "stop: v.timeRangeStop"]
    body = "".join(f"    {argument},\n" for argument in arguments)
    return f'import "influxdata/influxdb/schema"\n\nschema.tagValues(\n{body})\n'


def series(
    measurement: str,
    fields: Sequence[str],
    *conditions: str,
    window: str | None = None,
) -> str:
    """Time series of ``fields``, one per run (and client); ``window`` aggregates them per
    ``v.windowPeriod`` with that function (dense batch and gradient points)."""
    stages = select(measurement, fields, *conditions)
    if window is not None:
        stages.append(f"aggregateWindow(every: v.windowPeriod, fn: {window}, createEmpty: false)")
    stages.append(f"keep(columns: {columns(SERIES_COLUMNS)})")
    return query(*stages)


def best_values(lower_is_better: Sequence[str], higher_is_better: Sequence[str]) -> str:
    """One row per selected run: the best value each epoch metric reached."""
    return (
        "data = "
        + pipeline(
            *select(schema.M_EPOCH, (*lower_is_better, *higher_is_better), CENTRALIZED_CURVE),
            f'group(columns: ["{schema.RUN_ID}", "_field"])',
        )
        + "\n\n"
        + _per_run_table(
            {"lowest": (lower_is_better, "min()"), "highest": (higher_is_better, "max()")},
            row_key=(schema.RUN_ID,),
        )
    )


def best_and_last_values(
    lower_is_better: Sequence[str], higher_is_better: Sequence[str], last: Sequence[str]
) -> str:
    """One row per selected run: the best and the last value of each epoch metric, as
    ``best_<metric>`` and ``last_<metric>`` columns."""
    run_columns = (schema.RUN_ID, schema.EXPERIMENT, schema.MODE)
    return (
        "data = "
        + pipeline(
            *select(
                schema.M_EPOCH, (*lower_is_better, *higher_is_better, *last), CENTRALIZED_CURVE
            ),
            f"group(columns: {columns((*run_columns, '_field'))})",
            'sort(columns: ["_time"])',
        )
        + "\n\n"
        + _per_run_table(
            {
                "lowest": (lower_is_better, "min()"),
                "highest": (higher_is_better, "max()"),
                "latest": (last, "last()"),
            },
            row_key=run_columns,
            prefixes={"lowest": "best_", "highest": "best_", "latest": "last_"},
        )
    )


def _per_run_table(
    reductions: dict[str, tuple[Sequence[str], str]],
    *,
    row_key: Sequence[str],
    prefixes: dict[str, str] | None = None,
) -> str:
    """Reduce ``data`` (grouped by run and field) per name in ``reductions``, then one row per
    run with a column per field (``prefixes`` renames a reduction's fields)."""
    blocks = []
    for name, (fields, reducer) in reductions.items():
        stages = ["data", f"filter(fn: (r) => {any_of('_field', fields)})", reducer, "group()"]
        prefix = (prefixes or {}).get(name)
        if prefix:
            stages.append(f'map(fn: (r) => ({{r with _field: "{prefix}" + r._field}}))')
        blocks.append(f"{name} = {pipeline(*stages)}\n")
    tables = ", ".join(reductions)
    final = query(
        f"union(tables: [{tables}])",
        "group()",
        f"keep(columns: {columns((*row_key, '_field', '_value'))})",
        f'pivot(rowKey: {columns(row_key)}, columnKey: ["_field"], valueColumn: "_value")',
        f'sort(columns: ["{schema.RUN_ID}"], desc: true)',
    )
    return "\n".join(blocks) + "\n" + final


def by_epoch(metric: str) -> str:
    """One frame: a column per selected run with ``metric`` at each epoch (trend panels)."""
    return query(
        *select(schema.M_EPOCH, (metric, schema.EPOCH), CENTRALIZED_CURVE),
        'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        f"filter(fn: (r) => exists r.{metric} and exists r.{schema.EPOCH})",
        "group()",
        f"keep(columns: {columns((schema.RUN_ID, schema.EPOCH, metric))})",
        f'pivot(rowKey: ["{schema.EPOCH}"], columnKey: ["{schema.RUN_ID}"], valueColumn: "{metric}")',
        f'sort(columns: ["{schema.EPOCH}"])',
    )


def by_round(
    measurement: str,
    field: str,
    series_by: Sequence[str],
    *conditions: str,
    reducer: str | None = None,
) -> str:
    """One frame: ``field`` per round (rows) with a column per ``series_by`` combination
    (e.g. run and source). ``reducer`` first combines the rows of each run and round
    (e.g. ``spread()`` across clients, ``sum()`` of events)."""
    stages = select(measurement, (field,), *conditions)
    if reducer is not None:
        stages += [f'group(columns: ["{schema.RUN_ID}", "{schema.ROUND}"])', reducer]
    stages += [
        "group()",
        with_round_number(),
        f"keep(columns: {columns((ROUND_NUMBER, *series_by, '_value'))})",
        f'pivot(rowKey: ["{ROUND_NUMBER}"], columnKey: {columns(series_by)}, valueColumn: "_value")',
        f'sort(columns: ["{ROUND_NUMBER}"])',
        f'rename(columns: {{{ROUND_NUMBER}: "{schema.ROUND}"}})',
    ]
    return query(*stages)


def confusion_matrix_by_round() -> str:
    """A row per run, source and round with the confusion-matrix counts."""
    keys = (schema.RUN_ID, schema.SOURCE, ROUND_NUMBER)
    return query(
        *select(schema.M_ROUND, schema.CONFUSION_FIELDS),
        "group()",
        with_round_number(),
        f'pivot(rowKey: {columns(keys)}, columnKey: ["_field"], valueColumn: "_value")',
        f"keep(columns: {columns((*keys, *schema.CONFUSION_FIELDS))})",
        f"sort(columns: {columns(keys)})",
        f'rename(columns: {{{ROUND_NUMBER}: "{schema.ROUND}"}})',
    )


def participation_by_round() -> str:
    """A row per run and round: clients whose training was aggregated, and client failures."""
    clients = pipeline(
        *select(
            schema.M_ROUND,
            (schema.NUM_CLIENTS,),
            equals(schema.SOURCE, schema.SOURCE_AGGREGATED),
        ),
        "group()",
        _as_round_row("clients"),
    )
    failures = pipeline(
        *select(
            schema.M_EVENT,
            (schema.VALUE,),
            equals(schema.EVENT, schema.EVENT_CLIENT_FAILURE),
        ),
        f'group(columns: ["{schema.RUN_ID}", "{schema.ROUND}"])',
        "sum()",
        "group()",
        _as_round_row("failures"),
    )
    final = query(
        "union(tables: [clients, failures])",
        "group()",
        f'pivot(rowKey: ["{schema.RUN_ID}", "{schema.ROUND}"], columnKey: ["_field"], valueColumn: "_value")',
        f'sort(columns: ["{schema.RUN_ID}", "{schema.ROUND}"])',
    )
    return f"clients = {clients}\n\nfailures = {failures}\n\n{final}"


def _as_round_row(name: str) -> str:
    return (
        f"map(fn: (r) => ({{{schema.RUN_ID}: r.{schema.RUN_ID}, "
        f"{schema.ROUND}: int(v: r.{schema.ROUND}), "
        f'_field: "{name}", _value: r._value}}))'
    )


def events_table(*event_names: str) -> str:
    """The events of the selected runs, newest first (``event_names`` narrows them)."""
    conditions = [any_of(schema.EVENT, event_names)] if event_names else []
    kept = ("_time", schema.RUN_ID, schema.EVENT, schema.ROUND, schema.CLIENT_ID, "_value")
    return query(
        *select(schema.M_EVENT, (schema.TEXT,), *conditions),
        "group()",
        f"keep(columns: {columns(kept)})",
        f'rename(columns: {{_value: "{schema.TEXT}"}})',
        'sort(columns: ["_time"], desc: true)',
    )


def event_annotations() -> str:
    """Events as Grafana annotations: ``_time``, ``title``, ``text`` and ``tags`` columns,
    oldest first."""
    return query(
        *select(schema.M_EVENT, (schema.TEXT,)),
        "group()",
        (
            "map(fn: (r) => ({"
            f"_time: r._time, title: r.{schema.EVENT}, "
            f'text: r.{schema.EVENT} + " (" + r.{schema.RUN_ID} + ") " + r._value, '
            f'tags: r.{schema.EVENT} + "," + r.{schema.RUN_ID}'
            "}))"
        ),
        # group() leaves rows in storage order, which depends on the selection: oldest first
        'sort(columns: ["_time"])',
    )


def layer_norm_heatmap() -> str:
    """One wide frame per panel: the largest norm of each layer per window, a column per layer."""
    return query(
        *select(schema.M_GRADIENT_LAYER, (schema.NORM,)),
        f'group(columns: ["{schema.LAYER}"])',
        "aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)",
        "group()",
        f'pivot(rowKey: ["_time"], columnKey: ["{schema.LAYER}"], valueColumn: "_value")',
        'sort(columns: ["_time"])',
    )


def top_layers(count: int = TOP_LAYERS) -> str:
    """Per selected run, the ``count`` layers with the largest gradient norm in the range:
    one table (Grafana's table panel shows one frame at a time, and a group key would hide
    ``run_id`` in labels), a row per run and layer, each run's largest first."""
    return query(
        *select(schema.M_GRADIENT_LAYER, (schema.NORM,)),
        f'group(columns: ["{schema.RUN_ID}", "{schema.LAYER}"])',
        "max()",
        f'group(columns: ["{schema.RUN_ID}"])',
        f"top(n: {count})",
        "group()",
        f"keep(columns: {columns((schema.RUN_ID, schema.LAYER, '_value'))})",
        f'sort(columns: ["{schema.RUN_ID}", "_value"], desc: true)',
        'rename(columns: {_value: "largest_norm"})',
    )
