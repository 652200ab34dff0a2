"""One run's telemetry as the Lightning adapter sees it: a :class:`collector.run.Run` on rank zero.

A :class:`RunSession` is shared by the logger and every callback of a run. Nothing happens at
construction: the run row, the recorder (spool + shipper), the Prometheus exporter and the
heartbeat thread start on first use, and only on global rank zero, so under DDP exactly one
process writes. It adds the epoch accumulator to the run; every failure inside is logged once
and counted, never raised.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from lightning.pytorch.utilities import rank_zero_only

from collector import schema
from collector.run import Run, RunOptions, jsonable_params

if TYPE_CHECKING:
    from collector.recorder import MakePoints, Recorder

__all__ = ["EpochAccumulator", "RunSession", "is_global_rank_zero", "jsonable_params"]

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

    *Provisional* values (a ``trainer.validate()`` before fit, filed under epoch 0) wait:
    the epoch's own values replace them, and those left are written only at the final flush,
    so a validation before fit never makes a second epoch-0 point.
    """

    def __init__(self, emit: EmitEpoch) -> None:
        self._emit = emit
        self._pending_epoch: int | None = None
        self._pending: dict[str, float] = {}
        self._provisional: dict[int, dict[str, float]] = {}
        self._written: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, epoch: int, metrics: Mapping[str, float], *, provisional: bool = False) -> None:
        with self._lock:
            if provisional:
                self._provisional.setdefault(epoch, {}).update(metrics)
                return
            if self._pending_epoch is not None and epoch != self._pending_epoch:
                self._flush_locked()
            self._pending_epoch = epoch
            self._pending.update(metrics)
            waiting = self._provisional.get(epoch)
            if waiting:
                for name in metrics:
                    waiting.pop(name, None)

    def flush(self, *, final: bool = False) -> None:
        """Write the pending epoch; ``final``: provisional values too (the run ends)."""
        with self._lock:
            self._flush_locked()
            if final:
                for epoch, metrics in sorted(self._provisional.items()):
                    self._pending_epoch, self._pending = epoch, metrics
                    self._flush_locked()
                self._provisional.clear()

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


class RunSession(Run):
    """Shared state of one run; safe to call on every rank (only rank zero acts)."""

    def __init__(
        self,
        experiment: str | None = "default",
        *,
        mode: str = "centralized",
        **options: Unpack[RunOptions],
    ) -> None:
        super().__init__(experiment, mode=mode, **options)
        self.epochs = EpochAccumulator(self._emit_epoch)
        # Set by RunwatchCallback: whether a callback reports the trainer's stages, and
        # whether fit has begun (trainer.validate() before fit must not complete the run).
        self.stages_tracked = False
        self.fit_started = False
        self.last_step = 0
        self.last_epoch = 0
        self._stage_began = False
        self._holding_provisional = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self._holding_provisional:
            atexit.register(self._write_held_epochs)

    def hold_provisional_epochs(self) -> None:
        """Keep provisional epoch values (a ``validate()`` before fit) out of the run's end:
        a later fit's own values replace them, and what is left is written when that fit
        ends, or when the process exits."""
        if not self._holding_provisional:
            self._holding_provisional = True
            atexit.register(self._write_held_epochs)

    def _write_held_epochs(self) -> None:
        with self.guard("RunSession.exit (provisional epochs)"):
            self.epochs.flush(final=True)
            self._close_recorder()

    def begin_stage(self) -> None:
        """A Lightning stage (fit, validate, test, predict) begins: the status it ends with
        replaces an earlier stage's (the run's status is the last stage's)."""
        self._stage_began = True

    def finish(self, status: str = "completed") -> None:
        """End the run; a later stage's end replaces the status an earlier one stored (a
        crash after ``validate()`` is the run's status), within a stage the first wins."""
        with self._lock:
            later_stage, self._stage_began = self._stage_began, False
            if self.finished and later_stage and status != self.status:
                self._restatus(status)
                return
        super().finish(status)

    def _restatus(self, status: str) -> None:
        self.status = status
        self.end_time = time.time()
        self._flush_epochs()
        self.event(schema.EVENT_TRAINING_END, text=status)
        self._complete_in_store(status)
        self._close_recorder()

    # -- lifecycle: rank zero only; the callbacks announce training start and end ------

    def _may_start(self) -> bool:
        return is_global_rank_zero()

    def _on_started(self) -> None:
        pass

    def _before_finish(self, status: str) -> None:
        final = self.fit_started or not self._holding_provisional
        self._flush_epochs(final=final)
        if final and self._holding_provisional:
            self._holding_provisional = False
            atexit.unregister(self._write_held_epochs)

    def flush(self) -> None:
        """Write the pending epoch point and hand queued points to the spool."""
        self._flush_epochs()
        super().flush()

    def _flush_epochs(self, *, final: bool = False) -> None:
        with self.guard("RunSession.finish (epochs)"):
            self.epochs.flush(final=final)

    def _writer(self) -> Recorder | None:
        # Points recorded after finish (trainer.test following fit) reopen a recorder on the
        # same run; a later finish closes it again.
        recorder = self._recorder
        if recorder is None and self.finished:
            with self._lock:
                if self._recorder is None:
                    self._open_recorder()
                recorder = self._recorder
        return recorder

    def record_series(
        self,
        measurement: str,
        field: str,
        values: Sequence[float],
        tag: str,
        tag_values: Sequence[str],
        common: Mapping[str, float] | None = None,
        *,
        head: tuple[str, Mapping[str, float]] | None = None,
    ) -> None:
        """One point per value in one call, after the ``head`` point if one is given
        (``Recorder.record_series``). Never raises."""
        recorder = self._recorder
        if recorder is not None and self.started:  # a running run: the every-step path
            if values or head is not None:
                recorder.record_series(
                    measurement, field, values, tag, tag_values, common, head=head
                )
            return
        if (not values and head is None) or not self.start().started:
            return
        recorder = self._writer()
        if recorder is not None:
            recorder.record_series(measurement, field, values, tag, tag_values, common, head=head)

    def record_later(self, make_points: MakePoints, count: int) -> None:
        """Up to ``count`` points made when the recorder builds lines
        (``Recorder.record_later``). Never raises."""
        if not self.start().started:
            return
        recorder = self._writer()
        if recorder is not None:
            recorder.record_later(make_points, count)

    def _emit_epoch(self, fields: dict[str, float]) -> None:
        self.record("epoch", fields)

    def add_artifact(
        self,
        path: str,
        *,
        kind: str = "checkpoint",
        metric_name: str | None = None,
        metric_value: float | None = None,
        step: int | None = None,
        epoch: int | None = None,
    ) -> None:
        if not self.start().started:
            return
        store = self._store
        if store is not None:
            store.add_artifact(
                self.run_id,
                path,
                kind=kind,
                step=self.last_step if step is None else step,
                epoch=self.last_epoch if epoch is None else epoch,
                metric_name=metric_name,
                metric_value=metric_value,
            )

    def remove_artifacts(self, paths: list[str]) -> None:
        """Forget artifacts whose files are gone."""
        if paths:
            self.with_store(
                self._where("remove_artifacts (store)"),
                lambda store: store.remove_artifacts(self.run_id, paths),
            )
