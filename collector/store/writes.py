"""Write helpers that work inside an open session: lookups, get-or-create of clients and
rounds (resolved within one run), hyperparameter upserts, aggregated rows, final stats.

The hyperparameter and final-stat writes also keep the listing's copy of what they changed on
the run's row (``run_listing``), read back as stored, under a lock on that row so two writers
of one run cannot each keep a copy missing the other's rows (PostgreSQL; SQLite has one
writer at a time)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from collector.errors import UnknownRunError
from collector.store import run_listing
from collector.store.bulk import insert_metric_rows
from collector.store.metric_rows import (
    ConfusionMatrix,
    MetricTarget,
    cm_metric_names,
    latest_confusion_matrix,
    named_rows,
)
from collector.store.models import (
    RUN_CONFIGURATIONS,
    Client,
    Round,
    Run,
    RunConfiguration,
    RunMetric,
    ServerEvaluation,
    utc_now,
)
from collector.store.values import storable_name, storable_text

PARTITION_ID_CHARS = 64


def find_run(session: Session, run_id: str) -> Run:
    run = session.scalar(select(Run).where(Run.run_id == run_id))
    if run is None:
        raise UnknownRunError(run_id)
    return run


def run_pk_of(session: Session, run_id: str) -> int:
    run_pk = session.scalar(select(Run.id).where(Run.run_id == run_id))
    if run_pk is None:
        raise UnknownRunError(run_id)
    return run_pk


def client_pk_of(
    session: Session, run_pk: int, client_id: str, partition_id: str | None = None
) -> int:
    """Get or create, resolved within the run; a concurrent creator wins without an error.
    ``partition_id``, when given, is recorded on the row."""
    found = _client_pk(session, run_pk, client_id)
    if partition_id is not None:
        session.execute(
            update(Client)
            .where(Client.id == found)
            .values(partition_id=storable_text(str(partition_id), PARTITION_ID_CHARS))
        )
    return found


def _client_pk(session: Session, run_pk: int, client_id: str) -> int:
    client_id = storable_name(client_id)  # Flower node ids arrive as ints despite the annotation
    query = select(Client.id).where(Client.run_pk == run_pk, Client.client_identifier == client_id)
    found = session.scalar(query)
    if found is None:
        try:
            with session.begin_nested():
                session.add(Client(run_pk=run_pk, client_identifier=client_id))
        except IntegrityError:
            pass
        found = session.scalar(query)
    assert found is not None
    return found


def round_of(session: Session, run_pk: int, round_number: int) -> Round:
    query = select(Round).where(Round.run_pk == run_pk, Round.round_number == round_number)
    found = session.scalar(query)
    if found is None:
        try:
            with session.begin_nested():
                session.add(Round(run_pk=run_pk, round_number=round_number, status="in_progress"))
        except IntegrityError:
            pass
        found = session.scalar(query)
    assert found is not None
    return found


def flatten(params: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def upsert_hyperparams(session: Session, run_pk: int, params: Mapping[str, object]) -> None:
    # Keys as stored: two spellings that store alike keep the later value, never fail both.
    flat = {storable_name(key): value for key, value in flatten(params).items()}
    if not flat:
        return
    _lock_run(session, run_pk)
    session.execute(
        delete(RunConfiguration).where(
            RunConfiguration.run_pk == run_pk, RunConfiguration.key.in_(list(flat))
        )
    )
    session.execute(
        insert(RUN_CONFIGURATIONS),
        [
            {"run_pk": run_pk, "key": key, "value": json.dumps(value, default=str)}
            for key, value in flat.items()
        ],
    )
    stored = session.execute(
        select(RunConfiguration.key, RunConfiguration.value).where(
            RunConfiguration.run_pk == run_pk
        )
    )
    kept = run_listing.hyperparams_text(stored.all())
    session.execute(update(Run).where(Run.id == run_pk).values(hyperparams_json=kept))


def replace_aggregated_rows(
    session: Session, target: MetricTarget, round_number: int, finite: Mapping[str, float]
) -> None:
    session.execute(
        delete(RunMetric).where(
            RunMetric.run_pk == target.run_pk,
            RunMetric.round_pk == target.round_pk,
            RunMetric.context == "aggregated",
        )
    )
    insert_metric_rows(session, named_rows(finite.items(), round_number, target), utc_now())


def write_final_stats(session: Session, run_pk: int, now: datetime) -> None:
    """Replace the run's final_epoch rows with stats from its newest confusion matrix."""
    _lock_run(session, run_pk)
    session.execute(
        delete(RunMetric).where(RunMetric.run_pk == run_pk, RunMetric.context == "final_epoch")
    )
    found = _newest_confusion_matrix(session, run_pk)
    if found is not None:
        step, matrix = found
        target = MetricTarget(run_pk, "final_epoch")
        insert_metric_rows(session, named_rows(matrix.stats().items(), step, target), now)
    stored = session.execute(
        select(RunMetric.metric_name, RunMetric.metric_value).where(
            RunMetric.run_pk == run_pk, RunMetric.context == "final_epoch"
        )
    )
    kept = run_listing.final_stats_text(stored.all())
    session.execute(update(Run).where(Run.id == run_pk).values(final_stats_json=kept))


def _lock_run(session: Session, run_pk: int) -> None:
    session.execute(select(Run.id).where(Run.id == run_pk).with_for_update())


def _newest_confusion_matrix(session: Session, run_pk: int) -> tuple[int, ConfusionMatrix] | None:
    """Centralized epochs first, then the server's evaluations, then client aggregates."""
    return (
        _metric_confusion_matrix(session, run_pk, "epoch_end")
        or _server_confusion_matrix(session, run_pk)
        or _metric_confusion_matrix(session, run_pk, "aggregated")
    )


def _metric_confusion_matrix(
    session: Session, run_pk: int, context: str
) -> tuple[int, ConfusionMatrix] | None:
    rows = session.execute(
        select(RunMetric.step, RunMetric.metric_name, RunMetric.metric_value).where(
            RunMetric.run_pk == run_pk,
            RunMetric.context == context,
            RunMetric.client_pk.is_(None),
            RunMetric.metric_name.in_(cm_metric_names()),
        )
    )
    return latest_confusion_matrix((r.step, r.metric_name, r.metric_value) for r in rows)


def _server_confusion_matrix(session: Session, run_pk: int) -> tuple[int, ConfusionMatrix] | None:
    evaluations = session.scalars(
        select(ServerEvaluation)
        .where(ServerEvaluation.run_pk == run_pk)
        .order_by(ServerEvaluation.round_number.desc())
    )
    rows = (
        (e.round_number, f"server_{name}", value)
        for e in evaluations
        for name in ("cm_tp", "cm_tn", "cm_fp", "cm_fn", "auroc")
        if (value := getattr(e, name)) is not None
    )
    return latest_confusion_matrix(rows)
