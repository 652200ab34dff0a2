"""The one rule for metric names and values, shared by every backend.

**Names.** A metric name from a user is stored under one canonical name everywhere: InfluxDB
fields, store rows, ``runs show``/``runs export``, ``compare`` and Prometheus. Canonical means
lower-cased, every run of characters outside ``[a-z0-9]`` turned into one ``_``, leading and
trailing ``_`` stripped (``val/acc@1`` -> ``val_acc_1``, ``loss (smoothed)`` ->
``loss_smoothed``); ``time`` (reserved by InfluxDB) becomes ``time_value``. A name with
nothing left (``""``, ``"//"``, ``"损失"``) is not a metric name: its value is dropped.

**Values.** A value is a number when it is a ``bool``, ``int`` or ``float``, or has
``__float__`` or a scalar ``.item()`` (numpy scalars, 0-d tensors, ``Decimal``). Then:

- finite: stored as a float;
- NaN, +Inf, -Inf: not stored; ``<name>_nonfinite`` = 1.0 is stored instead, so queries and
  alerts see it happened;
- anything else (``None``, text, bytes, complex, objects) and a number no float can hold (an
  ``int`` beyond ±1.8e308): dropped, with one warning per name.

**Direction.** Whether a larger value of a metric is better is read from its canonical name:
a name containing one of the words ``loss``, ``error``, ``err``, ``mse``, ``mae``, ``rmse``,
``perplexity``/``ppl``, ``nll``, ``fpr``/``fnr`` or ``fp``/``fn`` (confusion-matrix
false counts), or ending in ``_nonfinite``, is lower-is-better;
every other is higher-is-better. Callers can override it.
"""

from __future__ import annotations

import functools
import math
import re
from enum import Enum
from typing import Final

from collector.schema import NONFINITE_SUFFIX, nonfinite_field

_NON_NAME_RUN = re.compile(r"[^a-z0-9]+")
_RESERVED_NAMES: Final = {"time": "time_value"}
_LOWER_IS_BETTER_WORDS: Final = frozenset(
    {
        "loss",
        "error",
        "err",
        "mse",
        "mae",
        "rmse",
        "perplexity",
        "ppl",
        "nll",
        "fpr",
        "fnr",
        "fp",
        "fn",
    }
)


@functools.lru_cache(maxsize=8192)
def _canonical_text(text: str) -> str | None:
    name = _NON_NAME_RUN.sub("_", text.lower()).strip("_")
    if not name:
        return None
    return _RESERVED_NAMES.get(name, name)


def canonical_name(raw: object) -> str | None:
    """The canonical metric name for a user-supplied one, or None when nothing is left."""
    return _canonical_text(raw if isinstance(raw, str) else str(raw))


def as_number(raw: object) -> float | None:
    """``raw`` as a float (possibly NaN or ±Inf), or None when the rule drops it."""
    if type(raw) is float:
        return raw
    if raw is None or isinstance(raw, str | bytes | bytearray):
        return None
    try:
        return float(raw)  # type: ignore[arg-type]  # duck-typed: __float__ / __index__
    except (TypeError, ValueError, OverflowError):
        pass
    item = getattr(raw, "item", None)
    if callable(item):
        try:
            inner = item()
        except Exception:  # a tensor with many elements, a failing device sync, ...
            return None
        if isinstance(inner, bool | int | float):
            try:
                return float(inner)
            except OverflowError:
                return None
    return None


class Outcome(Enum):
    FINITE = "finite"
    NONFINITE = "nonfinite"
    DROPPED = "dropped"


def classify(raw: object) -> tuple[Outcome, float | None]:
    """What the rule does with one value: (FINITE, value), (NONFINITE, None) or (DROPPED, None)."""
    value = as_number(raw)
    if value is None:
        return Outcome.DROPPED, None
    if math.isfinite(value):
        return Outcome.FINITE, value
    return Outcome.NONFINITE, None


def drop_reason(raw: object) -> str:
    """Why ``raw`` is dropped, for the one warning."""
    if isinstance(raw, int):
        return f"an integer of {len(str(abs(raw)))} digits is too large for a float"
    return f"a value of type {type(raw).__name__} is not a real number"


def flag_name(name: str) -> str:
    """The field/row stored instead of a non-finite value of the canonical metric ``name``."""
    return nonfinite_field(name)


@functools.lru_cache(maxsize=4096)
def higher_is_better(metric: str) -> bool:
    """The default direction of a metric (raw or canonical name), see the module docstring."""
    name = canonical_name(metric) or ""
    if name.endswith(NONFINITE_SUFFIX):
        return False
    return not any(word in _LOWER_IS_BETTER_WORDS for word in name.split("_"))
