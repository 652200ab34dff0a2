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

**Federated names.** A Flower client names its metrics as its app likes: Flower's examples
reply ``train_loss`` from training and ``eval_loss`` / ``eval_acc`` from evaluation, runwatch's
trainer ``val_loss`` / ``val_acc``, a strategy's evaluate_fn ``accuracy`` / ``loss``. Every
client reply and every aggregate of them is stored under one federated name
(:func:`federated_metric_name`): an evaluation metric is ``val_<short>``, a training metric
``train_<short>``, where ``<short>`` is the name without its phase prefix (``val_``, ``eval_``,
``evaluate_``, ``validation_``, ``test_``; ``train_``, ``fit_``) and with Flower's spellings
folded (``accuracy`` -> ``acc``, ``auc`` -> ``auroc``, ``f1_score`` -> ``f1``). So
``eval_acc``, ``eval_accuracy``, ``accuracy`` (in an evaluate reply) and ``val_acc`` are all
``val_acc``; ``loss`` in a train reply is ``train_loss``. A name that already carries a phase
prefix keeps that phase whichever reply holds it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Mapping
from enum import Enum
from typing import Final

from collector.schema import NONFINITE_SUFFIX, evaluation_field, nonfinite_field

PHASE_TRAIN: Final = "train"
PHASE_EVALUATE: Final = "evaluate"
_EVALUATION_PREFIXES: Final = ("val_", "eval_", "evaluate_", "validation_", "test_")
_TRAINING_PREFIXES: Final = ("train_", "fit_")
_SHORT_ALIASES: Final = {"accuracy": "acc", "auc": "auroc", "f1_score": "f1"}

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
    detach = getattr(raw, "detach", None)
    if callable(detach):  # a tensor that requires grad: torch warns on float() without it
        with contextlib.suppress(Exception):
            raw = detach()
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


def _split_phase(name: str) -> tuple[str | None, str]:
    """(the phase a prefix names or None, the name without it)."""
    for phase, prefixes in (
        (PHASE_EVALUATE, _EVALUATION_PREFIXES),
        (PHASE_TRAIN, _TRAINING_PREFIXES),
    ):
        for prefix in prefixes:
            if name.startswith(prefix) and len(name) > len(prefix):
                return phase, name.removeprefix(prefix)
    return None, name


@functools.lru_cache(maxsize=4096)
def federated_metric_name(raw: str, phase: str = PHASE_EVALUATE) -> str | None:
    """The one name a federated client metric is stored under (see the module docstring):
    ``phase`` is the reply's (``train`` or ``evaluate``) and decides for an unprefixed name."""
    name = canonical_name(raw)
    if name is None:
        return None
    named_phase, short = _split_phase(name)
    short = _SHORT_ALIASES.get(short, short)
    prefix = "train_" if (named_phase or phase) == PHASE_TRAIN else "val_"
    return prefix + short


def federated_metrics(metrics: Mapping[str, float], phase: str) -> dict[str, float]:
    """``metrics`` under their federated names; the first of two names that meet wins."""
    named: dict[str, float] = {}
    for raw, value in metrics.items():
        name = federated_metric_name(raw, phase)
        if name is not None:
            named.setdefault(name, value)
    return named


def round_field(name: str) -> str | None:
    """The ``round`` point field a (server or aggregated) metric fills: an evaluation metric
    its evaluation field (``val_acc``, ``eval_acc``, ``test_acc`` -> ``accuracy``), a training
    metric its federated name (``train_loss``); None for any other."""
    target = evaluation_field(name)
    if target is not None:
        return target
    federated = federated_metric_name(name, PHASE_TRAIN)
    if federated is not None and federated == canonical_name(name):
        return federated  # it was already named train_*
    return None
