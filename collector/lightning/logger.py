"""``RunwatchLogger``: a Lightning ``Logger`` writing what ``self.log()`` produces to runwatch.

The logger is the one producer of every value ``self.log()`` makes, as Lightning's own loggers
are: it writes what Lightning hands to ``log_metrics``, when Lightning hands it over (every
``log_every_n_steps`` training steps, and at each epoch end), with Lightning's ``step``.

- training-step calls become ``batch`` points whose ``step`` is Lightning's (the one
  CSVLogger writes, and ``trainer.global_step`` before the optimizer step, as gradient
  points use it); ``BatchMetricsCallback`` adds the step output's ``loss`` (a logged loss
  wins), ``samples_per_s`` and ``batch_idx`` of the same batch to that point;
- epoch-level calls are merged per epoch into one ``epoch`` point (train and validation
  together); Lightning's ``_step``/``_epoch`` suffixes (added when a metric is logged both
  ways) are dropped, the measurement says which it was;
- whether a call is step- or epoch-level is Lightning's own state (its logger connector's
  current loop iteration) when a runwatch callback has attached the trainer, else read from
  the names;
- ``log_hyperparams`` -> the run configuration; ``finalize`` -> the run status;
  ``after_save_checkpoint`` -> a run artifact and a ``checkpoint`` event.

Only global rank zero writes. ``save()`` is a no-op: Lightning calls it after every
``log_metrics``, and the recorder already owns buffering and durability.
"""

from __future__ import annotations

import logging
import math
import weakref
from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from collector import schema
from collector.config import Settings
from collector.lightning._guard import guarded
from collector.lightning.session import RunSession
from collector.values import canonical_name

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from collector.store import Store

log = logging.getLogger("collector.lightning")

_BATCH = schema.MEASUREMENTS[schema.M_BATCH]
# Filled by the logger itself, never from a metric name.
_BATCH_OWN_FIELDS = frozenset((schema.STEP, schema.EPOCH))
_EVAL_PREFIXES = ("val", "valid", "test")
_LIGHTNING_STATUS = {"success": "completed", "failed": "failed", "finished": "completed"}
LEVEL_EPOCH = "epoch"
LEVEL_TRAIN_STEP = "train_step"
LEVEL_EVAL_STEP = "eval_step"


def split_level(name: str) -> tuple[str, str | None]:
    """``train_loss_step`` -> (``train_loss``, ``step``); a name without suffix -> (name, None)."""
    if name.endswith("_step"):
        return name[:-5], "step"
    if name.endswith("_epoch"):
        return name[:-6], "epoch"
    return name, None


class RunwatchLogger(Logger):
    """Lightning logger for one runwatch run (``version`` is the run_id)."""

    def __init__(
        self,
        experiment: str = "default",
        *,
        settings: Settings | None = None,
        session: RunSession | None = None,
        run_id: str | None = None,
        store: Store | None = None,
        source_path: str | None = None,
        prometheus: bool = True,
    ) -> None:
        super().__init__()
        self._batch_field_names: dict[str, str] = {}
        self._unfiled: set[str] = set()
        self._trainer: weakref.ref[pl.Trainer] | None = None
        self._batch_context: dict[str, float] | None = None
        self.metric_names: dict[str, str] = {}
        """Canonical metric name -> the name it was logged under, where they differ."""
        self.session = session or RunSession(
            experiment,
            settings=settings,
            run_id=run_id,
            store=store,
            source_path=source_path,
            prometheus=prometheus,
        )

    # -- identity ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.session.experiment

    @property
    def version(self) -> str:
        return self.session.run_id

    @property
    def save_dir(self) -> str | None:
        return None

    @property
    def experiment(self) -> RunSession:
        """The run session (started on first access on rank zero, as Lightning does at setup)."""
        self._start()
        return self.session

    @property
    def error_ledger(self) -> Any:
        return self.session.error_ledger

    @property
    def error_sink(self) -> Any:
        return self.session.error_sink

    @guarded
    def _start(self) -> None:
        self.session.start()

    def attach(self, trainer: pl.Trainer) -> None:
        """Let the logger read where the trainer is (runwatch callbacks call this at setup)."""
        self._trainer = weakref.ref(trainer)

    def set_batch_context(self, fields: Mapping[str, float]) -> None:
        """Fields ``BatchMetricsCallback`` read for the current training step (output loss,
        ``samples_per_s``, ``batch_idx``), for the batch point of that step."""
        self._batch_context = dict(fields)

    def take_batch_context(self) -> dict[str, float] | None:
        """The fields set for the step and not yet written (the callback writes them then)."""
        context, self._batch_context = self._batch_context, None
        return context

    # -- Logger API --------------------------------------------------------------------

    @rank_zero_only
    @guarded
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        session = self.session
        values = dict(metrics)
        epoch_value = values.pop("epoch", None)
        epoch = int(epoch_value) if _finite(epoch_value) else session.last_epoch
        if step is not None:
            session.last_step = max(session.last_step, int(step))
        if not values:
            return
        level = self._level(values)
        if level == LEVEL_EPOCH:
            if all(name.startswith("test") for name in values):
                epoch = session.last_epoch  # after fit, current_epoch is one past the last
            else:
                session.last_epoch = epoch
            session.epochs.add(epoch, self._epoch_fields(values))
            return
        if level == LEVEL_EVAL_STEP:
            self._warn_unfiled(values)
            return
        fields = {**(self.take_batch_context() or {}), **self._batch_fields(values)}
        if not fields:
            return
        fields["epoch"] = float(epoch)
        if step is not None:
            fields["step"] = float(step)
        session.record("batch", fields)

    def _epoch_fields(self, values: Mapping[str, float]) -> dict[str, float]:
        """Epoch-level metrics under their canonical names (``val/acc@1`` -> ``val_acc_1``),
        the name every backend and export uses; the logged name is kept in ``metric_names``."""
        fields: dict[str, float] = {}
        for name, value in values.items():
            raw = split_level(name)[0]
            canonical = canonical_name(raw)
            if canonical is None:
                self._warn_unnamed(name)
                continue
            if canonical != raw:
                self.metric_names.setdefault(canonical, raw)
            fields[canonical] = float(value)
        return fields

    def _warn_unnamed(self, name: str) -> None:
        if name not in self._unfiled:
            self._unfiled.add(name)
            log.warning("runwatch: metric %r has no letter or digit in its name; skipped", name)

    def _batch_fields(self, values: Mapping[str, float]) -> dict[str, float]:
        """Step-level metrics onto the ``batch`` schema: ``train_loss(_step)`` -> ``loss``."""
        fields: dict[str, float] = {}
        for name, value in values.items():
            field = self._batch_field_names.get(name)
            if field is None:
                field = self._batch_field_names[name] = _batch_field(name)
            if field:
                fields[field] = float(value)
            else:
                self._warn_unfiled((name,))
        return fields

    def _warn_unfiled(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self._unfiled:
                continue
            self._unfiled.add(name)
            log.warning(
                "runwatch: %r is an evaluation metric logged per step; batch points hold "
                "training steps only: log it with on_epoch=True to record it",
                canonical_name(split_level(name)[0]) or name,
            )

    def _level(self, metrics: Mapping[str, float]) -> str:
        """Epoch-level, training-step or evaluation-step call: Lightning's own state when the
        trainer is known (its logger connector iterates a loop only for step-level calls)."""
        trainer = self._trainer() if self._trainer is not None else None
        connector = getattr(trainer, "_logger_connector", None)
        first_iter = getattr(connector, "_first_loop_iter", _UNKNOWN)
        if trainer is not None and first_iter is not _UNKNOWN:
            if first_iter is None:
                return LEVEL_EPOCH
            return LEVEL_TRAIN_STEP if trainer.training else LEVEL_EVAL_STEP
        # The trainer is unknown (the logger used alone): decide by name.
        levels = {split_level(name)[1] for name in metrics}
        if "epoch" in levels:
            return LEVEL_EPOCH
        if "step" in levels:
            return LEVEL_TRAIN_STEP
        if all(name.startswith(_EVAL_PREFIXES) for name in metrics):
            return LEVEL_EPOCH
        return LEVEL_TRAIN_STEP

    @rank_zero_only
    @guarded
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        mapping = vars(params) if isinstance(params, Namespace) else dict(params)
        self.session.save_hyperparams(mapping)

    def save(self) -> None:
        """Nothing to do: Lightning calls this after every ``log_metrics``."""

    @rank_zero_only
    @guarded
    def finalize(self, status: str) -> None:
        session = self.session
        if status == "success" and session.stages_tracked and not session.fit_started:
            session.flush()  # a validate/test run before fit: the run goes on
            return
        session.finish(_LIGHTNING_STATUS.get(status, "completed"))

    @rank_zero_only
    @guarded
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        path = _saved_checkpoint_path(checkpoint_callback)
        if not path:
            return
        score = checkpoint_callback.current_score
        metric_value = float(score) if score is not None else None
        monitor = checkpoint_callback.monitor
        self.session.add_artifact(path, metric_name=monitor, metric_value=metric_value)
        text = path if monitor is None else f"{path} ({monitor}={metric_value})"
        value = metric_value if metric_value is not None and math.isfinite(metric_value) else 1.0
        self.session.event(schema.EVENT_CHECKPOINT, text=text, value=value)


def _batch_field(name: str) -> str:
    """The batch field a step-level metric name maps to (``train_loss(_step)`` -> ``loss``),
    or "" for an evaluation metric logged per step: batch points are training batches."""
    base = canonical_name(split_level(name)[0]) or ""
    if base.startswith(_EVAL_PREFIXES):
        return ""
    candidate = base.removeprefix("train_")
    if candidate and candidate not in _BATCH_OWN_FIELDS and _BATCH.accepts_field(candidate):
        return candidate
    return ""


def _saved_checkpoint_path(callback: ModelCheckpoint) -> str:
    # The file written last; ModelCheckpoint keeps it in a private attribute since 1.x.
    path = getattr(callback, "_last_checkpoint_saved", "") or ""
    return str(path or callback.last_model_path or callback.best_model_path or "")


_UNKNOWN = object()


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)
