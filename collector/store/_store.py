"""The ``Store``: run lifecycle, bulk metric persistence, federated context, read queries.

Every public method is one short transaction (``session_scope``); write transactions take the
database's write lock up front on SQLite (see ``engine``). Metric values follow the rule in
``collector.store.values``: never stored unless finite, never raising into the caller.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from collector.config import Settings, mask_url
from collector.errors import RunIdInUseError, UnknownRunError
from collector.ids import new_run_id, validate_run_id
from collector.store import run_listing, sql_queries, writes
from collector.store.bulk import insert_metric_rows
from collector.store.engine import (
    DatabaseUnavailableError,
    build_engine,
    parse_db_url,
    write_engine,
)
from collector.store.metric_rows import (
    MetricTarget,
    epoch_rows,
    server_evaluation_fields,
)
from collector.store.migrate import upgrade_to_head
from collector.store.models import (
    METRIC_CONTEXTS,
    TRAINING_MODES,
    Run,
    RunArtifact,
    RunMetric,
    ServerEvaluation,
    utc_now,
)
from collector.store.records import (
    MetricRecord,
    RoundRecord,
    RunListing,
    RunSummary,
    ServerEvaluationRecord,
)
from collector.store.session import session_scope
from collector.store.values import FiniteValues, storable_name, storable_text

FINISHED_STATUSES = ("completed", "failed")
ARTIFACT_KIND_CHARS = 32


class RunExistsError(RunIdInUseError):
    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, "a run with this id is in the store")


class Store:
    """Run metadata in any SQLAlchemy database; the schema is upgraded on first use."""

    def __init__(self, url: str, *, stale_after: timedelta | None = None) -> None:
        """``stale_after``: reads and new runs first mark ``in_progress`` runs whose heartbeat
        is older as ``crashed`` (their process died without finishing them); None never does."""
        parse_db_url(url)
        self.url = url
        self.stale_after = stale_after
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._values = FiniteValues()
        self._read_sessions: sessionmaker[Session] | None = None
        self._write_sessions: sessionmaker[Session] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(settings.db_url, stale_after=timedelta(seconds=settings.stale_after_s))

    def __repr__(self) -> str:
        return f"Store({mask_url(self.url)!r})"

    @property
    def engine(self) -> Engine:
        """The engine (created on first access; the schema is not touched here)."""
        with self._lock:
            if self._engine is None:
                self._engine = build_engine(self.url)
            return self._engine

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (done implicitly on first use)."""
        engine = self.engine
        with self._lock:
            if self._ready:
                return
            with self._unavailable_as_error():
                upgrade_to_head(engine)
            self._read_sessions = sessionmaker(bind=engine, expire_on_commit=False)
            self._write_sessions = sessionmaker(bind=write_engine(engine), expire_on_commit=False)
            self._ready = True

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A ``session_scope`` on this store: commits, rolls back on error, always closes."""
        self.upgrade()
        make = self._write_sessions if write else self._read_sessions
        assert make is not None
        with self._unavailable_as_error(), session_scope(make) as session:
            yield session

    # -- run lifecycle -------------------------------------------------------------------

    def create_run(
        self,
        experiment: str,
        mode: str = "centralized",
        *,
        run_id: str | None = None,
        source_path: str | None = None,
        host: str | None = None,
        hyperparams: Mapping[str, object] | None = None,
        started_at: datetime | None = None,
    ) -> str:
        """A new run in status ``in_progress``; returns its run_id. ``started_at`` (default
        now) is for runs recorded earlier (a replayed journal)."""
        if mode not in TRAINING_MODES:
            raise ValueError(f"mode must be one of {TRAINING_MODES}, got {mode!r}")
        self._mark_stale_runs()
        now = started_at or utc_now()
        run_id = validate_run_id(run_id or new_run_id(now))
        with self.session() as session:
            if session.scalar(select(Run.id).where(Run.run_id == run_id)) is not None:
                raise RunExistsError(run_id)
            run = Run(
                run_id=run_id,
                experiment_name=storable_name(experiment),
                training_mode=mode,
                status="in_progress",
                start_time=now,
                heartbeat_at=now,
                host=storable_name(host if host is not None else socket.gethostname()),
                source_path=None if source_path is None else storable_text(source_path),
                hyperparams_json="{}",
                final_stats_json="{}",
            )
            session.add(run)
            session.flush()
            if hyperparams:
                writes.upsert_hyperparams(session, run.id, hyperparams)
        return run_id

    def heartbeat(self, run_id: str) -> None:
        """Stamp a live run. One marked ``crashed`` while its heartbeats could not reach the
        database (an outage longer than the stale bound) is ``in_progress`` again."""
        with self.session() as session:
            result = session.execute(
                update(Run).where(Run.run_id == run_id).values(heartbeat_at=utc_now())
            )
            if cast(CursorResult[Any], result).rowcount == 0:
                raise UnknownRunError(run_id)
            session.execute(
                update(Run)
                .where(Run.run_id == run_id, Run.status == "crashed")
                .values(status="in_progress", end_time=None)
            )

    def complete_run(
        self, run_id: str, status: str = "completed", *, ended_at: datetime | None = None
    ) -> None:
        """Finish a run and store its final confusion-matrix stats (context ``final_epoch``)."""
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status must be one of {FINISHED_STATUSES}, got {status!r}")
        now = ended_at or utc_now()
        with self.session() as session:
            run = writes.find_run(session, run_id)
            run.status, run.end_time, run.heartbeat_at = status, now, now
            session.flush()
            writes.write_final_stats(session, run.id, now)

    def mark_stale_runs_crashed(self, stale_after: timedelta) -> list[str]:
        """Runs still ``in_progress`` without a heartbeat for ``stale_after`` become ``crashed``
        (``run_listing.mark_stale_runs``); returns their ids, sorted."""
        with self.session() as session:
            return run_listing.mark_stale_runs(
                run_listing.SessionRows(session), utc_now() - stale_after
            )

    def mark_crashed(self, run_id: str) -> bool:
        """A run whose process is known to be gone: ``crashed`` if still ``in_progress``
        (ended at its last heartbeat); returns whether it was."""
        with self.session() as session:
            run = writes.find_run(session, run_id)
            if run.status != "in_progress":
                return False
            run.status, run.end_time = "crashed", run.heartbeat_at
            return True

    def _mark_stale_runs(self) -> None:
        if self.stale_after is not None:
            self.mark_stale_runs_crashed(self.stale_after)

    def save_hyperparams(self, run_id: str, params: Mapping[str, object]) -> None:
        """Insert or replace hyperparameters; nested mappings become ``outer.inner`` keys."""
        with self.session() as session:
            writes.upsert_hyperparams(session, writes.run_pk_of(session, run_id), params)

    # -- metrics ---------------------------------------------------------------------------

    def persist_epoch_metrics(
        self,
        run_id: str,
        epochs: Sequence[Mapping[str, object]],
        *,
        client_id: str | None = None,
        round_number: int | None = None,
        context: str = "epoch_end",
        recorded_at: datetime | None = None,
    ) -> int:
        """Bulk-insert every finite metric of ``epochs`` (one Core INSERT); returns rows written."""
        if context not in METRIC_CONTEXTS:
            raise ValueError(f"context must be one of {METRIC_CONTEXTS}, got {context!r}")
        with self.session() as session:
            run_pk = writes.run_pk_of(session, run_id)
            target = MetricTarget(
                run_pk,
                context,
                writes.client_pk_of(session, run_pk, client_id) if client_id is not None else None,
                writes.round_of(session, run_pk, round_number).id
                if round_number is not None
                else None,
            )
            rows = epoch_rows(epochs, target, self._values)
            insert_metric_rows(session, rows, recorded_at or utc_now())
            return len(rows)

    def record_round(
        self,
        run_id: str,
        round_number: int,
        *,
        server_metrics: Mapping[str, object] | None = None,
        aggregated_metrics: Mapping[str, object] | None = None,
        num_clients: int | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Create or update a round. Aggregated client metrics are also stored as run_metrics
        rows (context ``aggregated``, step = round number), replacing the round's earlier ones."""
        with self.session() as session:
            run_pk = writes.run_pk_of(session, run_id)
            round_ = writes.round_of(session, run_pk, round_number)
            if started_at is not None:
                round_.started_at = started_at
            if ended_at is not None:
                round_.ended_at, round_.status = ended_at, "completed"
            if num_clients is not None:
                round_.num_clients = num_clients
            if server_metrics is not None:
                round_.server_metrics = dict(self._values.pairs(server_metrics.items()))
            if aggregated_metrics is not None:
                finite = dict(self._values.pairs(aggregated_metrics.items()))
                round_.aggregated_client_metrics = finite
                writes.replace_aggregated_rows(
                    session,
                    MetricTarget(run_pk, "aggregated", None, round_.id),
                    round_number,
                    finite,
                )

    def add_server_evaluation(
        self,
        run_id: str,
        round_number: int,
        metrics: Mapping[str, object],
        *,
        recorded_at: datetime | None = None,
    ) -> None:
        """Store the server's evaluation of a round (one row per round; a repeat replaces it).

        Known names fill the columns (``loss``, ``accuracy``, ``precision``, ``recall``, ``f1``,
        ``auroc``, ``cm_tp/tn/fp/fn``, optionally prefixed ``server_``, ``eval_``, ``val_`` or
        ``test_``); every finite value is also kept in the ``metrics`` JSON column.
        """
        finite = dict(self._values.pairs(metrics.items()))
        columns = server_evaluation_fields(finite)
        with self.session() as session:
            run_pk = writes.run_pk_of(session, run_id)
            round_pk = writes.round_of(session, run_pk, round_number).id
            session.execute(
                delete(ServerEvaluation).where(
                    ServerEvaluation.run_pk == run_pk, ServerEvaluation.round_number == round_number
                )
            )
            session.add(
                ServerEvaluation(
                    run_pk=run_pk,
                    round_pk=round_pk,
                    round_number=round_number,
                    metrics=finite,
                    recorded_at=recorded_at or utc_now(),
                    **columns,
                )
            )

    def ensure_client(self, run_id: str, client_id: str, *, partition_id: str | None = None) -> int:
        """The clients row of ``client_id`` within this run (created if missing); its key.
        ``partition_id`` (the client's node config ``partition-id``) is recorded when given."""
        with self.session() as session:
            run_pk = writes.run_pk_of(session, run_id)
            return writes.client_pk_of(session, run_pk, client_id, partition_id)

    def add_artifact(
        self,
        run_id: str,
        path: str,
        *,
        kind: str = "checkpoint",
        step: int | None = None,
        epoch: int | None = None,
        metric_name: str | None = None,
        metric_value: float | None = None,
        created_at: datetime | None = None,
    ) -> None:
        value = None
        if metric_value is not None:
            value = self._values.value(metric_name or "artifact_metric", metric_value)
        with self.session() as session:
            session.add(
                RunArtifact(
                    run_pk=writes.run_pk_of(session, run_id),
                    kind=storable_text(kind, ARTIFACT_KIND_CHARS),
                    path=storable_text(path),
                    step=step,
                    epoch=epoch,
                    metric_name=None if metric_name is None else storable_name(metric_name),
                    metric_value=value,
                    created_at=created_at or utc_now(),
                )
            )

    def remove_artifacts(self, run_id: str, paths: Sequence[str]) -> int:
        """Forget artifacts whose files are gone (a checkpoint that fell out of ModelCheckpoint's
        top k); returns how many rows were removed."""
        if not paths:
            return 0
        stored = [storable_text(p) for p in paths]
        with self.session() as session:
            result = session.execute(
                delete(RunArtifact).where(
                    RunArtifact.run_pk == writes.run_pk_of(session, run_id),
                    RunArtifact.path.in_(stored),
                )
            )
            return int(cast(CursorResult[Any], result).rowcount or 0)

    # -- reads -----------------------------------------------------------------------------

    def get_run(self, run_id: str, *, with_metrics: bool = False) -> RunSummary:
        self._mark_stale_runs()
        with self.session(write=False) as session:
            found = sql_queries.run_summaries(
                session, Run.run_id == run_id, limit=1, with_metrics=with_metrics
            )
        if not found:
            raise UnknownRunError(run_id)
        return found[0]

    def list_runs(
        self, *, limit: int | None = None, with_metrics: bool = False
    ) -> list[RunSummary]:
        """Runs, newest first, loaded eagerly (a fixed number of statements whatever their count)."""
        self._mark_stale_runs()
        with self.session(write=False) as session:
            return sql_queries.run_summaries(session, limit=limit, with_metrics=with_metrics)

    def listing(
        self, wanted: run_listing.ListingFilter | None = None, *, details: bool = True
    ) -> list[RunListing]:
        """What ``runs list`` shows, newest first, in one statement whatever the number of
        runs (``run_listing``: three where runs were written by another program and
        ``details``, hyperparameters and final stats, are asked for)."""
        self._mark_stale_runs()
        wanted = wanted or run_listing.ListingFilter()
        with self.session(write=False) as session:
            return run_listing.list_runs(run_listing.SessionRows(session), wanted, details=details)

    def listing_json(self, wanted: run_listing.ListingFilter | None = None) -> str:
        """``listing()``'s runs with their details as the JSON array ``runs list --json``
        prints (``run_listing.listing_json``), in one statement (three where runs were
        written by another program)."""
        self._mark_stale_runs()
        wanted = wanted or run_listing.ListingFilter()
        with self.session(write=False) as session:
            return run_listing.listing_json(run_listing.SessionRows(session), wanted)

    def metrics_by_context(self, run_id: str, context: str) -> list[MetricRecord]:
        with self.session(write=False) as session:
            return sql_queries.metric_records(
                session, writes.run_pk_of(session, run_id), RunMetric.context == context
            )

    def metrics_by_dataset_type(self, run_id: str, dataset_type: str) -> list[MetricRecord]:
        with self.session(write=False) as session:
            run_pk = writes.run_pk_of(session, run_id)
            return sql_queries.metric_records(
                session, run_pk, RunMetric.dataset_type == dataset_type
            )

    def metrics_grouped_by_client(self, run_id: str) -> dict[str, list[MetricRecord]]:
        """Client metrics of a federated run, keyed by client_id, each list ordered by step."""
        with self.session(write=False) as session:
            records = sql_queries.metric_records(
                session, writes.run_pk_of(session, run_id), RunMetric.client_pk.is_not(None)
            )
        grouped: dict[str, list[MetricRecord]] = {}
        for record in records:
            grouped.setdefault(cast(str, record.client_id), []).append(record)
        return grouped

    def aggregated_metrics(self, run_id: str) -> list[MetricRecord]:
        return self.metrics_by_context(run_id, "aggregated")

    def all_metrics(self, run_id: str) -> list[MetricRecord]:
        with self.session(write=False) as session:
            return sql_queries.metric_records(session, writes.run_pk_of(session, run_id))

    def latest_metrics(self, run_id: str, context: str = "epoch_end") -> dict[str, float]:
        """Each metric's value at its last step (client-less rows), e.g. for a summary."""
        with self.session(write=False) as session:
            return sql_queries.latest_values(session, writes.run_pk_of(session, run_id), context)

    def latest_metric_steps(
        self, run_id: str, context: str = "epoch_end"
    ) -> dict[str, tuple[int, float]]:
        """Each metric's last step and its value there (client-less rows)."""
        with self.session(write=False) as session:
            return sql_queries.latest_steps(session, writes.run_pk_of(session, run_id), context)

    def server_evaluations(self, run_id: str) -> list[ServerEvaluationRecord]:
        with self.session(write=False) as session:
            return sql_queries.server_evaluation_records(session, writes.run_pk_of(session, run_id))

    def rounds(self, run_id: str) -> list[RoundRecord]:
        with self.session(write=False) as session:
            return sql_queries.round_records(session, writes.run_pk_of(session, run_id))

    def final_stats(self, run_id: str) -> dict[str, float]:
        return {m.name: m.value for m in self.metrics_by_context(run_id, "final_epoch")}

    # -- errors --------------------------------------------------------------------------

    @contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError) or not _is_connectivity_error(exc):
                raise
            detail = str(exc.orig).strip().splitlines()
            raise DatabaseUnavailableError(
                f"database {mask_url(self.url)} is unavailable: {detail[0] if detail else exc}"
            ) from exc


def _is_connectivity_error(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
