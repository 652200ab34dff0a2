"""Whether a benchmark's median is above or below a target beyond the machine's noise.

A median of paired ratios says little on its own when single rounds range from 0.97x to
1.4x. ``median_interval`` gives a distribution-free confidence interval for the median (the
order statistics a sign test picks: nothing is assumed about the shape of the noise), and
``verdict`` compares it with a target: "met" only when the whole interval is on the target's
side, "not met" only when all of it is beyond, else "within noise".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

CONFIDENCE = 0.95


class Interval(NamedTuple):
    low: float
    high: float
    coverage: float
    """The probability that the interval holds the true median (at least)."""


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The narrowest ``(x[i], x[n-1-i])`` of the sorted values that holds the true median
    with at least ``confidence`` probability (a sign test's coverage, 1 - 2 P(B <= i) with
    B ~ binomial(n, 1/2)). With too few values to reach it (under six at 95%), the whole
    range, with the coverage it has."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median_interval() needs at least one value")
    count = len(ordered)
    inner, coverage = 0, 1 - 2 / 2**count if count > 1 else 0.0
    missed = 0.0  # P(B <= index): the true median lies below x[index]
    for index in range(count // 2):
        missed += math.comb(count, index) / 2**count
        if 1 - 2 * missed < confidence:
            break
        inner, coverage = index, 1 - 2 * missed
    return Interval(ordered[inner], ordered[count - 1 - inner], coverage)


def verdict(interval: Interval, target: float, *, at_most: bool = True) -> str:
    """The interval against a target the median must stay under (``at_most``) or reach:
    "met", "not met", "within noise", or "too few rounds" to tell at 95%."""
    if interval.coverage < CONFIDENCE:
        return "too few rounds"
    low, high = interval.low, interval.high
    if at_most:
        return "met" if high <= target else "not met" if low > target else "within noise"
    return "met" if low >= target else "not met" if high < target else "within noise"


def paired_differences(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """``first[i] - second[i]``: two configurations measured in the same rounds."""
    if len(first) != len(second):
        raise ValueError("paired figures need one value per round each")
    return [a - b for a, b in zip(first, second, strict=True)]
