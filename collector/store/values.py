"""Turning whatever a training loop hands over into store rows, without ever raising.

Metric names and values follow the one rule of ``collector.values`` (see docs/design.md,
"Metric names and values"), the same one the InfluxDB points follow:

- a metric is stored under its canonical name (``val/acc@1`` -> ``val_acc_1``), cut to the
  255 characters of its column; a name with nothing left (``"//"``) is dropped;
- a number (bool, int, float, anything with ``__float__`` or a scalar ``.item()``) is stored
  as a float; NaN and ±Inf are not: ``<name>_nonfinite`` = 1.0 is stored instead;
- anything else, and an int no float can hold, is dropped;
- each metric name dropped or replaced is warned about once per store, under its canonical
  name (the raw one quoted beside it).

Other text (experiment, client, hyperparameter names) goes in as every supported database can
store it (``storable_text``): lone surrogates and NUL become U+FFFD, non-strings become
``str``, and text longer than its column is cut. So one hostile name costs at most its own
spelling, never its neighbours' rows (a rejected value in a bulk INSERT fails the whole
statement). A step outside the database's 32-bit INTEGER falls back like a non-finite one.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Iterable, Iterator

from collector.schema import NONFINITE_SUFFIX
from collector.values import Outcome, as_number, canonical_name, classify, drop_reason

__all__ = ["NONFINITE_SUFFIX", "as_float", "canonical_name"]
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
    """``raw`` as a float (possibly non-finite), or None when the rule drops it."""
    return as_number(raw)


def metric_name(raw: object) -> str | None:
    """The canonical metric name as stored (cut to its column), or None when nothing is left."""
    name = canonical_name(raw)
    return None if name is None else name[:NAME_MAX_CHARS]


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
        """(canonical name, value) pairs by the rule; a name that is dropped, or a value that
        is dropped or flagged, is warned about once. Two raw names with the same canonical
        name keep the last value, as fields of one InfluxDB point do."""
        kept: dict[str, float] = {}
        for raw_name, raw in items:
            name = metric_name(raw_name)
            if name is None:
                self._warn_once(repr(raw_name), "the name has no letter or digit; skipped", "name")
                continue
            outcome, value = classify(raw)
            if outcome is Outcome.FINITE and value is not None:
                kept[name] = value
            elif outcome is Outcome.NONFINITE:
                flag = storable_name(name, len(NONFINITE_SUFFIX)) + NONFINITE_SUFFIX
                self._warn_once(
                    name,
                    f"value {as_number(raw)} is not finite; stored {flag}=1.0 instead",
                    raw=raw_name,
                )
                kept[flag] = 1.0
            else:
                self._warn_once(name, f"{drop_reason(raw)}; skipped", raw=raw_name)
        yield from kept.items()

    def value(self, name: str, raw: object) -> float | None:
        """One value: the float, or None when the rule drops it (no companion metric)."""
        outcome, value = classify(raw)
        if outcome is Outcome.FINITE:
            return value
        reason = (
            drop_reason(raw) if outcome is Outcome.DROPPED else f"{as_number(raw)} is not finite"
        )
        self._warn_once(name, f"value {reason}; stored as NULL")
        return None

    def _warn_once(self, name: str, reason: str, topic: str = "value", raw: object = None) -> None:
        with self._lock:
            if (topic, name) in self._warned:
                return
            self._warned.add((topic, name))
        logged_as = f" (logged as {raw!r})" if isinstance(raw, str) and raw != name else ""
        log.warning(
            "runwatch: metric %r%s: %s (further warnings for this name suppressed)",
            name,
            logged_as,
            reason,
        )
