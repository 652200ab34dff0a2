"""Lightning callbacks (metrics, events, checkpoints, exports), writing through a shared :class:`RunSession`.

Each callback works alone (it finds the session of a ``RunwatchLogger`` among the trainer's
loggers, or opens its own run); :class:`RunwatchCallback` bundles several into one Lightning
callback, because Lightning pays a few microseconds per callback per hook per step.

Rules every hook follows: rank zero only; exceptions are logged once and counted, never
raised (``guarded``); ``.item()``/``.tolist()`` only on the steps a callback samples, so on a
GPU no unsampled step waits for the device.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import socket
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import CodeType, SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from collector.lightning._guard import dispatcher, guarded, report
from collector.lightning.gradients import DEFAULT_MAX_LAYERS, ParameterNorms
from collector.lightning.logger import RunwatchLogger, step_output_loss
from collector.lightning.session import RunSession
from collector.run import Heartbeat
from collector.store.values import storable_text
from collector.values import canonical_name

log = logging.getLogger("collector.lightning")

DEFAULT_BATCH_EVERY_N = 10
DEFAULT_GRADIENT_EVERY_N = 20
DEFAULT_SYSTEM_INTERVAL_S = 10.0
DEFAULT_MONITOR = "val_recall"
DEFAULT_MONITOR_MODE = "max"

# Sessions opened by callbacks used without a RunwatchLogger, one per trainer.
_OWNED_SESSIONS: weakref.WeakKeyDictionary[pl.Trainer, RunSession] = weakref.WeakKeyDictionary()


def session_for(trainer: pl.Trainer) -> tuple[RunSession, bool]:
    """The session of the trainer's RunwatchLogger, else one opened for it: (session, owned)."""
    for logger in trainer.loggers:
        if isinstance(logger, RunwatchLogger):
            logger.attach(trainer)
            return logger.session, False
    session = _OWNED_SESSIONS.get(trainer)
    if session is None:
        session = _OWNED_SESSIONS[trainer] = RunSession()
    return session, True


class SessionCallback(Callback):
    """Base: resolves the session at ``setup`` and acts only on global rank zero."""

    def __init__(self, session: RunSession | None = None) -> None:
        self._session = session
        self._owns_session = False
        self._session_started = False
        self.enabled = False

    @property
    def session(self) -> RunSession:
        if self._session is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a trainer yet")
        return self._session

    @property
    def error_ledger(self) -> Any:
        return self._session.error_ledger if self._session is not None else None

    @property
    def error_sink(self) -> Any:
        return self._session.error_sink if self._session is not None else None

    @guarded
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._session is None:
            self._session, self._owns_session = session_for(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, RunwatchLogger) and logger.session is self._session:
                logger.attach(trainer)
        started = self.session.start().active
        # A finished run still takes later stages' metrics (trainer.test after fit).
        self.enabled = trainer.is_global_zero and (started or self.session.finished)
        if started and not self._session_started:
            self._session_started = True
            self.on_session_start(trainer, pl_module)

    def on_session_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called once on rank zero after the session started (override)."""

    @guarded
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._owns_session and self._session is not None:
            self._session.finish("completed")

    @guarded
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._owns_session and self._session is not None:
            self._session.finish("failed")


# -- helpers ---------------------------------------------------------------------------


def scalar_metrics(metrics: Mapping[str, Any], keep: Callable[[str], bool]) -> dict[str, float]:
    """Floats of the selected tensor/number metrics (one host transfer per metric)."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if not keep(name):
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            values[name] = float(value.detach().reshape(()).item())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = float(value)
    return values


_SEQUENCES = (list, tuple)  # a tuple of types: ``list | tuple`` is a new object at each call

_MAX_BATCH_NESTING = 16
"""How deep ``batch_size_of`` looks for the first tensor (a batch that nests itself ends)."""


def batch_size_of(batch: Any) -> int:
    """Samples in a batch, read from tensor shapes (never a device sync): the first tensor
    found by taking the first item of sequences and mappings."""
    item = batch
    for _ in range(_MAX_BATCH_NESTING):  # a loop, not recursion: every step calls this
        if isinstance(item, torch.Tensor):
            shape = item.shape  # one call into torch: in a training step each costs microseconds
            return int(shape[0]) if shape else 1
        if isinstance(item, _SEQUENCES) and item:
            item = item[0]
        elif isinstance(item, Mapping) and item:
            item = next(iter(item.values()))
        else:
            return 0
    return 0


def best_epoch(
    history: Sequence[Mapping[str, float]], monitor: str, mode: str = "max"
) -> tuple[int, float] | None:
    """(epoch, value) of the best finite ``monitor`` value in the history."""
    candidates = [
        (int(row["epoch"]), row[monitor])
        for row in history
        if monitor in row and math.isfinite(row[monitor])
    ]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda item: item[1])


# -- epoch metrics -----------------------------------------------------------------------


class EpochMetricsCallback(SessionCallback):
    """Train and validation metrics merged into one ``epoch`` point per epoch; best-metric
    tracking; bulk persistence of the epoch history at fit end (``persist_epoch_metrics``), so
    the store can compute final confusion-matrix stats when the run completes."""

    def __init__(
        self,
        session: RunSession | None = None,
        *,
        monitor: str = DEFAULT_MONITOR,
        mode: str = DEFAULT_MONITOR_MODE,
        persist: bool = True,
    ) -> None:
        super().__init__(session)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = canonical_name(monitor) or monitor
        self.mode = mode
        self.persist = persist
        self.best_metrics: dict[str, float] = {}
        self._persisted = False

    # The values themselves reach the epoch point through RunwatchLogger.log_metrics only
    # (Lightning hands them over after these hooks); this callback tracks the best values and
    # persists the history in the store.
    @guarded
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self.session.epochs.flush()
            self._update_best()

    def _update_best(self) -> None:
        history = self.session.epochs.history
        for name, mode in ((self.monitor, self.mode), ("val_loss", "min")):
            found = best_epoch(history, name, mode)
            if found is not None:
                self.best_metrics[name] = found[1]
                if name == self.monitor:
                    self.best_metrics["best_epoch"] = float(found[0])

    @guarded
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self._persist()

    @guarded
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        test = scalar_metrics(trainer.callback_metrics, lambda n: n.startswith("test"))
        if not test:
            return
        # Test results belong to the last trained epoch (current_epoch is one past it). The
        # epoch point gets them from the logger; the store from here (fit's history is
        # already persisted).
        epoch = self.session.last_epoch
        store = self.session.store
        if store is not None and self.persist:
            store.persist_epoch_metrics(self.session.run_id, [{"epoch": epoch, **test}])

    @guarded
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.enabled:
            self._persist()
        super().on_exception(trainer, pl_module, exception)

    def _persist(self) -> None:
        self.session.epochs.flush()
        self._update_best()
        store = self.session.store
        if self._persisted or store is None or not self.persist:
            return
        self._persisted = True
        history = self.session.epochs.history
        if history:
            store.persist_epoch_metrics(self.session.run_id, history)


# -- batch metrics -----------------------------------------------------------------------


class BatchMetricsCallback(SessionCallback):
    """The training-step side of ``batch`` points: on the steps Lightning logs (every
    ``log_every_n_steps``, Lightning's own rule and step), the step's ``loss`` from
    ``training_step``'s output, ``samples_per_s`` (over the batches since the previous point)
    and ``batch_idx``.

    Each step has one batch point, written once: ``RunwatchLogger`` writes it when Lightning
    hands it values logged with ``self.log()`` (they win over the output's loss) and takes
    these fields into it; when nothing was logged at that step, or there is no
    ``RunwatchLogger``, this callback writes the point. ``every_n_batches`` is kept for
    compatibility; the rhythm is the trainer's ``log_every_n_steps``.

    With ``step_timing``, it also does ``StepTimerCallback``'s work for the session's
    Prometheus exporter, from the same readings of each batch (its size, its start and end):
    the bundle's one part per batch hook instead of two, and one look at the batch.
    """

    def __init__(
        self,
        session: RunSession | None = None,
        *,
        every_n_batches: int = DEFAULT_BATCH_EVERY_N,
        step_timing: bool = False,
    ) -> None:
        super().__init__(session)
        if every_n_batches < 1:
            raise ValueError("every_n_batches must be >= 1")
        self.every_n_batches = every_n_batches
        self.step_timing = step_timing
        self._sink: RunwatchLogger | None = None
        self._window_start = time.perf_counter()
        self._samples_in_window = 0
        self._steps: FitSteps | None = None
        self._epoch = 0.0
        self._clock: _StepClock | None = None

    def on_session_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink = next(
            (
                logger
                for logger in trainer.loggers
                if isinstance(logger, RunwatchLogger) and logger.session is self.session
            ),
            None,
        )
        if self.step_timing:
            self._clock = _StepClock.of(self.session)

    @guarded
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps = FitSteps(trainer)
        if self._clock is not None:
            self._clock.tracker = self._steps.step_tracker

    @guarded
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_untaken()
        self._steps = None
        if self._clock is not None:
            self._clock.tracker = None

    @guarded
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start = time.perf_counter()
        self._samples_in_window = 0
        self._epoch = float(trainer.current_epoch)
        if self._clock is not None and self.enabled:
            self._clock.epoch_started(trainer)

    @guarded
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        sink = self._sink
        if sink is not None and sink.batch_context is not None:  # Lightning logged nothing
            self._write_untaken()
        if self.enabled:  # read here, while the batch the loader just made is in the caches
            samples = batch_size_of(batch)
            self._samples_in_window += samples
            clock = self._clock
            if clock is not None:
                clock.samples = samples
                clock.started = time.perf_counter()

    @guarded
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.enabled:
            return
        clock = self._clock
        if clock is not None:  # as StepTimerCallback's hook does (``_StepClock``)
            tracker, ended, now = clock.tracker, clock.steps.ended, time.perf_counter()
            taken = tracker.completed if tracker is not None else trainer.global_step
            ended.append((taken, now - clock.started, clock.samples, now))
            if len(ended) > clock.steps.max_backlog:
                clock.steps.bound_backlog()
        steps = self._steps
        if steps is None:
            if not lightning_logs_this_step(trainer):
                return
            step, epoch = lightning_step(trainer), float(trainer.current_epoch)
        else:
            logged = steps.logged_step(trainer)
            if logged is None:
                return
            step, epoch = logged, self._epoch
        fields: dict[str, float] = {}
        sink = self._sink
        if sink is None:
            loss = step_output_loss(outputs)  # the step's one host transfer
            if loss is not None:
                fields["loss"] = loss
        now = time.perf_counter()
        elapsed = now - self._window_start
        if elapsed > 0 and self._samples_in_window:
            fields["samples_per_s"] = self._samples_in_window / elapsed
        self._window_start, self._samples_in_window = now, 0
        fields["batch_idx"] = float(batch_idx)
        fields["epoch"] = epoch
        fields["step"] = float(step)
        if sink is None:
            self.session.record("batch", fields)
        else:  # Lightning logs next: the logger takes these into its point, and the output's
            # loss only if the step logged none (looked at there: most steps never need it);
            # ``set_batch_context``, inline: the dict is this call's own
            sink.batch_context, sink.step_output = fields, outputs

    @guarded
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_untaken()

    def _write_untaken(self) -> None:
        """The last offered fields, as the step's point, if the logger wrote none."""
        if self._sink is None:
            return
        fields = self._sink.take_batch_context()
        if fields:
            self.session.record("batch", fields)


def lightning_step(trainer: pl.Trainer) -> int:
    """The step Lightning's loggers get for the current training batch (CSVLogger's ``step``):
    optimizer steps taken before this batch's, i.e. ``trainer.global_step`` as
    ``on_before_optimizer_step`` sees it."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def lightning_logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning hands this training batch's logged values to its loggers (the rule of
    its logger connector, read at ``on_train_batch_end``)."""
    if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
        return False
    fast_dev_run = getattr(trainer, "fast_dev_run", False)
    return bool(trainer._logger_connector.should_update_logs or fast_dev_run)


class FitSteps:
    """Lightning's step counters for one fit, read without its property chains (a hook that
    runs every step pays microseconds for ``trainer.global_step`` or the logging rule).

    Built at ``on_train_start`` (after a checkpoint is restored); the counters it holds are
    Lightning's own progress trackers, updated in place. What it cannot read for certain
    (gradient accumulation, ``fast_dev_run``, a tracker that does not match) it asks the
    trainer, as before.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        self._epoch_loop = epoch_loop
        module = trainer.lightning_module
        tracker: Any
        if module is None or module.automatic_optimization:
            tracker = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            tracker = epoch_loop.manual_optimization.optim_step_progress.total
        self.step_tracker: Any = tracker if tracker.completed == trainer.global_step else None
        """Lightning's tracker whose ``completed`` is ``trainer.global_step``; None where
        it does not match."""
        every = getattr(trainer, "log_every_n_steps", None)
        self._every = every if isinstance(every, int) else 0
        self._simple = (
            isinstance(every, int)
            and trainer.accumulate_grad_batches == 1
            and not getattr(trainer, "fast_dev_run", False)
        )

    def global_step(self, trainer: pl.Trainer) -> int:
        """``trainer.global_step``."""
        tracker = self.step_tracker
        return int(tracker.completed) if tracker is not None else trainer.global_step

    def logged_step(self, trainer: pl.Trainer) -> int | None:
        """``lightning_step(trainer)`` where ``lightning_logs_this_step(trainer)``, else None
        (one call: the batch callback asks at every batch end)."""
        stepped = self._epoch_loop._batches_that_stepped
        if not self._simple:
            return int(stepped) if lightning_logs_this_step(trainer) else None
        every = self._every
        if every and ((stepped + 1) % every == 0 or trainer.should_stop):
            return int(stepped)
        return None


# -- gradients ---------------------------------------------------------------------------


class GradientMonitorCallback(SessionCallback):
    """Every N optimizer steps: ``gradient`` (total/max/min norm) and ``gradient_layer``
    points (the first ``max_layers`` parameters), from fused foreach norms."""

    def __init__(
        self,
        session: RunSession | None = None,
        *,
        every_n_steps: int = DEFAULT_GRADIENT_EVERY_N,
        max_layers: int = DEFAULT_MAX_LAYERS,
    ) -> None:
        super().__init__(session)
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every_n_steps = every_n_steps
        self.max_layers = max_layers
        self._norms: ParameterNorms | None = None
        self._tracker: Any = None  # FitSteps.step_tracker during a fit
        self._queue: Callable[[float, Callable[..., bool]], object] | None = None
        self._put_series: Callable[..., bool] | None = None

    @guarded
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Walking the module tree on every sampled step costs more than the norms themselves.
        self._norms = ParameterNorms(
            (n, p) for n, p in pl_module.named_parameters() if p.requires_grad
        )
        self._tracker = FitSteps(trainer).step_tracker
        self._queue = self._norms.point_queue(self.max_layers)
        self._refresh_put_series()

    @guarded
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracker = None
        self._queue = self._put_series = None

    def _refresh_put_series(self) -> None:
        """The running recorder's compiled ``put_series`` (None where it has none): taken
        again whenever it declines, as the run may have reopened its recorder."""
        recorder = self._session.recorder if self._session is not None else None
        self._put_series = recorder.compiled_put_series if recorder is not None else None

    @guarded
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        session = self._session
        if session is None or not self.enabled:
            return
        tracker = self._tracker  # FitSteps.global_step, inline
        global_step = tracker.completed if tracker is not None else trainer.global_step
        if global_step % self.every_n_steps:
            return
        norms = self._norms
        if norms is None:  # on_train_start did not run
            norms = ParameterNorms(pl_module.named_parameters())
        step = float(global_step)
        queue, put_series = self._queue, self._put_series
        if queue is not None and put_series is not None:
            if queue(step, put_series) is True:
                return  # norms, summary and points made in C: each Python call costs ~1 µs
            self._refresh_put_series()
        found = norms.measure()
        if found is None:
            return
        names, values, total, largest, smallest = found
        layers = max(0, min(self.max_layers, len(values)))
        # One call queues the step's points, as plain values (no function to call later, no
        # list): each entry waiting in the recorder's queue is one object Python's collector
        # tracks, nothing under it, so a long fit promotes a third as many into the
        # collector's oldest generation, whose full collections take ~0.25 s of the training
        # thread (docs/design.md). Python calls are what this hook costs beyond the norms.
        summary = {"total_norm": total, "max_norm": largest, "min_norm": smallest, "step": step}
        session.record_series(
            "gradient_layer",
            "norm",
            values[:layers],
            "layer",
            names[:layers],
            {"step": step},
            head=("gradient", summary),
        )


# -- learning rate -------------------------------------------------------------------------


class LearningRateCallback(SessionCallback):
    """The learning rate at each epoch start: ``lr`` in the epoch point and the live gauge
    (``lr_<optimizer>_<group>`` for further optimizers and parameter groups)."""

    @guarded
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        rates: dict[str, float] = {}
        for opt_index, optimizer in enumerate(trainer.optimizers):
            for group_index, group in enumerate(optimizer.param_groups):
                name = "lr" if opt_index == group_index == 0 else f"lr_{opt_index}_{group_index}"
                rates[name] = float(group["lr"])
        if not rates:
            return
        self.session.epochs.add(trainer.current_epoch, rates)
        exporter = self.session.exporter
        if exporter is not None and "lr" in rates:
            exporter.learning_rate.set(rates["lr"])


# -- events --------------------------------------------------------------------------------


def _early_stopped(callback: EarlyStopping) -> bool:
    """Whether EarlyStopping stopped the fit, in epoch 0 too (where ``stopped_epoch`` is 0,
    as when it never stopped: Lightning >= 2.5 says so in ``stopping_reason``)."""
    reason = getattr(callback, "stopping_reason", None)
    if reason is not None:
        return bool(reason.name != "NOT_STOPPED")
    return callback.stopped_epoch > 0


class TrainingEventsCallback(SessionCallback):
    """``training_start``, ``early_stopping`` and ``training_end`` events (Grafana annotations)."""

    def __init__(
        self,
        session: RunSession | None = None,
        *,
        monitor: str = DEFAULT_MONITOR,
        mode: str = DEFAULT_MONITOR_MODE,
    ) -> None:
        super().__init__(session)
        self.monitor = canonical_name(monitor) or monitor
        self.mode = mode
        self._early_stop_reported = False
        self._ended = False
        self._started_at = time.time()

    @guarded
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        self._started_at = time.time()
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        text = (
            f"{self.session.experiment} ({self.session.mode}) run {self.session.run_id}: "
            f"max_epochs={max_epochs}"
        )
        self.session.event("training_start", text=text, value=float(max_epochs))

    @guarded
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self._report_early_stopping(trainer)

    @guarded
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self._report_early_stopping(trainer)

    def _report_early_stopping(self, trainer: pl.Trainer) -> None:
        if self._early_stop_reported:
            return
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, EarlyStopping) and _early_stopped(callback):
                self._early_stop_reported = True
                best = callback.best_score
                value = float(best) if best is not None else math.nan
                reason = getattr(callback, "stopping_reason_message", None) or (
                    f"{callback.monitor} did not improve for {callback.patience} checks"
                )
                text = f"stopped at epoch {callback.stopped_epoch}: {reason} (best {value:.4g})"
                self.session.event("early_stopping", text=text, value=value)
                return

    @guarded
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self._end("completed")

    @guarded
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.enabled:
            self._end("failed", f"{type(exception).__name__}: {exception}")
        super().on_exception(trainer, pl_module, exception)

    def _end(self, status: str, reason: str = "") -> None:
        if self._ended:
            return
        self._ended = True
        self.session.epochs.flush()
        duration = time.time() - self._started_at
        parts = [f"{status} after {duration:.1f} s"]
        found = best_epoch(self.session.epochs.history, self.monitor, self.mode)
        if found is not None:
            parts.append(f"best {self.monitor} {found[1]:.4g} at epoch {found[0]}")
        if reason:
            parts.append(reason)
        self.session.event("training_end", text="; ".join(parts), value=duration)


# -- files ---------------------------------------------------------------------------------


class MetricsFileExporter(SessionCallback):
    """At fit end, the epoch history as CSV and a JSON document with run metadata, so a
    run can be read without any server. Default directory: ``<RUNWATCH_HOME>/exports/<run_id>/``."""

    def __init__(
        self,
        session: RunSession | None = None,
        *,
        directory: Path | str | None = None,
        monitor: str = DEFAULT_MONITOR,
        mode: str = DEFAULT_MONITOR_MODE,
    ) -> None:
        super().__init__(session)
        self.directory = Path(directory) if directory is not None else None
        self.monitor = canonical_name(monitor) or monitor
        self.mode = mode
        self.written: list[Path] = []
        self._started_at = time.time()

    @guarded
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started_at = time.time()

    @guarded
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        try:
            self.export(trainer)
        except OSError as exc:  # a full or read-only disk: one line, not a traceback
            log.warning("runwatch: metrics files not written: %s", exc)

    def export(self, trainer: pl.Trainer) -> list[Path]:
        session = self.session
        session.epochs.flush()
        history = session.epochs.history
        directory = self.directory or session.settings.home / "exports" / session.run_id
        directory.mkdir(parents=True, exist_ok=True)
        csv_path = directory / "metrics.csv"
        json_path = directory / "metrics.json"
        _write_csv(csv_path, history)
        best = best_epoch(history, self.monitor, self.mode)
        document = {
            "run_id": session.run_id,
            "experiment": session.experiment,
            "mode": session.mode,
            "total_epochs": len(history),
            "stopped_epoch": _last_trained_epoch(trainer, history),
            "global_step": trainer.global_step,
            "monitor": self.monitor,
            "best_epoch": best[0] if best else None,
            f"best_{self.monitor}": best[1] if best else None,
            "training_time_seconds": round(time.time() - self._started_at, 3),
            "metrics_history": [_json_row(row) for row in history],
            "metric_names": _logged_names(trainer, session),
        }
        json_path.write_text(json.dumps(document, indent=2, allow_nan=False), encoding="utf-8")
        self.written = [csv_path, json_path]
        return self.written


def _last_trained_epoch(trainer: pl.Trainer, history: Sequence[Mapping[str, float]]) -> int:
    """The last epoch that trained (after fit, ``current_epoch`` is one past it)."""
    if history:
        return int(max(row["epoch"] for row in history))
    return max(trainer.current_epoch - 1, 0)


def _logged_names(trainer: pl.Trainer, session: RunSession) -> dict[str, str]:
    """Canonical metric name -> the name the module logged, where they differ."""
    names: dict[str, str] = {}
    for logger in trainer.loggers:
        if isinstance(logger, RunwatchLogger) and logger.session is session:
            names.update(logger.metric_names)
    return {storable_text(k): storable_text(v) for k, v in sorted(names.items())}


def _write_csv(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    rows = [{storable_text(k): v for k, v in row.items()} for row in history]
    columns = ["epoch", *sorted({k for row in rows for k in row} - {"epoch"})]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "epoch" else v) for k, v in row.items()})


def _json_row(row: Mapping[str, float]) -> dict[str, float | int | None]:
    # storable_text: a lone surrogate in a name would make the file invalid UTF-8 / JSON.
    return {
        storable_text(k): (int(v) if k == "epoch" else (v if math.isfinite(v) else None))
        for k, v in row.items()
    }


# -- system --------------------------------------------------------------------------------


class SystemMetricsCallback(SessionCallback):
    """Every ``interval_s`` while a fit trains (the first after at most 1 s): a ``system``
    point with cpu_percent, rss_bytes and, on CUDA, gpu_mem_bytes and gpu_util (when NVML is
    available).

    Sampled on a thread of its own (``runwatch-system``), from ``on_train_start`` to
    ``on_train_end``: a long step, a validation pass or a stalled loader gets its samples on
    time, and the training thread pays nothing for them, not even a clock check per step.
    """

    def __init__(
        self, session: RunSession | None = None, *, interval_s: float = DEFAULT_SYSTEM_INTERVAL_S
    ) -> None:
        super().__init__(session)
        self.interval_s = interval_s
        self._process: Any = None
        self._tags: dict[str, str] = {}
        self._cuda_device: torch.device | None = None
        self._gpu_util_ok = True
        self._sampler: Heartbeat | None = None

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a pickled trainer) carries neither the thread nor the process handle: it
        # samples nothing
        return {**self.__dict__, "_sampler": None, "_process": None}

    def on_session_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import psutil

        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading only primes the counter
        self._tags = {"host": socket.gethostname(), "rank": str(trainer.global_rank)}

    @guarded
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        self._cuda_device = device if device.type == "cuda" else None
        if self.enabled and self._process is not None and self._sampler is None:
            self._sampler = Heartbeat(
                self._sample_reporting_errors,
                self.interval_s,
                "runwatch-system",
                first_after_s=min(self.interval_s, 1.0),
            )
            self._sampler.start()

    @guarded
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_sampling()

    @guarded
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop_sampling()  # before the run can finish: nothing is recorded after it
        super().teardown(trainer, pl_module, stage)

    @guarded
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_sampling()
        super().on_exception(trainer, pl_module, exception)

    def _stop_sampling(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()

    @property
    def sampling(self) -> bool:
        """Whether the sampling thread runs (between a fit's training start and end)."""
        return self._sampler is not None

    def _sample_reporting_errors(self) -> None:
        try:
            self.sample()
        except Exception as exc:  # reported as a hook's would be; the next sample still comes
            report(self, "SystemMetricsCallback.sample", exc)

    def sample(self) -> None:
        """Record one ``system`` point now (the sampling thread calls this)."""
        process = self._process
        session = self._session
        if process is None or session is None or session.finished:
            return
        fields = {
            "cpu_percent": float(process.cpu_percent(None)),
            "rss_bytes": float(process.memory_info().rss),
        }
        device = self._cuda_device
        if device is not None:
            fields["gpu_mem_bytes"] = float(torch.cuda.memory_allocated(device))
            if self._gpu_util_ok:
                try:
                    fields["gpu_util"] = float(torch.cuda.utilization(device))
                except Exception:  # no NVML: utilisation is simply not reported
                    self._gpu_util_ok = False
        session.record("system", fields, self._tags)


# -- live step gauges ------------------------------------------------------------------------


class _StepClock:
    """A fit's training steps as the session's Prometheus exporter counts them: what a
    batch's start leaves for its end (when it started, its samples), and the exporter's
    ``_StepCollector``, to which each ended step is appended (``StepTimerCallback`` and
    ``BatchMetricsCallback(step_timing=True)`` append inline: a method's frame would cost
    the step about as much as the rest of the hook)."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self.steps = exporter.steps
        self.tracker: Any = None
        """``FitSteps.step_tracker`` during a fit: the steps taken, without a property chain."""
        self.started = 0.0
        self.samples = 0

    @classmethod
    def of(cls, session: RunSession) -> _StepClock | None:
        """The session's clock; None when it has no exporter."""
        exporter = session.exporter
        return cls(exporter) if exporter is not None else None

    def epoch_started(self, trainer: pl.Trainer) -> None:
        self.exporter.epoch_started(trainer.current_epoch)


class StepTimerCallback(SessionCallback):
    """Every step, for the Prometheus exporter only: step duration histogram, optimizer steps,
    samples and last-step timestamp (a few microseconds; nothing when there is no exporter).
    The bundle uses it where there are no batch points; ``BatchMetricsCallback`` does the same
    with ``step_timing=True``."""

    def __init__(self, session: RunSession | None = None) -> None:
        super().__init__(session)
        self._clock: _StepClock | None = None

    def on_session_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock = _StepClock.of(self.session)

    @guarded
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        clock = self._clock
        if clock is not None and self.enabled:
            # read here, while the batch is in the caches: at the batch's end, after the
            # forward and backward passes, one look at its shape costs ~6 µs
            clock.samples = batch_size_of(batch)
            clock.started = time.perf_counter()

    @guarded
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        clock = self._clock
        if clock is not None and self.enabled:
            tracker, ended, now = clock.tracker, clock.steps.ended, time.perf_counter()
            taken = tracker.completed if tracker is not None else trainer.global_step
            ended.append((taken, now - clock.started, clock.samples, now))
            if len(ended) > clock.steps.max_backlog:
                clock.steps.bound_backlog()

    @guarded
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._clock is not None:
            self._clock.tracker = FitSteps(trainer).step_tracker

    @guarded
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._clock is not None:
            self._clock.tracker = None

    @guarded
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._clock is not None and self.enabled:
            self._clock.epoch_started(trainer)


# -- the bundle ------------------------------------------------------------------------------

_HOOK_NAMES = (
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_train_start",
    "on_train_end",
    "on_validation_start",
    "on_validation_end",
    "on_test_start",
    "on_test_end",
    "on_exception",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_predict_batch_start",
    "on_predict_batch_end",
)

_PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)
"""Hooks Lightning calls on every batch: the bundle's ``_UnsetHook`` where no part implements
one."""

_HOOK_SKIP_TESTED_UP_TO = (2, 6)
"""The newest Lightning release (major, minor) whose per-batch hooks all go through the loop
``skipping_hook_loop`` probes; a newer one gets every hook, as from any callback."""


@cache
def skipping_hook_loop() -> CodeType | None:
    """The code of Lightning's hook loop (``_call_callback_hooks``) where it is known to skip
    a callback's hook that is not callable: in a release runwatch was tested with, once it
    passed over a probe's None hook. None otherwise: a None hook called anyway would stop
    the training."""
    try:
        from lightning.pytorch.profilers import PassThroughProfiler
        from lightning.pytorch.trainer.call import _call_callback_hooks

        release = tuple(int(part) for part in getattr(pl, "__version__", "").split(".")[:2])
    except (ImportError, ValueError):
        return None
    if release > _HOOK_SKIP_TESTED_UP_TO:
        return None
    probe = Callback()
    probe.on_before_backward = None  # type: ignore[assignment,method-assign]
    trainer = SimpleNamespace(
        lightning_module=None, callbacks=[probe], profiler=PassThroughProfiler()
    )
    try:
        _call_callback_hooks(trainer, "on_before_backward")  # type: ignore[arg-type]
    except Exception:
        return None
    return _call_callback_hooks.__code__


class _UnsetHook:
    """A per-batch hook of the bundle that none of its parts implements. Lightning's hook
    loop gets None, which it skips: no call and no profiler context, which it enters for every
    hook of every callback (~1 µs a hook hot, more in a step; a training step fires three
    that no part uses: benchmarks/bench_lightning_hooks.py). Anyone else gets a no-op, as
    from any callback: a composite callback forwarding hooks, a profiler wrapping them. The
    class attribute stays Lightning's, so the bundle does not look as if it overrode it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return getattr(Callback, self._name)
        loop = skipping_hook_loop()
        if loop is not None and sys._getframe(1).f_code is loop:
            return None
        return _ignore_hook


def _ignore_hook(*args: Any, **kwargs: Any) -> None:
    """What a callback's hook that is not implemented does."""


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(Callback, hook, None)


class RunwatchCallback(Callback):
    """Several session callbacks as one Lightning callback, dispatching each hook only to the
    parts that implement it, and writes the pending epoch point when the next epoch starts."""

    def __init__(self, session: RunSession, parts: Sequence[SessionCallback]) -> None:
        self.session = session
        self.parts = list(parts)
        self._finish_session = False
        for part in self.parts:
            if part._session is None:
                part._session = session
        self._install_dispatchers()

    def _install_dispatchers(self) -> None:
        for hook in _HOOK_NAMES:
            dispatch = self._dispatcher(hook)
            if dispatch is not None:
                setattr(self, hook, dispatch)

    def __getstate__(self) -> dict[str, Any]:
        # the per-instance dispatchers are closures: a copy builds its own
        return {k: v for k, v in self.__dict__.items() if k not in _HOOK_NAMES}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._install_dispatchers()

    def _dispatcher(self, hook: str) -> Callable[..., None] | None:
        targets: list[Callable[..., None]] = [
            getattr(part, hook) for part in self.parts if _overrides(part, hook)
        ]
        if hook == "on_train_epoch_start":
            targets.insert(0, self._flush_epochs)
        elif hook == "setup":
            targets.insert(0, self._check_logger)
        elif hook == "on_fit_start":
            targets.insert(0, self._fit_started)
        elif hook == "teardown":
            targets.append(self._finish_completed)
        elif hook == "on_exception":
            targets.append(self._finish_failed)
        if not targets:
            return None
        return dispatcher(targets)

    @guarded
    def _check_logger(self, trainer: pl.Trainer, *_: Any, **__: Any) -> None:
        self.session.stages_tracked = True
        for logger in trainer.loggers:
            if isinstance(logger, RunwatchLogger) and logger.session is self.session:
                logger.attach(trainer)
        # Without the session's RunwatchLogger nobody else finishes the run.
        self._finish_session = not any(
            isinstance(logger, RunwatchLogger) and logger.session is self.session
            for logger in trainer.loggers
        )
        first = trainer.loggers[0] if trainer.loggers else None
        if isinstance(first, RunwatchLogger) and first.session is self.session:
            # Lightning would nest them as <save_dir>/<name>/<version>/checkpoints
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                    callback.dirpath = str(Path(first.save_dir) / "checkpoints")

    @guarded
    def _fit_started(self, *_: Any, **__: Any) -> None:
        self.session.fit_started = True

    @guarded
    def _flush_epochs(self, *_: Any, **__: Any) -> None:
        self.session.epochs.flush()

    @guarded
    def _finish_completed(self, *_: Any, **__: Any) -> None:
        if self._finish_session:
            self.session.finish("completed")

    @guarded
    def _finish_failed(self, *_: Any, **__: Any) -> None:
        if self._finish_session:
            self.session.finish("failed")

    @property
    def error_ledger(self) -> Any:
        return self.session.error_ledger

    @property
    def error_sink(self) -> Any:
        return self.session.error_sink

    def part(self, kind: type[SessionCallback]) -> SessionCallback | None:
        """The first part of the given class, if any."""
        return next((p for p in self.parts if isinstance(p, kind)), None)


for _hook in _PER_BATCH_HOOKS:  # where a part implements one, its dispatcher is an attribute
    setattr(RunwatchCallback, _hook, _UnsetHook(_hook))  # of the instance, which comes first
