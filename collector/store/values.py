"""Turning whatever a training loop hands over into finite floats, without ever raising.

Rule (the same one the InfluxDB writer follows, see DESIGN.md):

- bool, int, float and anything with ``__float__`` (numpy scalars, 0-d tensors, Decimal)
  becomes a float;
- NaN, +Inf and -Inf are not stored as numbers: the value is dropped and a companion metric
  ``<name>_nonfinite`` = 1.0 is stored instead, so queries and alerts can see it happened;
- ``None``, strings, bytes, complex numbers and other objects are skipped;
- each metric name that is dropped or replaced is logged once, as one warning, per store.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Iterable, Iterator

NONFINITE_SUFFIX = "_nonfinite"
DATASET_PREFIXES = (("train_", "train"), ("val_", "validation"), ("test_", "test"))

log = logging.getLogger("collector.store")


def as_float(raw: object) -> float | None:
    """``raw`` as a float (possibly non-finite), or None when it is not a real number."""
    if type(raw) is float:
        return raw
    if raw is None or isinstance(raw, str | bytes | bytearray | complex):
        return None
    if isinstance(raw, int):  # bool included; ints too large for a float overflow to inf
        try:
            return float(raw)
        except OverflowError:
            return math.copysign(math.inf, raw)
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def as_step(raw: object, fallback: int) -> int:
    value = as_float(raw)
    if value is None or not math.isfinite(value):
        return fallback
    return int(value)


@functools.lru_cache(maxsize=4096)
def dataset_type(metric_name: str) -> str:
    for prefix, kind in DATASET_PREFIXES:
        if metric_name.startswith(prefix):
            return kind
    return "other"


class FiniteValues:
    """Filters (name, value) pairs by the module's rule; warns once per metric name."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def pairs(self, items: Iterable[tuple[str, object]]) -> Iterator[tuple[str, float]]:
        for name, raw in items:
            value = as_float(raw)
            if value is None:
                self._warn_once(
                    name, f"value of type {type(raw).__name__} is not a real number; skipped"
                )
            elif not math.isfinite(value):
                self._warn_once(
                    name,
                    f"value {value} is not finite; stored {name}{NONFINITE_SUFFIX}=1.0 instead",
                )
                yield name + NONFINITE_SUFFIX, 1.0
            else:
                yield name, value

    def value(self, name: str, raw: object) -> float | None:
        """One value: the float, or None when the rule drops it (no companion metric)."""
        value = as_float(raw)
        if value is not None and math.isfinite(value):
            return value
        reason = "not a real number" if value is None else f"{value} is not finite"
        self._warn_once(name, f"value {reason}; stored as NULL")
        return None

    def _warn_once(self, name: str, reason: str) -> None:
        with self._lock:
            if name in self._warned:
                return
            self._warned.add(name)
        log.warning(
            "runwatch: metric %r: %s (further warnings for this name suppressed)", name, reason
        )
