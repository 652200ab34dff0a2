"""One run's telemetry as the Lightning adapter sees it: a :class:`collector.run.Run` on rank zero.

A :class:`RunSession` is shared by the logger and every callback of a run. Nothing happens at
construction: the run row, the recorder (spool + shipper), the Prometheus exporter and the
heartbeat thread start on first use, and only on global rank zero, so under DDP exactly one
process writes. It adds the epoch accumulator to the run; every failure inside is logged once
and counted, never raised.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Unpack

from lightning.pytorch.utilities import rank_zero_only

from collector.run import Run, RunOptions, jsonable_params

if TYPE_CHECKING:
    from collector.recorder import Recorder

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


class RunSession(Run):
    """Shared state of one run; safe to call on every rank (only rank zero acts)."""

    def __init__(
        self,
        experiment: str = "default",
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

    # -- lifecycle: rank zero only; the callbacks announce training start and end ------

    def _may_start(self) -> bool:
        return is_global_rank_zero()

    def _on_started(self) -> None:
        pass

    def _before_finish(self, status: str) -> None:
        self._flush_epochs()

    def flush(self) -> None:
        """Write the pending epoch point and hand queued points to the spool."""
        self._flush_epochs()
        super().flush()

    def _flush_epochs(self) -> None:
        with self.guard("RunSession.finish (epochs)"):
            self.epochs.flush()

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

    def _emit_epoch(self, fields: dict[str, float]) -> None:
        self.record("epoch", fields)

    def add_artifact(
        self,
        path: str,
        *,
        kind: str = "checkpoint",
        metric_name: str | None = None,
        metric_value: float | None = None,
    ) -> None:
        if not self.start().started:
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
