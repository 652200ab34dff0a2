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
points), on a session that carries the server's run_id and the tags ``client_id``, ``round``
and, when the node config has one, ``partition_id``. Points go to this machine's spool
(``RUNWATCH_HOME``) and InfluxDB. A client never opens the relational database and never
serves Prometheus: the server persists the epoch history it finds in the reply, and exports
the client's values it reads from the reply. Lifecycle events (``training_start``/
``training_end``) are the server's.

Settings: ``settings=`` when given; else the environment, with the ``runwatch-*`` keys of the
run config and of this node's node config over it (``collector.flower.settings``).

Checkpoints: a ``ModelCheckpoint`` without its own ``dirpath`` (Lightning's default one
included) writes under ``<RUNWATCH_HOME>/checkpoints/<run_id>/client-<client_id>/round-<n>``,
not into the working directory of Flower's process; the files kept at the end of the round
travel in the report, and the server lists them as the run's artifacts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning.pytorch as pl
from flwr.app import Context, Message, RecordDict
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from collector import schema
from collector.config import Settings
from collector.errors import ConfigError
from collector.flower.protocol import (
    ClientReport,
    EpochHistory,
    RunNote,
    attach_client_report,
    client_id_of,
    partition_id_of,
    read_run_note,
)
from collector.flower.settings import client_settings
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

log = logging.getLogger("collector.flower")
CHECKPOINT_SUFFIX = ".ckpt"


class _CheckpointsUnderRunHome(Callback):
    """Gives every ModelCheckpoint without a ``dirpath`` this client's and round's directory
    (Lightning moves checkpoint callbacks last, so this ``setup`` runs before theirs)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(self.directory)


class ClientTelemetry:
    """Telemetry of one ClientApp call: one client, one round of the server's run."""

    def __init__(
        self,
        note: RunNote,
        client_id: str,
        *,
        settings: Settings | None = None,
        partition_id: str | None = None,
        batch_every_n: int = DEFAULT_BATCH_EVERY_N,
        gradient_every_n: int = DEFAULT_GRADIENT_EVERY_N,
        system_interval_s: float = DEFAULT_SYSTEM_INTERVAL_S,
    ) -> None:
        self.note = note
        self.client_id = client_id
        self.partition_id = partition_id
        tags = {schema.CLIENT_ID: client_id, schema.ROUND: str(note.round_number)}
        if partition_id is not None:
            tags[schema.PARTITION_ID] = partition_id
        # Clients may run on other machines: the ServerApp process owns the run's records.
        self.session = RunSession(
            note.experiment,
            settings=settings,
            mode=schema.MODE_FEDERATED,
            run_id=note.run_id,
            prometheus=False,
            tags=tags,
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
        self.callbacks: list[Callback] = [
            _CheckpointsUnderRunHome(self.checkpoint_dir),  # before RunwatchCallback's own
            RunwatchCallback(self.session, parts),
        ]
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
        if settings is None:
            settings = _settings_of(context)
        partition_id = partition_id_of(context)
        return cls(
            note, client_id_of(context), settings=settings, partition_id=partition_id, **options
        )

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
    def checkpoint_dir(self) -> Path:
        """Where this client's checkpoints of this round go (unless a callback names its own)."""
        return (
            self.session.settings.home
            / "checkpoints"
            / self.run_id
            / f"client-{self.client_id}"
            / f"round-{self.round_number}"
        )

    def kept_checkpoints(self) -> list[str]:
        """The checkpoint files of this round still on disk (ModelCheckpoint deletes those
        that fall out of its top k)."""
        try:
            return sorted(str(p) for p in self.checkpoint_dir.rglob(f"*{CHECKPOINT_SUFFIX}"))
        except OSError:
            return []

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
            partition_id=self.partition_id,
            checkpoints=tuple(self.kept_checkpoints()),
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
        self.partition_id = None
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

    def kept_checkpoints(self) -> list[str]:
        return []

    def close(self, status: str = "completed") -> None:
        if self._ended_at is None:
            self._ended_at = time.time()

    def attach_report(self, content: RecordDict) -> RecordDict:
        self.close()
        return content


def _settings_of(context: Context) -> Settings | None:
    """The environment's settings with the run config's and node config's ``runwatch-*``
    keys over them; None (the environment alone) when a key is malformed: telemetry never
    stops a client's training."""
    try:
        return client_settings(context)
    except ConfigError as exc:
        log.warning("runwatch: %s; using the environment's settings", exc)
        return None
