"""Compare runs on one metric: the same table from InfluxDB (Flux) or the relational store.

A row per run: run_id, experiment, mode, how many epochs carry the metric, the best value and
its epoch, the last value and its epoch. The metric may be given by the name the training
logged (``val/acc@1``) or its canonical name (``val_acc_1``): both backends hold the canonical
one. "Best" follows :func:`collector.values.higher_is_better` (the smallest value for a loss or
error, the largest otherwise) unless the caller says; the earliest epoch wins a tie. A run without that
metric is listed with zero epochs and no values.

- Centralized runs: client-less epoch metrics (the store's ``epoch_end`` rows, InfluxDB's
  ``epoch`` points).
- Federated runs have no epochs of their own: their rows count rounds (``unit`` = "round") of
  the clients' weighted aggregate of a metric, under its federated name
  (:func:`collector.values.federated_metric_name`: ``eval_acc``, ``accuracy`` and ``val_acc``
  are all ``val_acc``; ``train_loss`` stays ``train_loss``): the store's ``aggregated`` rows,
  InfluxDB's ``round`` points with source=aggregated, whose field is
  :func:`collector.values.round_field` of it (``val_acc`` -> ``accuracy``, ``train_loss``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from collector import flux_queries, schema
from collector.config import Settings, mask_url
from collector.errors import RunwatchError, UnknownRunError
from collector.values import canonical_name, federated_metric_name, round_field
from collector.values import higher_is_better as default_higher_is_better

if TYPE_CHECKING:  # SQLAlchemy takes half a second to import: `runwatch --help` needs none
    from collector.store import MetricRecord, Store

SOURCE_SQL = "sql"
SOURCE_INFLUX = "influx"
SOURCES = (SOURCE_INFLUX, SOURCE_SQL)
DEFAULT_METRIC = "val_loss"
EPOCH_CONTEXT = "epoch_end"
AGGREGATED_CONTEXT = "aggregated"
UNIT_EPOCH = "epoch"
UNIT_ROUND = "round"


class UnknownRunsError(RunwatchError):
    """Some of the runs asked for are not in the source; all of them are named at once."""

    def __init__(self, run_ids: Sequence[str], where: str) -> None:
        plural = "s" if len(run_ids) > 1 else ""
        names = ", ".join(repr(r) for r in run_ids)
        super().__init__(f"unknown run{plural} in {where}: {names}")
        self.run_ids = tuple(run_ids)


def higher_is_better(metric: str) -> bool:
    """The default direction of ``metric`` (raw or canonical name)."""
    return default_higher_is_better(metric)


def metric_key(metric: str) -> str:
    """The canonical name of ``metric`` as both backends hold it (a raw name is normalised);
    a name with nothing left is a usage error."""
    name = canonical_name(metric)
    if name is None:
        raise RunwatchError(f"--metric {metric!r} is not a metric name (no letter or digit)")
    return name


def federated_key(metric: str) -> str:
    """The name a federated run's aggregate of ``metric`` is stored under (``eval_acc`` ->
    ``val_acc``); an unprefixed name is an evaluation metric (``loss`` -> ``val_loss``)."""
    return federated_metric_name(metric) or metric_key(metric)


def _direction(metric: str, higher: bool | None) -> bool:
    return default_higher_is_better(metric) if higher is None else higher


@dataclass(frozen=True)
class MetricSummary:
    epochs: int
    best_value: float | None
    best_epoch: int | None
    last_value: float | None
    last_epoch: int | None


NO_VALUES = MetricSummary(0, None, None, None, None)


@dataclass(frozen=True)
class ComparisonRow:
    run_id: str
    experiment: str
    mode: str
    epochs: int
    best_value: float | None
    best_epoch: int | None
    last_value: float | None
    last_epoch: int | None
    unit: str = UNIT_EPOCH
    """What ``epochs``, ``best_epoch`` and ``last_epoch`` count: "epoch", or "round" for a
    federated run."""

    @classmethod
    def of(cls, run_id: str, experiment: str, mode: str, summary: MetricSummary) -> ComparisonRow:
        unit = UNIT_ROUND if mode == schema.MODE_FEDERATED else UNIT_EPOCH
        return cls(run_id, experiment, mode, **asdict(summary), unit=unit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    metric: str
    higher_is_better: bool
    source: str
    rows: tuple[ComparisonRow, ...]

    @property
    def best(self) -> ComparisonRow | None:
        """The run with the best value of all (the first one listed wins a tie)."""
        scored = [row for row in self.rows if row.best_value is not None]
        if not scored:
            return None
        sign = -1.0 if self.higher_is_better else 1.0
        return min(scored, key=lambda row: sign * (row.best_value or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "source": self.source,
            "runs": [row.to_dict() for row in self.rows],
        }


def summarize(points: Iterable[tuple[int, float]], higher: bool) -> MetricSummary:
    """Best and last of (epoch, value) points, as the Flux ``metric_summary`` query computes
    them: in epoch order, a value replaces the best only when strictly better."""
    ordered = sorted(points, key=lambda point: point[0])
    if not ordered:
        return NO_VALUES
    best_epoch, best_value = ordered[0]
    for epoch, value in ordered[1:]:
        if (value > best_value) if higher else (value < best_value):
            best_epoch, best_value = epoch, value
    last_epoch, last_value = ordered[-1]
    return MetricSummary(len(ordered), best_value, best_epoch, last_value, last_epoch)


# -- relational store ------------------------------------------------------------------------


def compare_from_store(
    store: Store, run_ids: Sequence[str], metric: str, *, higher: bool | None = None
) -> Comparison:
    """``higher``: whether larger values are better (None: read from the metric's name)."""
    metric = metric_key(metric)
    wanted = flux_queries.string_list(run_ids)
    runs = {}
    unknown = []
    for run_id in wanted:
        try:
            runs[run_id] = store.get_run(run_id)
        except UnknownRunError:
            unknown.append(run_id)
    if unknown:
        raise UnknownRunsError(unknown, f"the run store ({mask_url(store.url)})")
    higher = _direction(metric, higher)
    rows = []
    for run_id, run in runs.items():
        name = federated_key(metric) if run.mode == schema.MODE_FEDERATED else metric
        points = [
            (record.step, record.value)
            for record in _store_records(store, run_id, run.mode)
            if record.name == name and record.client_id is None
        ]
        rows.append(ComparisonRow.of(run_id, run.experiment, run.mode, summarize(points, higher)))
    return Comparison(metric, higher, SOURCE_SQL, tuple(rows))


def _store_records(store: Store, run_id: str, mode: str) -> list[MetricRecord]:
    if mode != schema.MODE_FEDERATED:
        return store.metrics_by_context(run_id, EPOCH_CONTEXT)
    return store.metrics_by_context(run_id, AGGREGATED_CONTEXT)


# -- InfluxDB ------------------------------------------------------------------------------


def compare_from_influx(
    settings: Settings,
    run_ids: Sequence[str],
    metric: str,
    *,
    now: datetime | None = None,
    higher: bool | None = None,
) -> Comparison:
    """``higher``: whether larger values are better (None: read from the metric's name)."""
    metric = metric_key(metric)
    wanted = flux_queries.string_list(run_ids)
    start, stop = flux_queries.runs_window(wanted, now)
    window = {"start": start, "stop": stop, "run_ids": wanted}
    found = flux_queries.run_query(
        settings, flux_queries.RUNS, {**window, "experiment": "", "training_mode": ""}
    )
    runs = flux_queries.rows_by(found, "run_id")
    unknown = [run_id for run_id in wanted if run_id not in runs]
    if unknown:
        raise UnknownRunsError(
            unknown,
            f"InfluxDB bucket {settings.influx_bucket!r} "
            "(not shipped yet? `runwatch sync`, or --source sql)",
        )
    higher = _direction(metric, higher)
    summaries = flux_queries.rows_by(
        flux_queries.run_query(
            settings,
            flux_queries.METRIC_SUMMARY,
            {**window, "metric": metric, "higher_is_better": higher},
        ),
        "run_id",
    )
    federated = [r for r in wanted if runs[r]["mode"] == schema.MODE_FEDERATED]
    field = round_field(federated_key(metric))
    if federated and field is not None:
        round_summaries = flux_queries.rows_by(
            flux_queries.run_query(
                settings,
                flux_queries.ROUND_SUMMARY,
                {**window, "run_ids": federated, "metric": field, "higher_is_better": higher},
            ),
            "run_id",
        )
        summaries = {**summaries, **{r: round_summaries.get(r, {}) for r in federated}}
    rows = tuple(
        ComparisonRow.of(
            run_id,
            str(runs[run_id]["experiment"]),
            str(runs[run_id]["mode"]),
            _flux_summary(summaries.get(run_id)),
        )
        for run_id in wanted
    )
    return Comparison(metric, higher, SOURCE_INFLUX, rows)


def recorded_metrics(settings: Settings, source: str, run_ids: Sequence[str]) -> list[str]:
    """The metric names ``compare --metric`` finds for ``run_ids`` in ``source``: client-less
    epoch metrics, and federated runs' aggregates under their federated names."""
    if source == SOURCE_INFLUX:
        return _metrics_in_influx(settings, run_ids)
    from collector.store import Store

    store = Store.from_settings(settings)
    try:
        return _metrics_in_store(store, run_ids)
    finally:
        store.dispose()


def _metrics_in_store(store: Store, run_ids: Sequence[str]) -> list[str]:
    names: set[str] = set()
    for run_id in run_ids:
        mode = store.get_run(run_id).mode
        records = _store_records(store, run_id, mode)
        names.update(record.name for record in records if record.client_id is None)
    return sorted(names)


def _metrics_in_influx(settings: Settings, run_ids: Sequence[str]) -> list[str]:
    wanted = flux_queries.string_list(run_ids)
    start, stop = flux_queries.runs_window(wanted)
    rows = flux_queries.run_query(
        settings, flux_queries.METRIC_NAMES, {"start": start, "stop": stop, "run_ids": wanted}
    )
    names: set[str] = set()
    for row in rows:
        field = str(row["_field"])
        if row["_measurement"] == schema.M_EPOCH:
            if field != schema.M_EPOCH:  # the epoch number itself
                names.add(field)
            continue
        federated = federated_metric_name(field)
        if federated is not None and round_field(federated) == field:
            names.add(federated)
        elif round_field(field) == field:
            names.add(field)  # train_loss
    return sorted(names)


def _flux_summary(row: Mapping[str, Any] | None) -> MetricSummary:
    if row is None or not row.get("epochs"):
        return NO_VALUES
    return MetricSummary(
        epochs=int(row["epochs"]),
        best_value=float(row["best_value"]),
        best_epoch=int(row["best_epoch"]),
        last_value=float(row["last_value"]),
        last_epoch=int(row["last_epoch"]),
    )
