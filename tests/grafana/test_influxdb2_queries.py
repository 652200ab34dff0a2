"""Every Flux query runwatch ships, run the way Grafana runs it, on real runs in a real InfluxDB 2
(``influx_runs``), and its answer checked against the relational store holding the same runs.

- Dashboards: every panel target, the ``run_id`` variable queries and the annotation queries,
  with the dashboard variable interpolated as Grafana's browser does (``${run_id:regex}``:
  "All" -> the custom all value ``.*``; a selection -> regex-escaped values, several joined as
  ``(a|b)``; a repeated panel -> the repeat's single value) and the Flux macros as Grafana's
  server does (text substitution, see tests/grafana/_grafana_runtime.py); the answer is read
  as the frames Grafana builds.
- Alert rules: each rule's Flux over its relative time range at "now", then its reduce, math
  and threshold expressions as Grafana's expression engine evaluates them.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from collector import schema
from collector.store import MetricRecord, Store
from tests.grafana import _grafana_runtime as grafana
from tests.grafana._grafana import (
    alert_rules,
    alerting_documents,
    all_panels,
    dashboard_queries,
    dashboards,
)
from tests.servers.influx_runs import (
    CLIENTS,
    EPOCHS_DIVERGING,
    EPOCHS_HEALTHY,
    EPOCHS_NONFINITE,
    FAILING_ROUND,
    ROUNDS,
    LoadedRuns,
)

pytestmark = pytest.mark.integration

DASHBOARDS = dashboards()
PANEL_WIDTH_POINTS = 1000
"""maxDataPoints of a panel: Grafana sends the panel's width in pixels."""
ALL_RUNS = grafana.Variable([grafana.ALL], all_value=".*")
EPOCH_CONTEXT = "epoch_end"
AGGREGATED_CONTEXT = "aggregated"


def flux_targets() -> dict[str, tuple[str, str]]:
    """``dashboard: where`` -> (dashboard, Flux text) of every InfluxDB query in the dashboards."""
    return {
        f"{name}: {where}": (name, flux)
        for name, board in DASHBOARDS.items()
        for where, flux in dashboard_queries(board, "influxdb").items()
    }


TARGETS = flux_targets()


def panels() -> dict[str, dict[str, Any]]:
    """``dashboard: where`` -> the panel of a panel target."""
    found = {}
    for key in TARGETS:
        name, where = key.split(": ", 1)
        if where.startswith("panel "):
            panel_id = int(where.split()[1])
            found[key] = next(
                p for p in all_panels(DASHBOARDS[name]["panels"]) if p["id"] == panel_id
            )
    return found


PANELS = panels()
PANEL_TYPES = {
    key: PANELS[key]["type"] if key in PANELS else key.split(": ", 1)[1].split()[0]
    for key in TARGETS
}


def target(dashboard: str, title: str, ref_id: str = "A") -> str:
    """The key of a panel's target by the panel's title."""
    found = [
        key
        for key in TARGETS
        if key.startswith(f"{dashboard}: panel ") and key.endswith(f'"{title}" {ref_id}')
    ]
    assert len(found) == 1, (dashboard, title, found)
    return found[0]


@dataclass
class GrafanaEmulator:
    """Runs the committed queries as Grafana would, on the loaded runs' bucket."""

    runs: LoadedRuns

    @property
    def options(self) -> grafana.DatasourceOptions:
        return grafana.DatasourceOptions(
            organization=self.runs.influxdb2.org, default_bucket=self.runs.bucket
        )

    def time_range(self) -> tuple[datetime, datetime]:
        """The dashboard's range as the browser sends it (epoch milliseconds)."""

        def to_ms(moment: datetime) -> datetime:
            return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

        return to_ms(self.runs.start), to_ms(self.runs.stop)

    def dashboard_flux(self, key: str, run_id: grafana.Variable = ALL_RUNS) -> str:
        _, flux = TARGETS[key]
        start, stop = self.time_range()
        text = grafana.interpolate_variables(flux, {schema.RUN_ID: run_id})
        return grafana.interpolate_macros(
            text,
            start=start,
            stop=stop,
            interval_ms=grafana.panel_interval_ms(start, stop, PANEL_WIDTH_POINTS),
            options=self.options,
        )

    def query(self, key: str, run_id: grafana.Variable = ALL_RUNS) -> list[grafana.Frame]:
        return grafana.frames(self.runs.influxdb2.query_tables(self.dashboard_flux(key, run_id)))

    def table(self, key: str, run_id: grafana.Variable = ALL_RUNS) -> list[dict[str, Any]]:
        """A panel whose answer must be one frame (tables, trends), as rows."""
        found = self.query(key, run_id)
        assert len(found) == 1, f"{key}: {len(found)} frames, a table panel shows one at a time"
        return rows(found[0])

    def evaluate(self, rule: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
        """Every query and expression of an alert rule, by refId (expressions: labels -> value)."""
        now = now or datetime.now(UTC)
        results: dict[str, Any] = {}
        for step in rule["data"]:
            model = step["model"]
            if step["datasourceUid"] != grafana_expression_uid():
                window = step["relativeTimeRange"]
                flux = grafana.interpolate_macros(
                    model["query"],
                    start=now - timedelta(seconds=window["from"]),
                    stop=now - timedelta(seconds=window["to"]),
                    interval_ms=model["intervalMs"],
                    options=self.options,
                )
                results[step["refId"]] = grafana.frames(self.runs.influxdb2.query_tables(flux))
            elif model["type"] == "reduce":
                results[step["refId"]] = grafana.reduce(
                    results[model["expression"]], model["reducer"], model["settings"]["mode"]
                )
            elif model["type"] == "math":
                left, right = (
                    name.strip().lstrip("$") for name in model["expression"].split(" - ")
                )
                results[step["refId"]] = grafana.subtract(results[left], results[right])
            elif model["type"] == "threshold":
                (condition,) = model["conditions"]
                assert condition["evaluator"]["type"] == "gt"
                (threshold,) = condition["evaluator"]["params"]
                results[step["refId"]] = grafana.above(results[model["expression"]], threshold)
            else:
                raise AssertionError(f"expression {model['type']} is not emulated")
        return results


def grafana_expression_uid() -> str:
    return "__expr__"


def rows(frame: grafana.Frame) -> list[dict[str, Any]]:
    names = list(frame.fields)
    length = len(frame.fields[names[0]]) if names else 0
    return [{name: frame.fields[name][i] for name in names} for i in range(length)]


@pytest.fixture(scope="module")
def emulator(influx_runs: LoadedRuns) -> GrafanaEmulator:
    return GrafanaEmulator(influx_runs)


@pytest.fixture(scope="module")
def store(influx_runs: LoadedRuns) -> Iterator[Store]:
    opened = influx_runs.store()
    yield opened
    opened.dispose()


# --- what the store holds ------------------------------------------------------------------


def epoch_values(store: Store, run_id: str, metric: str) -> dict[int, float]:
    """The run's own epoch-end values of ``metric`` (client-less rows), by epoch."""
    return {
        m.step: m.value
        for m in store.metrics_by_context(run_id, EPOCH_CONTEXT)
        if m.name == metric and m.client_id is None
    }


def client_values(store: Store, run_id: str, metric: str) -> dict[tuple[str, int], float]:
    """(client_id, round) -> the client's value of ``metric`` in that round."""
    found: dict[tuple[str, int], float] = {}
    for client_id, records in store.metrics_grouped_by_client(run_id).items():
        for m in records:
            if m.name == metric and m.round_number is not None:
                found[(client_id, m.round_number)] = m.value
    return found


def aggregated_values(store: Store, run_id: str, metric: str) -> dict[int, float]:
    return {cast_round(m): m.value for m in store.aggregated_metrics(run_id) if m.name == metric}


def cast_round(record: MetricRecord) -> int:
    assert record.round_number is not None, record
    return record.round_number


def failing_clients(store: Store, run_id: str) -> dict[int, set[str]]:
    """Per round, the run's clients with no reply in the store (the failures)."""
    clients = set(store.get_run(run_id).clients)
    replied: dict[int, set[str]] = {r: set() for r in range(1, ROUNDS + 1)}
    for client_id, round_number in client_values(store, run_id, schema.TRAIN_LOSS):
        replied[round_number].add(client_id)
    return {r: clients - replied[r] for r in replied if clients - replied[r]}


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def assert_close_maps(got: Mapping[Any, float | None], want: Mapping[Any, float | None]) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    wrong = {k: (got[k], want[k]) for k in want if not close(got[k], want[k])}
    assert not wrong, wrong


# --- every query runs, and Grafana can draw what it returns --------------------------------


def test_every_influx_query_of_every_dashboard_is_covered() -> None:
    kinds = {key: PANEL_TYPES[key] for key in TARGETS}
    assert set(kinds.values()) == {
        "variable",
        "annotation",
        "timeseries",
        "table",
        "trend",
        "heatmap",
    }
    assert sum(kind == "variable" for kind in kinds.values()) == len(DASHBOARDS)
    assert len(TARGETS) >= 40


@pytest.mark.parametrize("key", sorted(TARGETS))
def test_query_runs_and_answers_in_the_panel_shape(emulator: GrafanaEmulator, key: str) -> None:
    """With "All" selected: no error, data, and the frame shape the panel type draws."""
    flux = emulator.dashboard_flux(key)
    assert not re.search(r"\bv\.[a-zA-Z]", flux), flux  # every macro substituted
    assert not re.search(r"\$\{|\$\w|\[\[", flux), flux  # every dashboard variable substituted
    found = emulator.query(key)
    assert found and any(frame.fields and next(iter(frame.fields.values())) for frame in found)
    kind = PANEL_TYPES[key]
    if kind == "timeseries":
        for frame in found:
            assert frame.is_simple_series, (key, list(frame.fields))
            assert set(frame.labels) <= {schema.RUN_ID, schema.CLIENT_ID}, frame.labels
            assert schema.RUN_ID in frame.labels
            assert all(isinstance(v, float) for v in frame.values)
    elif kind in ("table", "trend", "heatmap", "annotation", "variable"):
        assert len(found) == 1, f"{key}: {len(found)} frames; the {kind} uses one"
        assert not found[0].labels, found[0].labels
    if kind == "trend":
        # the trend panel draws against a numeric x field that must be ascending
        x_field = PANELS[key]["options"]["xField"]
        xs = found[0].fields[x_field]
        assert all(isinstance(x, int | float) for x in xs), xs
        assert xs == sorted(set(xs)), xs
    if kind == "annotation":
        assert list(found[0].fields)[:1] == ["_time"]
        assert {"title", "text", "tags"} <= set(found[0].fields)
    if kind == "heatmap":
        fields = list(found[0].fields)
        assert fields[0] == "_time" and len(fields) > 1
        assert all(isinstance(v, float) for name in fields[1:] for v in found[0].fields[name])


def relative(text: str, now: datetime) -> datetime:
    """A dashboard's ``now`` / ``now-<n><unit>`` time (the forms the dashboards use)."""
    match = re.fullmatch(r"now(?:-(\d+)([smhd]))?", text)
    assert match, text
    if not match.group(1):
        return now
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return now - timedelta(**{unit: int(match.group(1))})


@pytest.mark.parametrize("key", sorted(TARGETS))
def test_query_runs_over_the_dashboards_default_time_range(
    emulator: GrafanaEmulator, key: str
) -> None:
    """The dashboard as it opens (its own time range, so another ``v.windowPeriod``, e.g.
    Go's ``1m0s``): the same answer as over the runs' own range, which it contains."""
    board = DASHBOARDS[key.split(": ", 1)[0]]
    now = datetime.now(UTC)
    start, stop = relative(board["time"]["from"], now), relative(board["time"]["to"], now)
    assert start <= emulator.runs.start and emulator.runs.stop - timedelta(minutes=1) <= stop
    interval = grafana.panel_interval_ms(start, stop, PANEL_WIDTH_POINTS)
    _, flux = TARGETS[key]
    text = grafana.interpolate_macros(
        grafana.interpolate_variables(flux, {schema.RUN_ID: ALL_RUNS}),
        start=start,
        stop=stop,
        interval_ms=interval,
        options=emulator.options,
    )
    found = grafana.frames(emulator.runs.influxdb2.query_tables(text))
    assert found
    if "windowPeriod" not in flux:  # windows of another size aggregate differently
        assert [f.labels for f in found] == [f.labels for f in emulator.query(key)]


@pytest.mark.parametrize("key", sorted(k for k in TARGETS if "variable" not in k))
def test_selecting_every_run_answers_like_all(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, key: str
) -> None:
    """A multi-value selection of every run (``(a|b|c|d)``, each regex-escaped) selects what
    "All" (``.*``) does."""
    every = grafana.Variable(list(influx_runs.all))
    assert emulator.query(key, every) == emulator.query(key)


def test_a_single_run_selects_only_that_run(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns
) -> None:
    for run_id in influx_runs.all:
        for value in (run_id, [run_id]):
            found = emulator.query(target("training-overview", "Loss"), grafana.Variable(value))
            assert found and {f.labels[schema.RUN_ID] for f in found} == {run_id}


def test_the_repeated_heatmap_has_a_panel_per_run(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns
) -> None:
    """The heatmap repeats per run: each copy gets the run alone; its layers are the run's
    layers, and each layer's largest norm is what the top-layers table says."""
    heatmap = target("batches-gradients", "Per-layer gradient norm: ${run_id}")
    top = emulator.table(target("batches-gradients", "Top 10 layers by gradient norm"))
    for run_id in influx_runs.all:
        (frame,) = emulator.query(heatmap, grafana.Variable(run_id))
        layers = {name: values for name, values in frame.fields.items() if name != "_time"}
        largest = {
            row[schema.LAYER]: row["largest_norm"] for row in top if row[schema.RUN_ID] == run_id
        }
        assert layers and set(largest) == set(layers), (run_id, sorted(layers), sorted(largest))
        assert_close_maps(
            {layer: max(v for v in values if v is not None) for layer, values in layers.items()},
            largest,
        )


def test_top_layers_is_one_table_with_the_run_column(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns
) -> None:
    table = emulator.table(target("batches-gradients", "Top 10 layers by gradient norm"))
    assert {row[schema.RUN_ID] for row in table} == set(influx_runs.all)
    for run_id in influx_runs.all:
        norms = [row["largest_norm"] for row in table if row[schema.RUN_ID] == run_id]
        assert 0 < len(norms) <= 10 and norms == sorted(norms, reverse=True)


# --- the run_id variables ------------------------------------------------------------------

VARIABLE_RUNS = {
    "training-overview": "all",
    "batches-gradients": "all",
    "federated": "federated",
    "run-comparison": "all",
    "live": "all",
}


@pytest.mark.parametrize("dashboard", sorted(VARIABLE_RUNS))
def test_run_id_variable_lists_the_runs_with_points(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, dashboard: str
) -> None:
    (frame,) = emulator.query(f"{dashboard}: variable run_id")
    # Grafana's toMetricFindValue: the first string field's values
    values = next(v for v in frame.fields.values() if v and isinstance(v[0], str))
    expected = influx_runs.all if VARIABLE_RUNS[dashboard] == "all" else (influx_runs.federated,)
    assert sorted(values) == sorted(expected)


# --- values against the relational store ---------------------------------------------------

LOWER = (schema.TRAIN_LOSS, schema.VAL_LOSS)
HIGHER = (
    schema.VAL_ACC,
    schema.VAL_PRECISION,
    schema.VAL_RECALL,
    schema.VAL_F1,
    schema.VAL_AUROC,
)


def test_best_values_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    table = emulator.table(target("training-overview", "Best values"))
    by_run = {row[schema.RUN_ID]: row for row in table}
    assert set(by_run) == set(influx_runs.centralized)  # federated runs have no epochs of their own
    for run_id in influx_runs.centralized:
        want = {}
        for metric in (*LOWER, *HIGHER):
            values = epoch_values(store, run_id, metric).values()
            want[metric] = (min if metric in LOWER else max)(values)
        assert_close_maps({m: by_run[run_id][m] for m in want}, want)
    # the diverging run's best val_loss is its first epoch's; the healthy run's its last
    diverging = epoch_values(store, influx_runs.diverging, schema.VAL_LOSS)
    assert close(by_run[influx_runs.diverging][schema.VAL_LOSS], diverging[0])
    healthy = epoch_values(store, influx_runs.healthy, schema.VAL_LOSS)
    assert close(by_run[influx_runs.healthy][schema.VAL_LOSS], healthy[EPOCHS_HEALTHY - 1])


def test_best_and_last_metrics_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    table = emulator.table(target("run-comparison", "Best and last metrics"))
    by_run = {row[schema.RUN_ID]: row for row in table}
    assert set(by_run) == set(influx_runs.centralized)
    epochs = {
        influx_runs.healthy: EPOCHS_HEALTHY,
        influx_runs.nonfinite: EPOCHS_NONFINITE,
        influx_runs.diverging: EPOCHS_DIVERGING,
    }
    for run_id, count in epochs.items():
        row = by_run[run_id]
        summary = store.get_run(run_id)
        assert (row[schema.EXPERIMENT], row[schema.MODE]) == (summary.experiment, summary.mode)
        assert row[f"last_{schema.EPOCH}"] == count - 1
        for metric in (*LOWER, *HIGHER):
            values = epoch_values(store, run_id, metric)
            best = (min if metric in LOWER else max)(values.values())
            assert close(row[f"best_{metric}"], best), (run_id, metric)
            # the last finite value (a NaN is stored as a *_nonfinite flag, in both stores)
            assert close(row[f"last_{metric}"], values[max(values)]), (run_id, metric)
    assert (
        by_run[influx_runs.diverging][f"last_{schema.VAL_LOSS}"]
        > by_run[influx_runs.diverging][f"best_{schema.VAL_LOSS}"]
    )


@pytest.mark.parametrize(
    "title,metric",
    [
        ("Validation loss", schema.VAL_LOSS),
        ("Train loss", schema.TRAIN_LOSS),
        ("Validation recall", schema.VAL_RECALL),
    ],
)
def test_curves_by_epoch_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store, title: str, metric: str
) -> None:
    table = emulator.table(target("run-comparison", title))
    assert [row[schema.EPOCH] for row in table] == list(range(EPOCHS_DIVERGING))
    for run_id in influx_runs.centralized:
        got = {int(row[schema.EPOCH]): row.get(run_id) for row in table}
        want = epoch_values(store, run_id, metric)
        assert_close_maps({e: v for e, v in got.items() if v is not None}, want)
    assert influx_runs.federated not in table[0]


def test_epoch_series_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    """The Loss time series: one per run and field (and federated client), values in order."""
    found = emulator.query(target("training-overview", "Loss"))
    series = {
        (f.labels[schema.RUN_ID], f.labels.get(schema.CLIENT_ID), list(f.fields)[1]): f.values
        for f in found
    }
    for run_id in influx_runs.centralized:
        for metric in LOWER:
            values = epoch_values(store, run_id, metric)
            assert_close_maps(
                dict(enumerate(series[(run_id, None, metric)])),
                dict(enumerate(values[e] for e in sorted(values))),
            )
    clients = store.get_run(influx_runs.federated).clients
    assert len(clients) == CLIENTS
    for client_id in clients:
        per_round = client_values(store, influx_runs.federated, schema.TRAIN_LOSS)
        want = [
            v for (c, _), v in sorted(per_round.items(), key=lambda i: i[0][1]) if c == client_id
        ]
        got = series[(influx_runs.federated, client_id, schema.TRAIN_LOSS)]
        assert len(got) == len(want) and all(close(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(
    "title,server_metric,aggregated_metric",
    [
        ("Loss per round", "loss", schema.VAL_LOSS),
        ("Accuracy per round", "accuracy", schema.VAL_ACC),
        ("Recall per round", "recall", schema.VAL_RECALL),
        ("AUROC per round", "auroc", schema.VAL_AUROC),
    ],
)
def test_rounds_match_the_store(
    emulator: GrafanaEmulator,
    influx_runs: LoadedRuns,
    store: Store,
    title: str,
    server_metric: str,
    aggregated_metric: str,
) -> None:
    run_id = influx_runs.federated
    table = emulator.table(target("federated", title))
    rounds = [row[schema.ROUND] for row in table]
    assert rounds == sorted(rounds) and set(range(1, ROUNDS + 1)) <= set(rounds)
    server = {row[schema.ROUND]: row[f"{run_id}_server"] for row in table}
    aggregated = {
        row[schema.ROUND]: row[f"{run_id}_aggregated"]
        for row in table
        if row[f"{run_id}_aggregated"] is not None
    }
    evaluations = {
        e.round_number: getattr(e, server_metric) for e in store.server_evaluations(run_id)
    }
    assert_close_maps({r: server[r] for r in evaluations}, evaluations)
    assert_close_maps(aggregated, aggregated_values(store, run_id, aggregated_metric))


def test_confusion_matrix_by_round_matches_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    run_id = influx_runs.federated
    table = emulator.table(target("federated", "Confusion matrix by round"))
    keys = [(row[schema.RUN_ID], row[schema.SOURCE], row[schema.ROUND]) for row in table]
    assert keys == sorted(keys)
    counts = {
        (row[schema.SOURCE], row[schema.ROUND]): tuple(row[f] for f in schema.CONFUSION_FIELDS)
        for row in table
    }
    for evaluation in store.server_evaluations(run_id):
        want = tuple(getattr(evaluation, f) for f in schema.CONFUSION_FIELDS)
        assert counts[(schema.SOURCE_SERVER, evaluation.round_number)] == want
    for round_number in range(1, ROUNDS + 1):
        want = tuple(
            aggregated_values(store, run_id, f"val_{f}")[round_number]
            for f in schema.CONFUSION_FIELDS
        )
        assert counts[(schema.SOURCE_AGGREGATED, round_number)] == want


def test_participation_and_failures_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    run_id = influx_runs.federated
    rounds = {r.round_number: r for r in store.rounds(run_id)}
    assert sorted(rounds) == list(range(1, ROUNDS + 1))
    failing = failing_clients(store, run_id)
    assert set(failing) == {FAILING_ROUND} and len(failing[FAILING_ROUND]) == 1

    table = emulator.table(target("federated", "Participation by round"))
    assert [(row[schema.RUN_ID], row[schema.ROUND]) for row in table] == [
        (run_id, r) for r in range(1, ROUNDS + 1)
    ]
    for row in table:
        assert row["clients"] == rounds[row[schema.ROUND]].num_clients
        assert (row["failures"] or 0) == len(failing.get(row[schema.ROUND], ()))

    clients = emulator.table(target("federated", "Clients aggregated per round"))
    assert {row[schema.ROUND]: row[run_id] for row in clients} == {
        r: float(rounds[r].num_clients or 0) for r in rounds
    }
    failures = emulator.table(target("federated", "Client failures per round"))
    assert {row[schema.ROUND]: row[run_id] for row in failures} == {FAILING_ROUND: 1.0}

    events = emulator.table(target("federated", "Client failures"))
    assert [(row[schema.EVENT], row[schema.ROUND], row[schema.CLIENT_ID]) for row in events] == [
        (schema.EVENT_CLIENT_FAILURE, str(FAILING_ROUND), next(iter(failing[FAILING_ROUND])))
    ]


def test_clients_per_round_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    run_id = influx_runs.federated
    table = emulator.table(target("federated", "Client train loss per round"))
    want = client_values(store, run_id, schema.TRAIN_LOSS)
    got = {
        (column.removeprefix(f"{run_id}_"), row[schema.ROUND]): value
        for row in table
        for column, value in row.items()
        if column.startswith(f"{run_id}_") and value is not None
    }
    assert_close_maps(got, want)
    spread = emulator.table(target("federated", "Spread between clients: train loss"))
    for row in spread:
        values = [v for (_, r), v in want.items() if r == row[schema.ROUND]]
        assert close(row[run_id], max(values) - min(values))


def test_client_validation_accuracy_under_flowers_names_matches_the_aggregate(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    """The federated run's clients reply eval_acc, as Flower's examples do: the per-client
    panel reads it as val_acc, and the clients' values average (equal shares) to the
    aggregate the store holds under the same name."""
    run_id = influx_runs.federated
    table = emulator.table(target("federated", "Client validation accuracy per round"))
    clients = set(store.get_run(run_id).clients)
    by_round: dict[int, list[float]] = {}
    for row in table:
        values = [
            v
            for column, v in row.items()
            if column.removeprefix(f"{run_id}_") in clients and v is not None
        ]
        by_round[row[schema.ROUND]] = values
    assert sorted(by_round) == list(range(1, ROUNDS + 1))
    assert all(len(values) == CLIENTS for values in by_round.values())  # every client evaluated
    want = aggregated_values(store, run_id, schema.VAL_ACC)
    assert_close_maps({r: sum(v) / len(v) for r, v in by_round.items()}, want)
    spread = emulator.table(target("federated", "Spread between clients: validation accuracy"))
    assert {row[schema.ROUND] for row in spread if row[run_id] is not None} == set(by_round)


def test_aggregated_train_loss_per_round_matches_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    run_id = influx_runs.federated
    table = emulator.table(target("federated", "Aggregated train loss per round"))
    got = {row[schema.ROUND]: row[run_id] for row in table if row[run_id] is not None}
    want = aggregated_values(store, run_id, schema.TRAIN_LOSS)
    assert sorted(want) == list(range(1, ROUNDS + 1))
    assert_close_maps(got, want)


def test_events_and_annotations_match_the_store(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    run_id = influx_runs.healthy
    only = grafana.Variable(run_id)
    events = emulator.table(target("training-overview", "Events"), only)
    times = [row["_time"] for row in events]
    assert times == sorted(times, reverse=True)
    names = [row[schema.EVENT] for row in events]
    # an event per checkpoint saved; the artifacts are the files ModelCheckpoint kept
    kept = [a.path for a in store.get_run(run_id).artifacts if a.kind == "checkpoint"]
    saved = [row for row in events if row[schema.EVENT] == schema.EVENT_CHECKPOINT]
    assert len(saved) == EPOCHS_HEALTHY and 1 <= len(kept) <= len(saved)
    assert all(any(row["text"].startswith(path) for row in saved) for path in kept)
    assert names.count(schema.EVENT_TRAINING_START) == names.count(schema.EVENT_TRAINING_END) == 1
    assert {row[schema.RUN_ID] for row in events} == {run_id}

    (annotations,) = emulator.query("training-overview: annotation Events", only)
    assert sorted(annotations.fields["title"]) == sorted(names)
    assert all(tags.split(",")[1] == run_id for tags in annotations.fields["tags"])


# --- alert rules ---------------------------------------------------------------------------

RULES = {rule["uid"]: rule for rule in alert_rules(alerting_documents())}


def firing(results: Mapping[str, Any], rule: Mapping[str, Any]) -> dict[grafana.Labels, bool]:
    condition: dict[grafana.Labels, bool] = results[rule["condition"]]
    return condition


def runs_firing(results: Mapping[str, Any], rule: Mapping[str, Any]) -> set[str]:
    return {dict(labels)[schema.RUN_ID] for labels, on in firing(results, rule).items() if on}


def evaluated_runs(results: Mapping[str, Any], rule: Mapping[str, Any]) -> set[str]:
    return {dict(labels)[schema.RUN_ID] for labels in firing(results, rule)}


def test_every_rule_is_evaluated_here() -> None:
    assert set(RULES) == {
        "runwatch-nonfinite-loss",
        "runwatch-val-loss-rising",
        "runwatch-val-recall-below-best",
        "runwatch-client-missing",
    }


@pytest.mark.parametrize("uid", sorted(RULES))
def test_rule_series_are_labelled_by_what_identifies_an_alert(
    emulator: GrafanaEmulator, uid: str
) -> None:
    """Each series is one plain time series whose labels are exactly the alert's identity:
    no ``_start``/``_stop`` (new values every evaluation), no ``_field`` or other tags."""
    results = emulator.evaluate(RULES[uid])
    series = results["A"]
    assert series, uid
    want = {schema.RUN_ID, schema.EXPERIMENT}
    if uid == "runwatch-client-missing":
        want |= {schema.ROUND, schema.CLIENT_ID}
    for frame in series:
        assert frame.is_simple_series, list(frame.fields)
        assert set(frame.labels) == want, frame.labels


def test_nonfinite_rule_fires_for_the_nonfinite_run_only(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    rule = RULES["runwatch-nonfinite-loss"]
    results = emulator.evaluate(rule)
    assert runs_firing(results, rule) == {influx_runs.nonfinite}
    assert influx_runs.healthy not in runs_firing(results, rule)
    flags = [
        m
        for m in store.metrics_by_context(influx_runs.nonfinite, EPOCH_CONTEXT)
        if m.name
        in (schema.nonfinite_field(schema.TRAIN_LOSS), schema.nonfinite_field(schema.VAL_LOSS))
    ]
    (count,) = (
        v
        for labels, v in results["B"].items()
        if dict(labels)[schema.RUN_ID] == influx_runs.nonfinite
    )
    assert count is not None and count >= len(flags) > 0  # batch flags count too


def test_val_loss_rising_rule_fires_for_the_diverging_run(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    rule = RULES["runwatch-val-loss-rising"]
    results = emulator.evaluate(rule)
    assert runs_firing(results, rule) == {influx_runs.diverging}
    assert influx_runs.healthy in evaluated_runs(results, rule)  # evaluated, and not firing
    sums = {dict(labels)[schema.RUN_ID]: v for labels, v in results["B"].items()}
    diverging = epoch_values(store, influx_runs.diverging, schema.VAL_LOSS)
    last = [diverging[e] for e in sorted(diverging)][-4:]
    assert sums[influx_runs.diverging] == sum(b > a for a, b in itertools.pairwise(last)) == 3
    assert sums[influx_runs.healthy] == 0


def test_recall_drop_rule_fires_where_recall_fell_from_its_best(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    """The non-finite run's recall collapses after epoch 0: more than 0.05 below its best, so
    the rule fires; the healthy and diverging runs end at their best recall: no alert."""
    rule = RULES["runwatch-val-recall-below-best"]
    results = emulator.evaluate(rule)
    assert runs_firing(results, rule) == {influx_runs.nonfinite}
    assert set(influx_runs.centralized) <= evaluated_runs(results, rule)
    drops = {dict(labels)[schema.RUN_ID]: v for labels, v in results["D"].items()}
    for run_id in influx_runs.centralized:
        recall = epoch_values(store, run_id, schema.VAL_RECALL)
        assert close(drops[run_id], max(recall.values()) - recall[max(recall)])


def test_client_failure_rule_fires_for_the_failing_client_and_round(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, store: Store
) -> None:
    rule = RULES["runwatch-client-missing"]
    results = emulator.evaluate(rule)
    on = [dict(labels) for labels, value in firing(results, rule).items() if value]
    (failing_client,) = failing_clients(store, influx_runs.federated)[FAILING_ROUND]
    assert on == [
        {
            schema.RUN_ID: influx_runs.federated,
            schema.EXPERIMENT: store.get_run(influx_runs.federated).experiment,
            schema.ROUND: str(FAILING_ROUND),
            schema.CLIENT_ID: failing_client,
        }
    ]


@pytest.mark.parametrize("uid", sorted(RULES))
def test_no_rule_fires_once_the_runs_left_its_time_range(
    emulator: GrafanaEmulator, influx_runs: LoadedRuns, uid: str
) -> None:
    """Evaluated after its look-back window has passed the runs: no data, so nothing fires
    (the rules' noDataState is OK)."""
    rule = RULES[uid]
    lookback = max(q["relativeTimeRange"]["from"] for q in rule["data"] if "relativeTimeRange" in q)
    later = influx_runs.stop + timedelta(seconds=lookback + 60)
    results = emulator.evaluate(rule, now=later)
    assert results["A"] == [] and not any(firing(results, rule).values())
    assert rule["noDataState"] == "OK"
