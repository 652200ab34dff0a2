"""Pure helpers: epoch mappings → run_metrics rows, and final confusion-matrix stats."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from collector import schema
from collector.store.values import FiniteValues, as_step, dataset_type

# Keys of an epoch mapping that say where the values belong, not what was measured.
POSITION_KEYS = frozenset({"epoch", "step", "global_step", "timestamp"})
CM_KEYS = ("cm_tp", "cm_tn", "cm_fp", "cm_fn")
# Which confusion matrix counts as "the" one when several were logged, best first.
CM_PREFIXES = ("val_", "test_", "", "server_")


@dataclass(frozen=True)
class MetricTarget:
    """Where rows go: the run, and in federated runs the client and round they belong to."""

    run_pk: int
    context: str
    client_pk: int | None = None
    round_pk: int | None = None


# A run_metrics row without id and recorded_at, in table column order (see bulk.py).
MetricRow = tuple[int, str, float, int, str, str, int | None, int | None]
METRIC_ROW_COLUMNS = (
    "run_pk",
    "metric_name",
    "metric_value",
    "step",
    "dataset_type",
    "context",
    "client_pk",
    "round_pk",
)


def epoch_rows(
    epochs: Sequence[Mapping[str, object]],
    target: MetricTarget,
    values: FiniteValues,
) -> list[MetricRow]:
    """One row per finite metric value; step is the mapping's epoch (else step, else position)."""
    rows: list[MetricRow] = []
    for position, epoch in enumerate(epochs):
        step = as_step(epoch.get("epoch", epoch.get("step")), position)
        metrics = ((k, v) for k, v in epoch.items() if k not in POSITION_KEYS)
        rows.extend(named_rows(values.pairs(metrics), step, target))
    return rows


def named_rows(
    pairs: Iterable[tuple[str, float]], step: int, target: MetricTarget
) -> list[MetricRow]:
    run_pk, context, client_pk, round_pk = (
        target.run_pk,
        target.context,
        target.client_pk,
        target.round_pk,
    )
    return [
        (run_pk, name, value, step, dataset_type(name), context, client_pk, round_pk)
        for name, value in pairs
    ]


@dataclass(frozen=True)
class ConfusionMatrix:
    tp: float
    tn: float
    fp: float
    fn: float
    auroc: float | None = None

    def stats(self) -> dict[str, float]:
        """Seed naming (``final_*_cm``); every ratio guarded against a zero denominator."""
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = _ratio(self.tp, self.tp + self.fn)
        f1 = _ratio(2 * precision * recall, precision + recall)
        accuracy = _ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn)
        stats = {
            "final_precision_cm": precision,
            "final_recall_cm": recall,
            "final_f1_cm": f1,
            "final_accuracy_cm": accuracy,
            "final_cm_tp": self.tp,
            "final_cm_tn": self.tn,
            "final_cm_fp": self.fp,
            "final_cm_fn": self.fn,
        }
        if self.auroc is not None:
            stats["final_auroc_cm"] = self.auroc
        return stats


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def latest_confusion_matrix(
    rows_newest_first: Iterable[tuple[int, str, float]],
) -> tuple[int, ConfusionMatrix] | None:
    """The newest step whose (step, name, value) rows hold a complete confusion matrix."""
    by_step: dict[int, dict[str, float]] = {}
    for step, name, value in rows_newest_first:
        by_step.setdefault(step, {})[name] = value
    for step in sorted(by_step, reverse=True):
        found = confusion_matrix_in(by_step[step])
        if found is not None:
            return step, found
    return None


def confusion_matrix_in(metrics: Mapping[str, float]) -> ConfusionMatrix | None:
    for prefix in CM_PREFIXES:
        counts = [metrics.get(prefix + key) for key in CM_KEYS]
        if all(count is not None for count in counts):
            tp, tn, fp, fn = (float(c) for c in counts if c is not None)
            return ConfusionMatrix(tp, tn, fp, fn, metrics.get(prefix + "auroc"))
    return None


def cm_metric_names() -> list[str]:
    return [prefix + key for prefix in CM_PREFIXES for key in (*CM_KEYS, "auroc")]


SERVER_EVALUATION_COLUMNS = schema.EVALUATION_FIELDS


def server_evaluation_column(metric_name: str) -> str | None:
    """The server_evaluations column a metric fills: ``server_cm_tp`` → ``cm_tp``."""
    return schema.evaluation_field(metric_name)


def server_evaluation_fields(finite: Mapping[str, float]) -> dict[str, float]:
    columns: dict[str, float] = {}
    for name, value in finite.items():
        column = server_evaluation_column(name)
        if column is not None:
            columns.setdefault(column, value)
    return columns
