"""One run's telemetry as the Lightning adapter sees it: run id, recorder, store, exporter.

A :class:`RunSession` is shared by the logger and every callback of a run. Nothing happens at
construction: the run row, the recorder (spool + shipper), the Prometheus exporter and the
heartbeat thread start on first use, and only on global rank zero, so under DDP exactly one
process writes. Every failure inside is logged once and counted, never raised.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_only

from collector.config import Settings, load_settings
from collector.errors import RunIdInUseError
from collector.ids import new_run_id, refuse_reused_run_id, validate_run_id
from collector.lightning._guard import ErrorLedger
from collector.prometheus import (
    PrometheusExporter,
    start_exporter,
)

if TYPE_CHECKING:
    from collector.recorder import Recorder
    from collector.store import Store

log = logging.getLogger("collector.lightning")


# Phases our callbacks announce, so the logger can tell step-level from epoch-level calls.
PHASE_TRAIN_STEP = "train_step"
PHASE_EVAL_STEP = "eval_step"
PHASE_EPOCH_END = "epoch_end"


EmitEpoch = Callable[[dict[str, float]], None]


def is_global_rank_zero() -> bool:
    return int(getattr(rank_zero_only, "rank", 0)) == 0


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class EpochAccumulator:
    """Merges everything known about an epoch (train and validation metrics, learning rate)
    into one ``epoch`` point, written when the epoch is flushed or a later epoch begins.

    A value already written for an epoch is not written again; values that arrive later for
    an epoch already written (``test_*`` after fit) go out as a supplementary point.
    """

    def __init__(self, emit: EmitEpoch) -> None:
        self._emit = emit
        self._pending_epoch: int | None = None
        self._pending: dict[str, float] = {}
        self._written: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()

    def add(self, epoch: int, metrics: Mapping[str, float]) -> None:
        with self._lock:
            if self._pending_epoch is not None and epoch != self._pending_epoch:
                self._flush_locked()
            self._pending_epoch = epoch
            self._pending.update(metrics)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        epoch, metrics = self._pending_epoch, self._pending
        self._pending_epoch, self._pending = None, {}
        if epoch is None:
            return
        written = self._written.setdefault(epoch, {})
        new = {k: v for k, v in metrics.items() if k not in written or not _same(written[k], v)}
        if not new:
            return
        written.update(new)
        self._emit({"epoch": float(epoch), **new})

    @property
    def history(self) -> list[dict[str, float]]:
        """Every written epoch, merged, in epoch order (each dict has ``epoch``)."""
        with self._lock:
            return [{"epoch": float(e), **m} for e, m in sorted(self._written.items())]


class _Heartbeat(threading.Thread):
    def __init__(self, beat: Callable[[], None], interval_s: float) -> None:
        super().__init__(name="runwatch-heartbeat", daemon=True)
        self._beat = beat
        self._interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            self._beat()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5.0)


class RunSession:
    """Shared state of one run; safe to call on every rank (only rank zero acts)."""

    def __init__(
        self,
        experiment: str = "default",
        *,
        settings: Settings | None = None,
        mode: str = "centralized",
        run_id: str | None = None,
        source_path: str | None = None,
        hyperparams: Mapping[str, Any] | None = None,
        store: Store | None = None,
        prometheus: bool = True,
        heartbeat_interval_s: float | None = None,
        tags: Mapping[str, str] | None = None,
        use_store: bool = True,
    ) -> None:
        """``use_store=False``: points only, no run row (a Flower client on another machine,
        whose server owns the run's records); ``tags`` go on every point of the run."""
        self.experiment = experiment
        self.mode = mode
        self.run_id = validate_run_id(run_id) if run_id else new_run_id()
        self._refused: RunIdInUseError | None = None
        self.source_path = source_path
        self.tags = dict(tags or {})
        self._settings = settings
        self._initial_hyperparams = dict(hyperparams or {})
        self._store = store
        self._owns_store = store is None
        self._want_prometheus = prometheus
        self._use_store = use_store
        self._heartbeat_interval_s = heartbeat_interval_s
        self._recorder: Recorder | None = None
        self._exporter: PrometheusExporter | None = None
        self._heartbeat: _Heartbeat | None = None
        self._lock = threading.RLock()
        self.started = False
        self.finished = False
        self.status: str | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.error_ledger = ErrorLedger()
        self.epochs = EpochAccumulator(self._emit_epoch)
        self.phase: str | None = None
        # Set by RunwatchCallback: whether a callback reports the trainer's stages, and
        # whether fit has begun (trainer.validate() before fit must not complete the run).
        self.stages_tracked = False
        self.fit_started = False
        self.last_step = 0
        self.last_epoch = 0

    # -- properties --------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def store(self) -> Store | None:
        return self._store if self.started else None

    @property
    def recorder(self) -> Recorder | None:
        return self._recorder

    @property
    def exporter(self) -> PrometheusExporter | None:
        return self._exporter

    @property
    def error_sink(self) -> PrometheusExporter | None:
        return self._exporter

    @property
    def active(self) -> bool:
        """True on rank zero once started and not yet finished."""
        return self.started and not self.finished

    def report_error(self, where: str, exc: BaseException) -> None:
        self.error_ledger.report(where, exc, self._exporter)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> bool:
        """Create the run, recorder, exporter and heartbeat (rank zero only); idempotent.

        Raises RunIdInUseError, every time, when the run id belongs to an earlier run: then
        nothing is started and no point is written."""
        if self.started:
            return not self.finished
        if not is_global_rank_zero():
            return False
        with self._lock:
            if self.started:
                return not self.finished
            if self._refused is not None:
                raise self._refused
            self._start_store()
            self.started = True
            self.start_time = time.time()
            self._start_exporter()
            self._open_recorder()
        return True

    def _start_store(self) -> None:
        if not self._use_store:
            return
        try:
            refuse_reused_run_id(self.settings, self.run_id)
            if self._store is None:
                from collector.store.journal import JournalingStore

                self._store = JournalingStore.for_run(self.settings, self.run_id)
            self._store.create_run(
                self.experiment,
                self.mode,
                run_id=self.run_id,
                source_path=self.source_path,
                host=socket.gethostname(),
                hyperparams=jsonable_params(self._initial_hyperparams) or None,
            )
        except RunIdInUseError as exc:
            self._refused = exc
            if self._owns_store and self._store is not None:
                self._store.dispose()
                self._store = None
            raise
        except Exception as exc:
            self.report_error("RunSession.start (store)", exc)
            self._store = None
            return
        self._heartbeat = _Heartbeat(
            self._beat, self._heartbeat_interval_s or self.settings.heartbeat_s
        )
        self._heartbeat.start()

    def _start_exporter(self) -> None:
        if not self._want_prometheus:
            return
        try:
            self._exporter = start_exporter(
                self.settings, self.run_id, experiment=self.experiment, mode=self.mode
            )
        except Exception as exc:
            self.report_error("RunSession.start (prometheus)", exc)

    def _open_recorder(self) -> None:
        try:
            from collector.recorder import Recorder

            observers = (self._exporter,) if self._exporter is not None else ()
            self._recorder = Recorder(
                self.run_id,
                experiment=self.experiment,
                mode=self.mode,
                settings=self.settings,
                tags=self.tags or None,
                observers=observers,
            )
        except Exception as exc:
            self.report_error("RunSession.start (recorder)", exc)

    def _beat(self) -> None:
        store = self._store
        if store is None:
            return
        try:
            store.heartbeat(self.run_id)
        except Exception as exc:
            self.report_error("RunSession.heartbeat", exc)

    def finish(self, status: str = "completed") -> None:
        """Write pending points, mark the run finished, stop exporter, recorder and heartbeat.

        Idempotent: the first status wins. Points recorded after (``trainer.test`` following
        ``fit``) reopen a recorder on the same run; a later ``finish`` closes it again.
        """
        if not self.started:
            return
        with self._lock:
            self._flush_epochs()
            if not self.finished:
                self.finished = True
                self.status = status
                self.end_time = time.time()
                self._complete_in_store(status)
                if self._exporter is not None:
                    self._exporter.finish(status)
            self._close_recorder()

    def flush(self) -> None:
        """Write the pending epoch point and hand queued points to the spool."""
        self._flush_epochs()
        recorder = self._recorder
        if recorder is not None:
            recorder.flush()

    def _flush_epochs(self) -> None:
        try:
            self.epochs.flush()
        except Exception as exc:
            self.report_error("RunSession.finish (epochs)", exc)

    def _complete_in_store(self, status: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        store = self._store
        if store is None:
            return
        try:
            store.complete_run(self.run_id, status)
        except Exception as exc:
            self.report_error("RunSession.finish (store)", exc)
        if self._owns_store:
            try:
                store.dispose()
            except Exception as exc:
                self.report_error("RunSession.finish (dispose)", exc)

    def _close_recorder(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        try:
            recorder.close()
        except Exception as exc:
            self.report_error("RunSession.finish (recorder)", exc)

    # -- writing -----------------------------------------------------------------------

    def _writer(self) -> Recorder | None:
        recorder = self._recorder
        if recorder is None and self.finished:
            with self._lock:
                if self._recorder is None:
                    self._open_recorder()
                recorder = self._recorder
        return recorder

    def record(
        self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str] | None = None
    ) -> None:
        if not self.started and not self.start():
            return
        recorder = self._writer()
        if recorder is not None:
            recorder.record(measurement, fields, tags)

    def event(self, name: str, text: str = "", value: float = 1.0) -> None:
        if not self.started and not self.start():
            return
        recorder = self._writer()
        if recorder is not None:
            recorder.event(name, text=text, value=value)

    def _emit_epoch(self, fields: dict[str, float]) -> None:
        self.record("epoch", fields)

    def save_hyperparams(self, params: Mapping[str, Any]) -> None:
        if not self.start() and not self.finished:
            return
        store = self._store
        if store is not None:
            store.save_hyperparams(self.run_id, jsonable_params(params))

    def add_artifact(
        self,
        path: str,
        *,
        kind: str = "checkpoint",
        metric_name: str | None = None,
        metric_value: float | None = None,
    ) -> None:
        if not self.started and not self.start():
            return
        store = self._store
        if store is not None:
            store.add_artifact(
                self.run_id,
                path,
                kind=kind,
                step=self.last_step,
                epoch=self.last_epoch,
                metric_name=metric_name,
                metric_value=metric_value,
            )


def jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as JSON-friendly values: nested mappings kept, anything else ``str``."""
    return {str(key): _jsonable(value) for key, value in params.items()}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return jsonable_params(value)
    if isinstance(value, list | tuple) and all(
        v is None or isinstance(v, bool | int | float | str) for v in value
    ):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        return jsonable_params(vars(value))
    return str(value)
