"""collector.comparison: the best/last rule both sources follow, and the comparison table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collector.comparison import (
    NO_VALUES,
    Comparison,
    ComparisonRow,
    MetricSummary,
    UnknownRunsError,
    compare_from_influx,
    compare_from_store,
    federated_key,
    higher_is_better,
    summarize,
)
from tests.servers.influx_runs import ROUNDS, LoadedRuns


def test_direction_follows_the_metric_name() -> None:
    assert not higher_is_better("val_loss")
    assert not higher_is_better("train_loss")
    assert not higher_is_better("loss")
    assert higher_is_better("val_recall")
    assert higher_is_better("val_auroc")


def test_summarize_lower_is_better_earliest_epoch_wins_a_tie() -> None:
    points = [(3, 0.5), (0, 0.9), (1, 0.5), (2, 0.6)]  # out of order on purpose
    assert summarize(points, higher=False) == MetricSummary(4, 0.5, 1, 0.5, 3)


def test_summarize_higher_is_better() -> None:
    points = [(0, 0.5), (1, 0.9), (2, 0.7)]
    assert summarize(points, higher=True) == MetricSummary(3, 0.9, 1, 0.7, 2)


def test_summarize_nothing() -> None:
    assert summarize([], higher=True) == NO_VALUES == MetricSummary(0, None, None, None, None)


def test_best_row_across_runs() -> None:
    def row(run_id: str, best: float | None) -> ComparisonRow:
        summary = NO_VALUES if best is None else MetricSummary(1, best, 0, best, 0)
        return ComparisonRow.of(run_id, "e", "centralized", summary)

    rows = (row("a", 0.4), row("b", None), row("c", 0.2), row("d", 0.2))
    lower = Comparison("val_loss", False, "sql", rows)
    higher = Comparison("val_recall", True, "sql", rows)
    assert lower.best is not None and lower.best.run_id == "c"
    assert higher.best is not None and higher.best.run_id == "a"
    assert Comparison("x", True, "sql", (row("b", None),)).best is None


def test_unknown_runs_are_named_in_one_line() -> None:
    one = UnknownRunsError(["a"], "the run store")
    assert str(one) == "unknown run in the run store: 'a'"
    several = UnknownRunsError(["a", 'b"\n)'], "InfluxDB bucket 'training'")
    assert str(several) == "unknown runs in InfluxDB bucket 'training': 'a', 'b\"\\n)'"
    assert "\n" not in str(several) and several.run_ids == ("a", 'b"\n)')


def test_query_and_compare_modules_import_no_framework() -> None:
    script = (
        "import json, sys\n"
        "import collector.flux_queries, collector.comparison, collector.cli.compare\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('torch', 'lightning', 'flwr', 'trainer'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# -- federated runs, under the names Flower's apps use ----------------------------------------

FLOWER_SPELLINGS = {
    "val_acc": ("eval_acc", "val_acc", "accuracy", "eval_accuracy"),
    "val_loss": ("eval_loss", "val_loss", "loss"),
    "train_loss": ("train_loss", "train/loss"),
}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("stored", sorted(FLOWER_SPELLINGS))
def test_federated_run_compares_the_same_under_every_spelling_from_both_sources(
    influx_runs: LoadedRuns, stored: str
) -> None:
    """The fixture's federated clients reply eval_loss / eval_acc and train_loss, as Flower's
    examples do. compare finds the per-round aggregate the store holds under the federated
    name, whichever spelling is asked for, from InfluxDB and from the store alike; train_loss
    included (it used to come back empty with exit 0)."""
    store = influx_runs.store()
    try:
        aggregate = {
            m.step: m.value
            for m in store.aggregated_metrics(influx_runs.federated)
            if m.name == stored
        }
        assert sorted(aggregate) == list(range(1, ROUNDS + 1))
        for spelling in FLOWER_SPELLINGS[stored]:
            from_sql = compare_from_store(store, [influx_runs.federated], spelling)
            from_influx = compare_from_influx(influx_runs.reader, [influx_runs.federated], spelling)
            for comparison in (from_sql, from_influx):
                (row,) = comparison.rows
                assert (row.unit, row.epochs, row.last_epoch) == ("round", ROUNDS, ROUNDS)
                assert row.last_value == pytest.approx(aggregate[ROUNDS], rel=1e-9)
                want = summarize(aggregate.items(), comparison.higher_is_better)
                assert (row.best_epoch, row.best_value) == (
                    want.best_epoch,
                    pytest.approx(want.best_value, rel=1e-9),
                )
            assert from_sql.rows[0].best_value == pytest.approx(from_influx.rows[0].best_value)
    finally:
        store.dispose()


def test_federated_key_folds_flowers_spellings() -> None:
    for stored, spellings in FLOWER_SPELLINGS.items():
        assert {federated_key(s) for s in spellings} == {stored}
