"""The ClientApp side: runwatch's Lightning telemetry for one client in one round.

    @app.train()
    def train(msg, context):
        telemetry = ClientTelemetry.for_message(msg, context)   # None: server has no runwatch
        with telemetry:
            trainer = Trainer(logger=telemetry.logger, callbacks=telemetry.callbacks, ...)
            trainer.fit(...)
        content = RecordDict({"arrays": ..., "metrics": ...})
        telemetry.attach_report(content)                        # epoch history for the server
        return Message(content=content, reply_to=msg)

The callbacks are the centralized ones (epoch, batch, gradient, learning-rate, system
points), on a session that carries the server's run_id and the tags ``client_id`` and
``round``. Points go to this machine's spool (``RUNWATCH_HOME``) and InfluxDB. A client never
opens the relational database and never serves Prometheus: the server persists the epoch
history it finds in the reply, and exports the client's values it reads from the reply.
Lifecycle events (``training_start``/``training_end``) are the server's.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from flwr.app import Context, Message, RecordDict
from lightning.pytorch.callbacks import Callback

from collector import schema
from collector.config import Settings
from collector.flower.protocol import (
    ClientReport,
    EpochHistory,
    RunNote,
    attach_client_report,
    client_id_of,
    read_run_note,
)
from collector.lightning import (
    BatchMetricsCallback,
    EpochMetricsCallback,
    GradientMonitorCallback,
    LearningRateCallback,
    RunSession,
    RunwatchCallback,
    RunwatchLogger,
    SessionCallback,
    SystemMetricsCallback,
)
from collector.lightning.callbacks import (
    DEFAULT_BATCH_EVERY_N,
    DEFAULT_GRADIENT_EVERY_N,
    DEFAULT_SYSTEM_INTERVAL_S,
)


class ClientTelemetry:
    """Telemetry of one ClientApp call: one client, one round of the server's run."""

    def __init__(
        self,
        note: RunNote,
        client_id: str,
        *,
        settings: Settings | None = None,
        batch_every_n: int = DEFAULT_BATCH_EVERY_N,
        gradient_every_n: int = DEFAULT_GRADIENT_EVERY_N,
        system_interval_s: float = DEFAULT_SYSTEM_INTERVAL_S,
    ) -> None:
        self.note = note
        self.client_id = client_id
        # Clients may run on other machines: the ServerApp process owns the run's records.
        self.session = RunSession(
            note.experiment,
            settings=settings,
            mode=schema.MODE_FEDERATED,
            run_id=note.run_id,
            prometheus=False,
            tags={schema.CLIENT_ID: client_id, schema.ROUND: str(note.round_number)},
            use_store=False,
        )
        parts: list[SessionCallback] = [
            EpochMetricsCallback(self.session, persist=False),
            LearningRateCallback(self.session),
        ]
        if batch_every_n > 0:
            parts.append(BatchMetricsCallback(self.session, every_n_batches=batch_every_n))
        if gradient_every_n > 0:
            parts.append(GradientMonitorCallback(self.session, every_n_steps=gradient_every_n))
        if system_interval_s > 0:
            parts.append(SystemMetricsCallback(self.session, interval_s=system_interval_s))
        self.logger = RunwatchLogger(note.experiment, session=self.session)
        self.callbacks: list[Callback] = [RunwatchCallback(self.session, parts)]
        self._started_at = time.time()
        self._ended_at: float | None = None

    @classmethod
    def for_message(
        cls, msg: Message, context: Context, *, settings: Settings | None = None, **options: Any
    ) -> ClientTelemetry:
        """Telemetry for this instruction. When the server does not run runwatch there is no
        run to record into: the result is a :class:`DetachedClientTelemetry`, which records
        nothing and leaves the trainer and the reply as they would be without runwatch."""
        note = read_run_note(msg)
        if note is None:
            return DetachedClientTelemetry(client_id_of(context))
        return cls(note, client_id_of(context), settings=settings, **options)

    @property
    def attached(self) -> bool:
        """Whether this round's points and report go to a runwatch run."""
        return True

    @property
    def run_id(self) -> str:
        return self.note.run_id

    @property
    def round_number(self) -> int:
        return self.note.round_number

    @property
    def epoch_history(self) -> EpochHistory:
        """Every epoch of this round's local training, merged (each dict has ``epoch``)."""
        return self.session.epochs.history

    def __enter__(self) -> ClientTelemetry:
        self._started_at = time.time()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("failed" if exc_type is not None else "completed")

    def close(self, status: str = "completed") -> None:
        """Write what is pending to the spool (and InfluxDB), close the recorder; idempotent."""
        if self._ended_at is None:
            self._ended_at = time.time()
        self.session.finish(status)

    def report(self) -> ClientReport:
        ended = self._ended_at if self._ended_at is not None else time.time()
        return ClientReport(
            client_id=self.client_id,
            epochs=self.epoch_history,
            duration_s=ended - self._started_at,
        )

    def attach_report(self, content: RecordDict) -> RecordDict:
        """Add this round's report (epoch history, wall time) to the reply's contents."""
        self.close()
        attach_client_report(content, self.report())
        return content


class DetachedClientTelemetry(ClientTelemetry):
    """A client's telemetry under a ServerApp that does not run runwatch: the same interface,
    nothing recorded. ``logger`` is None (Lightning then uses its own default logger, as
    without runwatch), ``callbacks`` is empty and ``attach_report`` leaves the reply as is."""

    def __init__(self, client_id: str) -> None:  # no note, no session: nothing to record
        self.client_id = client_id
        self.logger = None  # type: ignore[assignment]
        self.callbacks = []
        self._started_at = time.time()
        self._ended_at = None

    @property
    def attached(self) -> bool:
        return False

    @property
    def run_id(self) -> str:
        return ""

    @property
    def round_number(self) -> int:
        return 0

    @property
    def epoch_history(self) -> EpochHistory:
        return []

    def close(self, status: str = "completed") -> None:
        if self._ended_at is None:
            self._ended_at = time.time()

    def attach_report(self, content: RecordDict) -> RecordDict:
        self.close()
        return content
