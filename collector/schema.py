"""Every InfluxDB measurement, tag and field name runwatch writes (docs/design.md, "InfluxDB schema").

This module is the single owner of those names: the recorder validates points against
``MEASUREMENTS``, and dashboards, alert rules and queries are generated from it, so it is
plain data that code can walk (``MEASUREMENTS``, ``describe()``).

Naming: measurement constants carry an ``M_`` prefix (``M_ROUND`` is the measurement,
``ROUND`` the tag); field and tag constants are the bare names.

Rules the recorder enforces from this description:

- Every point carries ``run_id``, ``experiment`` and ``mode``; federated points add
  ``client_id`` and ``round`` where they apply.
- ``step``, ``epoch`` and ``batch_idx`` are fields, never tags.
- Numeric fields are always floats. The only string field is ``event.text``.
- A non-finite value of field ``x`` is dropped and ``x_nonfinite=1.0`` written instead
  (``nonfinite_field``).
- ``epoch`` accepts any (normalised) user metric; ``client_round`` accepts its listed fields
  plus any ``val_*`` or ``train_*`` metric (federated names, ``collector.values``); ``round``
  its listed fields plus the clients' aggregated ``train_*`` metrics; every other measurement
  accepts exactly its listed fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# --- measurements -----------------------------------------------------------------------
M_EPOCH = "epoch"
M_BATCH = "batch"
M_GRADIENT = "gradient"
M_GRADIENT_LAYER = "gradient_layer"
M_ROUND = "round"
M_CLIENT_ROUND = "client_round"
M_EVENT = "event"
M_SYSTEM = "system"

# --- tags -------------------------------------------------------------------------------
RUN_ID = "run_id"
EXPERIMENT = "experiment"
MODE = "mode"
CLIENT_ID = "client_id"
PARTITION_ID = "partition_id"
ROUND = "round"
SOURCE = "source"
EVENT = "event"
LAYER = "layer"
HOST = "host"
RANK = "rank"

BASE_TAGS: tuple[str, ...] = (RUN_ID, EXPERIMENT, MODE)
"""Carried by every point."""
FEDERATED_TAGS: tuple[str, ...] = (CLIENT_ID, ROUND, PARTITION_ID)
"""Added to federated points where they apply (``partition_id``: the client's node config
``partition-id``, when it has one)."""

# Tag values
MODE_CENTRALIZED = "centralized"
MODE_FEDERATED = "federated"
MODES: tuple[str, ...] = (MODE_CENTRALIZED, MODE_FEDERATED)
SOURCE_SERVER = "server"
SOURCE_AGGREGATED = "aggregated"
SOURCES: tuple[str, ...] = (SOURCE_SERVER, SOURCE_AGGREGATED)

# --- fields -----------------------------------------------------------------------------
STEP = "step"
EPOCH = "epoch"
BATCH_IDX = "batch_idx"
NEVER_TAGS: tuple[str, ...] = (STEP, EPOCH, BATCH_IDX)
"""Counters that are always fields: as tags they would explode series cardinality."""

TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
VAL_PRECISION = "val_precision"
VAL_RECALL = "val_recall"
VAL_F1 = "val_f1"
VAL_AUROC = "val_auroc"
VAL_CM_TP = "val_cm_tp"
VAL_CM_TN = "val_cm_tn"
VAL_CM_FP = "val_cm_fp"
VAL_CM_FN = "val_cm_fn"
LR = "lr"

LOSS = "loss"
ACC = "acc"
RECALL = "recall"
F1 = "f1"
SAMPLES_PER_S = "samples_per_s"

TOTAL_NORM = "total_norm"
MAX_NORM = "max_norm"
MIN_NORM = "min_norm"
NORM = "norm"

ACCURACY = "accuracy"
PRECISION = "precision"
AUROC = "auroc"
CM_TP = "cm_tp"
CM_TN = "cm_tn"
CM_FP = "cm_fp"
CM_FN = "cm_fn"
NUM_CLIENTS = "num_clients"
NUM_EXAMPLES = "num_examples"
DURATION_S = "duration_s"

TEXT = "text"
VALUE = "value"

CPU_PERCENT = "cpu_percent"
RSS_BYTES = "rss_bytes"
GPU_UTIL = "gpu_util"
GPU_MEM_BYTES = "gpu_mem_bytes"

NONFINITE_SUFFIX = "_nonfinite"

# --- events (values of the ``event`` tag; Grafana annotations read these) ----------------
EVENT_TRAINING_START = "training_start"
EVENT_TRAINING_END = "training_end"
EVENT_EARLY_STOPPING = "early_stopping"
EVENT_ROUND_START = "round_start"
EVENT_ROUND_END = "round_end"
EVENT_CLIENT_FAILURE = "client_failure"
EVENT_CHECKPOINT = "checkpoint"
EVENT_ALERT = "alert"
EVENT_NAMES: tuple[str, ...] = (
    EVENT_TRAINING_START,
    EVENT_TRAINING_END,
    EVENT_EARLY_STOPPING,
    EVENT_ROUND_START,
    EVENT_ROUND_END,
    EVENT_CLIENT_FAILURE,
    EVENT_CHECKPOINT,
    EVENT_ALERT,
)


def nonfinite_field(name: str) -> str:
    """The flag field written instead of a NaN or ±Inf value of ``name``."""
    return f"{name}{NONFINITE_SUFFIX}"


@dataclass(frozen=True)
class Measurement:
    """One measurement: its extra tags and the fields it accepts.

    ``fields`` are the known fields (dashboards use them); ``open_fields`` accepts any
    normalised name besides; ``field_prefixes`` accepts names starting with one of them.
    """

    name: str
    description: str
    tags: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    string_fields: tuple[str, ...] = ()
    open_fields: bool = False
    field_prefixes: tuple[str, ...] = ()

    def accepts_field(self, name: str) -> bool:
        if self.open_fields or name in self.fields:
            return True
        return any(name.startswith(prefix) for prefix in self.field_prefixes)

    def is_string_field(self, name: str) -> bool:
        return name in self.string_fields

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "tags": [*BASE_TAGS, *self.tags],
            "optional_tags": list(FEDERATED_TAGS),
            "fields": list(self.fields),
            "string_fields": list(self.string_fields),
            "open_fields": self.open_fields,
            "field_prefixes": list(self.field_prefixes),
        }


EPOCH_METRICS: tuple[str, ...] = (
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_ACC,
    VAL_PRECISION,
    VAL_RECALL,
    VAL_F1,
    VAL_AUROC,
    VAL_CM_TP,
    VAL_CM_TN,
    VAL_CM_FP,
    VAL_CM_FN,
    LR,
)
CONFUSION_FIELDS: tuple[str, ...] = (CM_TP, CM_TN, CM_FP, CM_FN)
#: What an evaluation yields: ``round`` point fields and ``server_evaluations`` columns.
EVALUATION_FIELDS: tuple[str, ...] = (
    LOSS,
    ACCURACY,
    PRECISION,
    RECALL,
    F1,
    AUROC,
    *CONFUSION_FIELDS,
)
_EVALUATION_PREFIXES = ("val_", "test_", "server_", "eval_")
_EVALUATION_ALIASES = {"acc": ACCURACY, "auc": AUROC, "f1_score": F1}


def evaluation_field(metric_name: str) -> str | None:
    """The evaluation field a metric fills (``test_acc`` -> ``accuracy``, ``val_cm_tp`` ->
    ``cm_tp``), or None: its prefix (one of val_, test_, server_, eval_) and aliases dropped."""
    name = metric_name
    for prefix in _EVALUATION_PREFIXES:
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
            break
    name = _EVALUATION_ALIASES.get(name, name)
    return name if name in EVALUATION_FIELDS else None


_MEASUREMENT_LIST: tuple[Measurement, ...] = (
    Measurement(
        M_EPOCH,
        "End-of-epoch metrics; any user metric is accepted (normalised name).",
        fields=(*EPOCH_METRICS, EPOCH),
        open_fields=True,
    ),
    Measurement(
        M_BATCH,
        "Training batch metrics, sampled every N batches; any step-level user metric is "
        "accepted (``train_`` prefix removed, normalised name).",
        fields=(LOSS, ACC, RECALL, F1, SAMPLES_PER_S, STEP, EPOCH, BATCH_IDX),
        open_fields=True,
    ),
    Measurement(
        M_GRADIENT,
        "Global gradient norms, every N optimizer steps.",
        fields=(TOTAL_NORM, MAX_NORM, MIN_NORM, STEP),
    ),
    Measurement(
        M_GRADIENT_LAYER,
        "Per-layer gradient norm for a bounded, configurable number of layers.",
        tags=(LAYER,),
        fields=(NORM, STEP),
    ),
    Measurement(
        M_ROUND,
        "Federated round: server evaluation (source=server) or weighted client aggregate "
        "(source=aggregated).",
        tags=(SOURCE,),
        fields=(
            LOSS,
            ACCURACY,
            PRECISION,
            RECALL,
            F1,
            AUROC,
            *CONFUSION_FIELDS,
            NUM_CLIENTS,
            NUM_EXAMPLES,
            DURATION_S,
            TRAIN_LOSS,
        ),
        # the clients' weighted aggregate of their training metrics (train_loss...)
        field_prefixes=("train_",),
    ),
    Measurement(
        M_CLIENT_ROUND,
        "A federated client's reply in one round.",
        fields=(
            TRAIN_LOSS,
            VAL_LOSS,
            VAL_ACC,
            VAL_PRECISION,
            VAL_RECALL,
            VAL_F1,
            VAL_AUROC,
            VAL_CM_TP,
            VAL_CM_TN,
            VAL_CM_FP,
            VAL_CM_FN,
            NUM_EXAMPLES,
            DURATION_S,
        ),
        field_prefixes=("val_", "train_"),
    ),
    Measurement(
        M_EVENT,
        "Something that happened (Grafana annotations): the event tag names it.",
        tags=(EVENT,),
        fields=(TEXT, VALUE),
        string_fields=(TEXT,),
    ),
    Measurement(
        M_SYSTEM,
        "Process and device resources, where available.",
        tags=(HOST, RANK),
        fields=(CPU_PERCENT, RSS_BYTES, GPU_UTIL, GPU_MEM_BYTES),
    ),
)

MEASUREMENTS: Mapping[str, Measurement] = MappingProxyType({m.name: m for m in _MEASUREMENT_LIST})
"""Every measurement by name, in the order of docs/design.md's table."""


def describe() -> dict[str, object]:
    """The whole schema as JSON-able data (for dashboard and alert-rule generators)."""
    return {
        "base_tags": list(BASE_TAGS),
        "federated_tags": list(FEDERATED_TAGS),
        "never_tags": list(NEVER_TAGS),
        "modes": list(MODES),
        "sources": list(SOURCES),
        "events": list(EVENT_NAMES),
        "nonfinite_suffix": NONFINITE_SUFFIX,
        "measurements": [m.describe() for m in MEASUREMENTS.values()],
    }
