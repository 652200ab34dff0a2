"""Turning whatever a training loop hands over into finite floats, without ever raising.

Rule (the same one the InfluxDB writer follows, see DESIGN.md):

- bool, int, float and anything with ``__float__`` (numpy scalars, 0-d tensors, Decimal)
  becomes a float;
- NaN, +Inf and -Inf are not stored as numbers: the value is dropped and a companion metric
  ``<name>_nonfinite`` = 1.0 is stored instead, so queries and alerts can see it happened;
- ``None``, strings, bytes, complex numbers and other objects are skipped;
- each metric name that is dropped or replaced is logged once, as one warning, per store.

Names and other text go in as every supported database can store them (``storable_text``):
lone surrogates and NUL become U+FFFD, non-strings become ``str``, and text longer than its
column is cut. So one hostile name costs at most its own spelling, never its neighbours' rows
(a rejected value in a bulk INSERT fails the whole statement). A step outside the database's
32-bit INTEGER falls back like a non-finite one.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Iterable, Iterator

NONFINITE_SUFFIX = "_nonfinite"
NAME_MAX_CHARS = 255
"""Length of the name columns (``String(255)``); PostgreSQL rejects longer text."""
DATASET_PREFIXES = (("train_", "train"), ("val_", "validation"), ("test_", "test"))

log = logging.getLogger("collector.store")

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_STEP_RANGE = (-(2**31), 2**31 - 1)


def storable_text(raw: object, max_chars: int | None = None) -> str:
    """``raw`` as text any database takes: surrogate pairs joined, lone surrogates and NUL
    replaced by U+FFFD, cut to ``max_chars``."""
    text = raw if isinstance(raw, str) else str(raw)
    if _UNSTORABLE.search(text):
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        text = joined.replace("\x00", "\ufffd")
    return text if max_chars is None else text[:max_chars]


def storable_name(raw: object, reserve: int = 0) -> str:
    """A metric or parameter name as stored, leaving ``reserve`` characters for a suffix."""
    return storable_text(raw, NAME_MAX_CHARS - reserve)


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
            return math.inf if raw > 0 else -math.inf
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def as_step(raw: object, fallback: int) -> int:
    value = as_float(raw)
    if value is None or not math.isfinite(value):
        return fallback
    step = int(value)
    return step if _STEP_RANGE[0] <= step <= _STEP_RANGE[1] else fallback


@functools.lru_cache(maxsize=4096)
def dataset_type(metric_name: str) -> str:
    for prefix, kind in DATASET_PREFIXES:
        if metric_name.startswith(prefix):
            return kind
    return "other"


class FiniteValues:
    """Filters (name, value) pairs by the module's rule; warns once per metric name."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def pairs(self, items: Iterable[tuple[object, object]]) -> Iterator[tuple[str, float]]:
        """Storable (name, value) pairs; a name that had to change is warned about once."""
        for raw_name, raw in items:
            name = storable_name(raw_name)
            if isinstance(raw_name, str) and name != raw_name:
                self._warn_once(
                    name, f"stored under this name ({raw_name!r} cannot be stored)", "name"
                )
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
                yield storable_name(name, len(NONFINITE_SUFFIX)) + NONFINITE_SUFFIX, 1.0
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

    def _warn_once(self, name: str, reason: str, topic: str = "value") -> None:
        with self._lock:
            if (topic, name) in self._warned:
                return
            self._warned.add((topic, name))
        log.warning(
            "runwatch: metric %r: %s (further warnings for this name suppressed)", name, reason
        )
