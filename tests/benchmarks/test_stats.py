"""benchmarks/_stats.py: the median's confidence interval and the verdicts built on it."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "_stats.py"
    spec = importlib.util.spec_from_file_location("benchmark_stats", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stats = _load()


def test_thirty_values_leave_nine_out_at_each_end() -> None:
    values = [float(v) for v in range(30)]
    random.Random(1).shuffle(values)
    interval = stats.median_interval(values)
    exact = 1 - 2 * sum(math.comb(30, i) for i in range(10)) / 2**30
    assert (interval.low, interval.high) == (9.0, 20.0)
    assert interval.coverage == pytest.approx(exact)
    assert interval.coverage >= 0.95


def test_the_interval_holds_a_skewed_distributions_median_as_often_as_it_says() -> None:
    generator = random.Random(7)
    true_median = math.log(2)  # of the exponential distribution with rate 1
    trials = 3000
    held = 0
    for _ in range(trials):
        interval = stats.median_interval([generator.expovariate(1.0) for _ in range(30)])
        held += interval.low <= true_median <= interval.high
    assert held / trials >= 0.94  # 95.7% promised; 0.94 leaves room for the sampling


def test_too_few_values_give_the_whole_range_and_no_verdict() -> None:
    interval = stats.median_interval([1.00, 1.01, 1.02, 1.03, 1.04])
    assert (interval.low, interval.high) == (1.00, 1.04)
    assert interval.coverage < 0.95
    assert stats.verdict(interval, 1.05) == "too few rounds"
    with pytest.raises(ValueError):
        stats.median_interval([])


@pytest.mark.parametrize(
    ("low", "high", "at_most", "expected"),
    [
        (1.02, 1.04, True, "met"),
        (1.04, 1.06, True, "within noise"),
        (1.051, 1.07, True, "not met"),
        (1.01, 1.03, False, "met"),
        (0.98, 1.02, False, "within noise"),
        (0.95, 0.99, False, "not met"),
    ],
)
def test_verdict_needs_the_whole_interval_on_one_side(
    low: float, high: float, at_most: bool, expected: str
) -> None:
    target = 1.05 if at_most else 1.0
    assert stats.verdict(stats.Interval(low, high, 0.96), target, at_most=at_most) == expected


def test_paired_differences_pair_rounds() -> None:
    assert stats.paired_differences([1.1, 1.2], [1.0, 1.3]) == pytest.approx([0.1, -0.1])
    with pytest.raises(ValueError):
        stats.paired_differences([1.0], [1.0, 1.1])
