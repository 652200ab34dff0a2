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
- ``log_hyperparams`` -> the run configuration; ``finalize`` -> the run status (the last
  stage's: Lightning calls ``log_graph`` as each stage begins);
  ``after_save_checkpoint`` -> a run artifact and a ``checkpoint`` event;
- a value that is not a number is dropped alone, with one warning per metric name;
- ``trainer.validate()`` outside fit is filed like ``trainer.test()``: under the last trained
  epoch; before any fit its values stand for epoch 0 until fit's own replace them.

Like Lightning's own loggers it has a directory (``save_dir`` = ``log_dir``:
``<RUNWATCH_HOME>/runs/<run_id>``, where ``trainer.log_dir`` points, LightningCLI saves its
config and default checkpoints go), pickles and deep-copies (its configuration travels, the
live resources reopen on the other side: ``ddp_spawn``), and ``experiment`` follows the
rank-zero convention. Only global rank zero writes. ``save()`` is a no-op: Lightning calls it
after every ``log_metrics``, and the recorder already owns buffering and durability.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from collector import schema
from collector.config import Settings
from collector.errors import RunIdInUseError
from collector.lightning._guard import guarded, report
from collector.lightning.session import RunSession
from collector.run import params_mapping
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
        experiment: str | None = "default",
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
        self._not_numbers: set[str] = set()
        self._dir_tried = False
        self._checkpoints: set[str] = set()
        """Checkpoint files recorded as artifacts (their rows go when the files do)."""
        self._trainer: weakref.ref[pl.Trainer] | None = None
        self.batch_context: dict[str, float] | None = None
        """The fields ``set_batch_context`` set for the current training step, while they wait
        for its batch point (None once taken); ``BatchMetricsCallback`` sets it and
        ``step_output`` directly, its own dict (a method's frame costs ~1 µs a step)."""
        self.step_output: object = None
        """What ``training_step`` returned for that step (its loss read only if none logged)."""
        self._put: Callable[[str, dict[str, float], None], bool] | None = None
        """The running recorder's compiled ``put``, once a batch point went through it."""
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
    def save_dir(self) -> str:
        """This run's directory, ``<RUNWATCH_HOME>/runs/<run_id>`` (created on first use):
        ``trainer.log_dir``, LightningCLI's saved config, default checkpoints."""
        directory = self.session.settings.home / "runs" / self.session.run_id
        if not self._dir_tried:
            self._dir_tried = True
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only home: whoever writes there will say so
                log.warning("runwatch: cannot create the run's directory %s: %s", directory, exc)
        return str(directory)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    def root_dir(self) -> str:
        """Where every run's directory is."""
        return str(Path(self.save_dir).parent)

    @property
    @rank_zero_experiment
    def experiment(self) -> RunSession:
        """The run session (started on first access on rank zero, as Lightning does at setup);
        Lightning's dummy experiment on other ranks."""
        self._start()
        return self.session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trainer"] = None  # a weak reference; the copy's trainer attaches again
        state["_put"] = None  # the recorder's queue; the copy finds its session's own
        return state

    @property
    def error_ledger(self) -> Any:
        return self.session.error_ledger

    @property
    def error_sink(self) -> Any:
        return self.session.error_sink

    @guarded
    def _start(self) -> None:
        self.session.start()

    @rank_zero_only
    @guarded
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Lightning calls this as each stage (fit, validate, test) begins: the run's status
        will be that stage's, and the trainer is known even without runwatch's callbacks."""
        self.session.begin_stage()
        trainer = getattr(model, "_trainer", None)
        if trainer is not None:
            self.attach(trainer)
            if self._stage() == TrainerFn.FITTING:
                self.session.fit_started = True

    def attach(self, trainer: pl.Trainer) -> None:
        """Let the logger read where the trainer is (runwatch callbacks call this at setup)."""
        self._trainer = weakref.ref(trainer)

    def set_batch_context(self, fields: Mapping[str, float], step_output: object = None) -> None:
        """Fields ``BatchMetricsCallback`` read for the current training step
        (``samples_per_s``, ``batch_idx``), for the batch point of that step, and what
        ``training_step`` returned, whose loss is read only if the step's metrics log none."""
        self.batch_context = dict(fields)
        self.step_output = step_output

    def take_batch_context(self, *, loss_logged: bool = False) -> dict[str, float] | None:
        """The fields set for the step and not yet written (the callback writes them then),
        with the output loss unless ``loss_logged``."""
        context, self.batch_context = self.batch_context, None
        output, self.step_output = self.step_output, None
        if context is not None and output is not None and not loss_logged:
            value = step_output_loss(output)  # the step's one host transfer, if none was logged
            if value is not None:
                context["loss"] = value
        return context

    # -- Logger API --------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Guarded as a hook is (``guarded``), inline: Lightning calls this at every logged
        # step, where the wrapper's frame would cost about a microsecond.
        try:
            # Lightning's @rank_zero_only, read here: its wrapper's call costs as much
            if getattr(rank_zero_only, "rank", 0) != 0:
                return
            trainer = self._trainer() if self._trainer is not None else None
            if (
                step is not None
                and trainer is not None
                and getattr(getattr(trainer, "_logger_connector", None), "_first_loop_iter", None)
                is not None
                and trainer.state.stage is _TRAINING
            ):
                # The call of every logged training step (what `_level` tells, inline), in one
                # pass: Lightning's floats under names met before (their fields known) and its
                # int epoch. Anything else, the first call included, takes the general path,
                # which checks and warns.
                known = self._batch_field_names
                logged: dict[str, float] = {}
                epoch: int | None = None
                for name, value in metrics.items():
                    field = known.get(name)
                    if field and type(value) is float:
                        logged[field] = value
                    elif name == "epoch" and type(value) is int:
                        epoch = value
                    else:
                        break
                else:
                    if logged and epoch is not None:
                        session = self.session
                        session.last_step = max(session.last_step, int(step))
                        self._write_batch(logged, epoch, step)
                        return
            self._log_any(metrics, step)
        except RunIdInUseError:
            raise
        except Exception as exc:
            report(self, _LOG_METRICS, exc)

    def _log_any(self, metrics: Mapping[str, Any], step: int | None) -> None:
        session = self.session
        values = self._numbers(metrics)
        epoch_value = values.pop("epoch", None)
        epoch = int(epoch_value) if _finite(epoch_value) else session.last_epoch
        if step is not None:
            session.last_step = max(session.last_step, int(step))
        if not values:
            return
        level = self._level(values)
        if level == LEVEL_EPOCH:
            stage = self._stage()
            outside_fit = stage in (TrainerFn.VALIDATING, TrainerFn.TESTING) or (
                stage is None and all(name.startswith("test") for name in values)
            )
            if outside_fit:
                epoch = session.last_epoch  # after fit, current_epoch is one past the last
            else:
                session.last_epoch = epoch
            provisional = stage == TrainerFn.VALIDATING and not session.fit_started
            session.epochs.add(epoch, self._epoch_fields(values), provisional=provisional)
            return
        if level == LEVEL_EVAL_STEP:
            self._warn_unfiled(values)
            return
        self._write_batch(self._batch_fields(values), epoch, step)

    def _write_batch(self, logged: dict[str, float], epoch: int, step: int | None) -> None:
        """The step's batch point: the callback's own dict for this step, taken over, with
        the logged fields (a logged loss wins)."""
        # take_batch_context, inline (its frame costs ~1 µs a step)
        fields, self.batch_context = self.batch_context, None
        output, self.step_output = self.step_output, None
        if fields is None:
            fields = logged
        else:
            if output is not None and "loss" not in logged:
                loss = step_output_loss(output)  # the step's one host transfer
                if loss is not None:
                    fields["loss"] = loss
            fields.update(logged)
        if not fields:
            return
        fields["epoch"] = float(epoch)
        if step is not None:
            fields["step"] = float(step)
        put = self._put
        if put is None or not put("batch", fields, None):
            self.session.record("batch", fields)  # starts, reopens or drops as the run is
            recorder = self.session.recorder
            self._put = recorder.compiled_put if recorder is not None else None

    def _numbers(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The values that are numbers (a one-element tensor or array counts); each other one
        is dropped with one warning per metric name, the rest of the call is kept."""
        numbers: dict[str, float] = {}
        for name, value in metrics.items():
            # Lightning hands over Python floats: no further look needed
            number = value if type(value) is float else _number(value)
            if number is not None:
                numbers[name] = number
            elif name not in self._not_numbers:
                self._not_numbers.add(name)
                log.warning(
                    "runwatch: metric %r = %.80r is not a number; dropped (the other metrics "
                    "of the call are kept; said once per name)",
                    name,
                    value,
                )
        return numbers

    def _stage(self) -> TrainerFn | None:
        """What the trainer is doing (fit, validate, test), when it is known."""
        trainer = self._trainer() if self._trainer is not None else None
        state = getattr(trainer, "state", None)
        return getattr(state, "fn", None)

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
            # `is`: Lightning's enum compares with `==` in two Python calls, ~1 µs each in a step
            return LEVEL_TRAIN_STEP if trainer.state.stage is _TRAINING else LEVEL_EVAL_STEP
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
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """A mapping, a ``Namespace`` or a dataclass (stored as its fields); anything else is
        said in one warning and the run starts without it."""
        mapping = params_mapping(params)
        if mapping is None:
            log.warning(
                "runwatch: hyperparameters of type %s not stored (give a mapping, a Namespace "
                "or a dataclass)",
                type(params).__name__,
            )
            self._start()
            return
        self.session.save_hyperparams(mapping)

    def save(self) -> None:
        """Nothing to do: Lightning calls this after every ``log_metrics``."""

    @rank_zero_only
    @guarded
    def finalize(self, status: str) -> None:
        self._forget_deleted_checkpoints()
        session = self.session
        if status == "success" and not session.fit_started:
            if session.stages_tracked:
                session.flush()  # a validate/test run before fit: the run goes on
                return
            # The logger alone cannot know whether a fit follows: the run ends now, and a
            # validate()'s provisional epoch-0 values wait for that fit or the process's end.
            session.hold_provisional_epochs()
        session.finish(_LIGHTNING_STATUS.get(status, "completed"))

    def _forget_deleted_checkpoints(self) -> None:
        """ModelCheckpoint deletes the files that fall out of its top k after saving the
        next one: their artifact rows go too."""
        gone = _gone(self._checkpoints)
        if gone:
            self._checkpoints.difference_update(gone)
            self.session.remove_artifacts(gone)

    @rank_zero_only
    @guarded
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self._forget_deleted_checkpoints()
        path = _saved_checkpoint_path(checkpoint_callback)
        if not path:
            return
        score = checkpoint_callback.current_score
        metric_value = float(score) if score is not None else None
        monitor = checkpoint_callback.monitor
        trainer = self._trainer() if self._trainer is not None else None
        self.session.add_artifact(
            path,
            metric_name=monitor,
            metric_value=metric_value,
            # the step and epoch in Lightning's file name (epoch=0-step=4.ckpt)
            step=None if trainer is None else trainer.global_step,
            epoch=None if trainer is None else trainer.current_epoch,
        )
        self._checkpoints.add(path)
        text = path if monitor is None else f"{path} ({monitor}={metric_value})"
        value = metric_value if metric_value is not None and math.isfinite(metric_value) else 1.0
        self.session.event(schema.EVENT_CHECKPOINT, text=text, value=value)


def _gone(paths: Iterable[str]) -> list[str]:
    return sorted(p for p in paths if not os.path.exists(p))


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
_TRAINING = RunningStage.TRAINING
_LOG_METRICS = "RunwatchLogger.log_metrics"  # where its errors are counted, as guarded's


def _number(value: object) -> float | None:
    """``value`` as a float when it is a number (bool excluded) or holds exactly one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if callable(getattr(value, "item", None)) and getattr(value, "numel", lambda: 1)() == 1:
        try:
            item = value.item()  # type: ignore[attr-defined]
        except (TypeError, ValueError, RuntimeError):
            return None
        return float(item) if isinstance(item, int | float) and not isinstance(item, bool) else None
    return None


def step_output_loss(step_output: object) -> float | None:
    """The loss ``training_step`` returned (the output itself or its ``"loss"`` entry), when
    it holds exactly one number (a tensor's is read: on an accelerator, a host transfer)."""
    if isinstance(step_output, Mapping):
        step_output = step_output.get("loss")
    return _number(step_output)


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)
