"""SQLAlchemy 2.x typed models of the run-metadata tables.

Every table that belongs to a run carries ``run_pk``, the integer key of ``runs``; the
public, globally unique string ``runs.run_id`` is what users, InfluxDB tags and the CLI see.
Foreign keys to clients and rounds are ``client_pk`` and ``round_pk`` for the same reason.
All timestamps are timezone-aware UTC (``UTCDateTime``), on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

TRAINING_MODES = ("centralized", "federated")
RUN_STATUSES = ("in_progress", "completed", "failed", "crashed")
DATASET_TYPES = ("train", "validation", "test", "other")
METRIC_CONTEXTS = ("epoch_end", "batch", "aggregated", "final_epoch")
ROUND_STATUSES = ("in_progress", "completed")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive UTC text).

    A naive datetime is taken as local time, Python's own convention for ``astimezone``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


def _run_fk() -> Mapped[int]:
    return mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        _one_of("training_mode", TRAINING_MODES),
        _one_of("status", RUN_STATUSES),
        Index(None, "status", "heartbeat_at"),
        Index(None, "start_time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    experiment_name: Mapped[str] = mapped_column(String(255), index=True)
    training_mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    start_time: Mapped[datetime]
    end_time: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime]
    host: Mapped[str | None] = mapped_column(String(255))
    source_path: Mapped[str | None] = mapped_column(Text)
    # The listing's copy of the run's hyperparameters and final stats as JSON objects, kept
    # by the writes that change them (``writes``); NULL: not kept (rows another program
    # wrote), read from their tables instead. Deferred: only ``runs list --json`` reads them.
    hyperparams_json: Mapped[str | None] = mapped_column(Text, deferred=True)
    final_stats_json: Mapped[str | None] = mapped_column(Text, deferred=True)

    configurations: Mapped[list[RunConfiguration]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    metrics: Mapped[list[RunMetric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    clients: Mapped[list[Client]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    rounds: Mapped[list[Round]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    server_evaluations: Mapped[list[ServerEvaluation]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    artifacts: Mapped[list[RunArtifact]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class RunConfiguration(Base):
    """One hyperparameter; nested keys flattened as ``a.b``, the value JSON-encoded."""

    __tablename__ = "run_configurations"
    __table_args__ = (UniqueConstraint("run_pk", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = _run_fk()
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="configurations")


class Client(Base):
    """A federated client, unique per run (the same node id in two runs is two rows)."""

    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("run_pk", "client_identifier"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = _run_fk()
    client_identifier: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    partition_id: Mapped[str | None] = mapped_column(String(64))
    """The client's node config ``partition-id`` (its share of the data), when it has one."""

    run: Mapped[Run] = relationship(back_populates="clients")


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_pk", "round_number"), _one_of("status", ROUND_STATUSES))

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = _run_fk()
    round_number: Mapped[int]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    server_metrics: Mapped[dict[str, Any] | None]
    aggregated_client_metrics: Mapped[dict[str, Any] | None]
    num_clients: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16))

    run: Mapped[Run] = relationship(back_populates="rounds")


class RunMetric(Base):
    __tablename__ = "run_metrics"
    # No CHECK constraints here, unlike runs: the store computes dataset_type and validates
    # context before inserting, and SQLite evaluating two IN-list CHECKs per row halves the
    # bulk-insert rate (140k vs 260k rows/s measured).
    __table_args__ = (
        # Every query filters by run; this one index serves them all (dataset type and
        # client queries scan one run's rows). Each extra index costs bulk-insert speed.
        Index(None, "run_pk", "context", "step"),
        # Partial: centralized rows (no client, no round) never touch these; they keep
        # deleting a client or round from scanning the whole table.
        Index(
            None,
            "client_pk",
            sqlite_where=text("client_pk IS NOT NULL"),
            postgresql_where=text("client_pk IS NOT NULL"),
        ),
        Index(
            None,
            "round_pk",
            sqlite_where=text("round_pk IS NOT NULL"),
            postgresql_where=text("round_pk IS NOT NULL"),
        ),
        # Partial and covering: `runs list` reads every run's final stats from it alone
        # (~10 rows a run) instead of scanning every epoch metric of every run.
        Index(
            "ix_run_metrics_final_stats",
            "run_pk",
            "metric_name",
            "metric_value",
            sqlite_where=text("context = 'final_epoch'"),
            postgresql_where=text("context = 'final_epoch'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = _run_fk()
    metric_name: Mapped[str] = mapped_column(String(255))
    metric_value: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer)
    dataset_type: Mapped[str] = mapped_column(String(16))
    context: Mapped[str] = mapped_column(String(16))
    client_pk: Mapped[int | None] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    round_pk: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    recorded_at: Mapped[datetime]

    run: Mapped[Run] = relationship(back_populates="metrics")
    client: Mapped[Client | None] = relationship()
    round: Mapped[Round | None] = relationship()


class ServerEvaluation(Base):
    """The server's own evaluation of the global model in one round (one row per run and round)."""

    __tablename__ = "server_evaluations"
    __table_args__ = (UniqueConstraint("run_pk", "round_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = _run_fk()
    round_pk: Mapped[int | None] = mapped_column(
        ForeignKey("rounds.id", ondelete="CASCADE"), index=True
    )
    round_number: Mapped[int]
    loss: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    precision: Mapped[float | None] = mapped_column(Float)
    recall: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    auroc: Mapped[float | None] = mapped_column(Float)
    cm_tp: Mapped[float | None] = mapped_column(Float)
    cm_tn: Mapped[float | None] = mapped_column(Float)
    cm_fp: Mapped[float | None] = mapped_column(Float)
    cm_fn: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    recorded_at: Mapped[datetime]

    run: Mapped[Run] = relationship(back_populates="server_evaluations")


class RunArtifact(Base):
    __tablename__ = "run_artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    step: Mapped[int | None]
    epoch: Mapped[int | None]
    metric_name: Mapped[str | None] = mapped_column(String(255))
    metric_value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]

    run: Mapped[Run] = relationship(back_populates="artifacts")


# Core tables for bulk INSERTs (one executemany, no ORM unit of work).
RUN_METRICS = cast(Table, RunMetric.__table__)
RUN_CONFIGURATIONS = cast(Table, RunConfiguration.__table__)
