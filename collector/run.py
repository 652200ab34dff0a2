"""One run's lifecycle, owned once: run row, heartbeat, exporter, recorder, errors, events.

::

    from collector import Run

    with Run("baseline", hyperparams={"lr": 1e-3}) as run:
        for epoch in range(epochs):
            for step, loss in enumerate(train_epoch()):
                run.record("batch", {"loss": loss, "step": step})       # never raises
            run.log_epoch(epoch, {"train_loss": loss, "val_acc": acc})  # point + store rows
        run.event("checkpoint", text="last.ckpt")

``start()`` (or ``with``) creates the run row in the store (through a journal when the
database is unavailable, replayed by ``runwatch sync``), starts the heartbeat thread that
stamps it every ``RUNWATCH_HEARTBEAT_S``, the Prometheus exporter and the recorder (spool,
and InfluxDB when configured). ``finish(status)`` is the one end-of-run path: status in the
store, the exporter's final scrape, the recorder closed. Any backend may be unavailable
(database down, port busy): the others go on. Telemetry never raises into training; the one
exception is a run id that belongs to an earlier run (``RunIdInUseError`` from ``start``,
before anything is written).

The Lightning adapter (``RunSession``: rank zero, epoch accumulator) and the Flower server
(``FederatedRun``: rounds) are this object with their own additions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypedDict

from collector import schema
from collector.config import Settings, load_settings
from collector.errors import RunIdInUseError
from collector.ids import new_run_id, refuse_reused_run_id, validate_run_id

if TYPE_CHECKING:
    from collector.prometheus import PrometheusExporter
    from collector.recorder import Recorder, RecorderTuning
    from collector.store import Store

log = logging.getLogger("collector.run")

DEFAULT_EXPERIMENT = "default"
"""The experiment of a run given none (``None``, ``""`` or blanks)."""


class ErrorSink(Protocol):
    def telemetry_error(self) -> None: ...


class ErrorLedger:
    """Counts caught exceptions per place; the first one of each place is logged with its trace."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"counts": Counter(self.counts)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.counts = state["counts"]
        self._lock = threading.Lock()

    def report(self, where: str, exc: BaseException, sink: ErrorSink | None = None) -> None:
        with self._lock:
            self.counts[where] += 1
            first = self.counts[where] == 1
        if first:
            log.warning(
                "runwatch: telemetry error in %s (training goes on; later ones are only counted)",
                where,
                exc_info=exc,
            )
        if sink is not None:
            with contextlib.suppress(Exception):  # the counter itself must not raise either
                sink.telemetry_error()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


class Heartbeat(threading.Thread):
    """Calls ``beat`` every ``interval_s`` seconds until stopped (the first time after
    ``first_after_s``, if given). ``beat`` must not raise."""

    def __init__(
        self,
        beat: Callable[[], None],
        interval_s: float,
        name: str = "runwatch-heartbeat",
        *,
        first_after_s: float | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._beat = beat
        self._interval_s = interval_s
        self._first_after_s = interval_s if first_after_s is None else first_after_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        wait_s = self._first_after_s
        while not self._stop_event.wait(wait_s):
            self._beat()
            wait_s = self._interval_s

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5.0)


class RunOptions(TypedDict, total=False):
    """What every kind of run accepts besides its experiment (see :class:`Run`)."""

    settings: Settings | None
    run_id: str | None
    source_path: str | None
    hyperparams: Mapping[str, Any] | None
    store: Store | None
    prometheus: bool
    heartbeat_interval_s: float | None
    tags: Mapping[str, str] | None
    use_store: bool
    recorder_tuning: RecorderTuning | None


class Run:
    """One run as this process records it. See the module doc."""

    def __init__(
        self,
        experiment: str | None = DEFAULT_EXPERIMENT,
        *,
        settings: Settings | None = None,
        mode: str = schema.MODE_CENTRALIZED,
        run_id: str | None = None,
        source_path: str | None = None,
        hyperparams: Mapping[str, Any] | None = None,
        store: Store | None = None,
        prometheus: bool = True,
        heartbeat_interval_s: float | None = None,
        tags: Mapping[str, str] | None = None,
        use_store: bool = True,
        recorder_tuning: RecorderTuning | None = None,
    ) -> None:
        """``use_store=False``: points only, no run row (a Flower client on another machine,
        whose server owns the run's records); ``tags`` go on every point of the run."""
        self.experiment = experiment_name(experiment)
        self.mode = mode
        self.run_id = validate_run_id(run_id) if run_id else new_run_id()
        self.source_path = source_path
        self.tags = dict(tags or {})
        self.error_ledger = ErrorLedger()
        self.started = False
        self.finished = False
        self.status: str | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self._settings = settings
        self._initial_hyperparams = dict(hyperparams or {})
        self._store = store
        self._owns_store = store is None
        self._want_prometheus = prometheus
        self._use_store = use_store
        self._heartbeat_interval_s = heartbeat_interval_s
        self._recorder_tuning = recorder_tuning
        self._refused: RunIdInUseError | None = None
        self._continues = False
        """A copy of a run another object started (pickled, deep-copied): it goes on with
        that run's row instead of creating one."""
        self._recorder: Recorder | None = None
        self._exporter: PrometheusExporter | None = None
        self._heartbeat: Heartbeat | None = None
        self._lock = threading.RLock()

    # -- copies: pickle and deepcopy (ddp_spawn, copied trainers) --------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The run's configuration and where it stands, never its live resources (store
        engine, recorder, exporter, heartbeat, lock): a copy opens its own on first use. A
        copy of a running run continues it: no second row, no second start event."""
        state = self.__dict__.copy()
        state.update(
            _store=None,
            _owns_store=True,
            _recorder=None,
            _exporter=None,
            _heartbeat=None,
            _lock=None,
            _refused=None,
        )
        if self.started and not self.finished:
            state.update(started=False, _continues=True)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- resources ---------------------------------------------------------------------

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
    def errors(self) -> ErrorLedger:
        return self.error_ledger

    @property
    def active(self) -> bool:
        """True once started (in this process) and not yet finished."""
        return self.started and not self.finished

    def report_error(self, where: str, exc: BaseException) -> None:
        self.error_ledger.report(where, exc, self._exporter)

    @contextlib.contextmanager
    def guard(self, where: str) -> Iterator[None]:
        """Run a telemetry step; an exception is reported and swallowed."""
        try:
            yield
        except RunIdInUseError:
            raise
        except Exception as exc:
            self.report_error(where, exc)

    def _where(self, what: str) -> str:
        return f"{type(self).__name__}.{what}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Create the run row, heartbeat, exporter and recorder; idempotent.

        Raises RunIdInUseError, every time, when the run id belongs to an earlier run: then
        nothing is started and no point is written."""
        if self.started or not self._may_start():
            return self
        with self._lock:
            if self.started:
                return self
            if self._refused is not None:
                raise self._refused
            if self._continues:
                self._continue_in_store()
            else:
                self._start_store()
            self.started = True
            self.start_time = time.time()
            self._start_exporter()
            self._open_recorder()
            if not self._continues:
                self._on_started()
        return self

    def _may_start(self) -> bool:
        """Whether this process records the run (``RunSession``: global rank zero only)."""
        return True

    def _on_started(self) -> None:
        self.event(schema.EVENT_TRAINING_START, text=f"{self.mode} run {self.run_id}")

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
            self.report_error(self._where("start (store)"), exc)
            self._store = None
            return
        interval = self._heartbeat_interval_s or self.settings.heartbeat_s
        self._heartbeat = Heartbeat(self.heartbeat, interval)
        self._heartbeat.start()

    def _continue_in_store(self) -> None:
        """The store of a run whose row another copy of this object created."""
        if not self._use_store:
            return
        with self.guard(self._where("start (store)")):
            if self._store is None:
                from collector.store.journal import JournalingStore

                self._store = JournalingStore.for_run(self.settings, self.run_id)
            interval = self._heartbeat_interval_s or self.settings.heartbeat_s
            self._heartbeat = Heartbeat(self.heartbeat, interval)
            self._heartbeat.start()

    def _start_exporter(self) -> None:
        if not self._want_prometheus:
            return
        with self.guard(self._where("start (prometheus)")):
            from collector.prometheus import start_exporter

            self._exporter = start_exporter(
                self.settings, self.run_id, experiment=self.experiment, mode=self.mode
            )

    def _open_recorder(self) -> None:
        with self.guard(self._where("start (recorder)")):
            from collector.recorder import Recorder

            observers = (self._exporter,) if self._exporter is not None else ()
            self._recorder = Recorder(
                self.run_id,
                experiment=self.experiment,
                mode=self.mode,
                settings=self.settings,
                tags=self.tags or None,
                observers=observers,
                tuning=self._recorder_tuning,
            )

    def heartbeat(self) -> None:
        """Stamp the run in the store now (the heartbeat thread calls this)."""
        store = self._store
        if store is not None:
            with self.guard(self._where("heartbeat")):
                store.heartbeat(self.run_id)

    def finish(self, status: str = "completed") -> None:
        """End the run: status in the store, exporter's final scrape, recorder closed.

        Idempotent: the first status wins."""
        if not self.started:
            return
        with self._lock:
            self._before_finish(status)
            if not self.finished:
                self.finished = True
                self.status = status
                self.end_time = time.time()
                self._stop_heartbeat()
                self._complete_in_store(status)
                self._finish_exporter(status)
            self._close_recorder()

    def _before_finish(self, status: str) -> None:
        if not self.finished:
            self.event(schema.EVENT_TRAINING_END, text=status)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _complete_in_store(self, status: str) -> None:
        store = self._store
        if store is None:
            return
        with self.guard(self._where("finish (store)")):
            store.complete_run(self.run_id, status)
        if self._owns_store:
            with self.guard(self._where("finish (dispose)")):
                store.dispose()

    def _finish_exporter(self, status: str) -> None:
        exporter = self._exporter
        if exporter is not None:
            with self.guard(self._where("finish (prometheus)")):
                exporter.finish(status)

    def _close_recorder(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            with self.guard(self._where("finish (recorder)")):
                recorder.close()

    def flush(self) -> None:
        """Hand queued points to the spool."""
        recorder = self._recorder
        if recorder is not None:
            recorder.flush()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish("failed" if exc_type is not None else "completed")

    # -- writing -----------------------------------------------------------------------

    def _writer(self) -> Recorder | None:
        """The recorder points go to (``RunSession`` reopens one after ``finish``)."""
        return self._recorder

    def record(
        self,
        measurement: str,
        fields: Mapping[str, object],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Record one point (starts the run if needed). Never raises."""
        recorder = self._recorder
        if recorder is not None and self.started:  # a running run: the every-step path
            if fields:
                recorder.record(measurement, fields, tags)
            return
        if not fields or not self.start().started:
            return
        recorder = self._writer()
        if recorder is not None:
            recorder.record(measurement, fields, tags)

    def event(
        self, name: str, text: str = "", value: float = 1.0, tags: Mapping[str, str] | None = None
    ) -> None:
        """Record an ``event`` point (a Grafana annotation). Never raises."""
        if not self.start().started:
            return
        recorder = self._writer()
        if recorder is not None:
            recorder.event(name, text=text, value=value, tags=tags)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics: an ``epoch`` point and the store's ``epoch_end`` rows (what
        ``runs show``, ``runs export`` and ``compare --source sql`` read)."""
        row = {"epoch": float(epoch), **metrics}
        self.record(schema.M_EPOCH, row)
        self.with_store(
            self._where("log_epoch (store)"),
            lambda store: store.persist_epoch_metrics(self.run_id, [row]),
        )

    def with_store(self, where: str, action: Callable[[Store], object]) -> None:
        """Run ``action`` on the store when there is one; a failure is reported, not raised."""
        store = self._store
        if store is not None:
            with self.guard(where):
                action(store)

    def save_hyperparams(self, params: Mapping[str, Any]) -> None:
        if not self.start().started:
            return
        self.with_store(
            self._where("save_hyperparams (store)"),
            lambda store: store.save_hyperparams(self.run_id, jsonable_params(params)),
        )


def experiment_name(experiment: object) -> str:
    """``experiment`` as a run's experiment: ``DEFAULT_EXPERIMENT`` for None or blanks."""
    text = "" if experiment is None else str(experiment).strip()
    return text or DEFAULT_EXPERIMENT


def params_mapping(params: object) -> Mapping[str, Any] | None:
    """Hyperparameters as a mapping: a mapping, an ``argparse.Namespace`` (or any object
    with ``__dict__`` Lightning hands over) or a dataclass instance; None for anything else."""
    if isinstance(params, Mapping):
        return params
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if type(params).__name__ in ("Namespace", "AttributeDict", "SimpleNamespace"):
        return vars(params)
    return None


_MAX_STORED_SEQUENCE = 1_000


def jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as JSON values, each as the value it is: numbers (numpy and torch
    scalars too) as numbers, small arrays as lists, dataclasses and namespaces as mappings
    (``outer.inner`` keys in the store), paths and enums as text. Anything else is stored as
    its text, with one warning naming the key."""
    return {str(key): _jsonable(value, str(key)) for key, value in params.items()}


def _jsonable(value: Any, key: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    nested = params_mapping(value)
    if nested is not None:
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in nested.items()}
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, key)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple | set | frozenset):
        return _jsonable_sequence(list(value), key)
    scalar = _array_scalar(value)
    if scalar is not None:
        return _jsonable(scalar, key)
    if callable(getattr(value, "tolist", None)):  # numpy arrays, tensors
        return _jsonable_sequence(value.tolist(), key)
    return _unstorable(value, key)


def _jsonable_sequence(values: list[Any], key: str) -> Any:
    if len(values) > _MAX_STORED_SEQUENCE:
        return _unstorable(values, key, why=f"over {_MAX_STORED_SEQUENCE} elements")
    return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(values)]


def _array_scalar(value: Any) -> bool | int | float | str | None:
    """The Python number of a numpy or torch scalar (anything 0-d with ``item()``)."""
    if getattr(value, "shape", None) not in ((), []) or not callable(getattr(value, "item", None)):
        return None
    try:
        item = value.item()
    except Exception:
        return None
    return item if isinstance(item, bool | int | float | str) else None


def _unstorable(value: Any, key: str, why: str = "") -> str:
    reason = why or f"a {type(value).__name__} is not a number, text, list or mapping"
    log.warning("runwatch: hyperparameter %r stored as its text: %s", key, reason)
    text = str(value)
    return text if len(text) <= 1_000 else text[:1_000] + "…"
