"""collector.comparison: the best/last rule both sources follow, and the comparison table."""

from __future__ import annotations

import json
import subprocess
import sys

from collector.comparison import (
    NO_VALUES,
    Comparison,
    ComparisonRow,
    MetricSummary,
    UnknownRunsError,
    higher_is_better,
    summarize,
)


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
