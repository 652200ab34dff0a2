"""Read queries. Each takes an open session and returns frozen records, never ORM objects."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session, selectinload

from collector.store.models import (
    Client,
    Round,
    Run,
    RunArtifact,
    RunConfiguration,
    RunMetric,
    ServerEvaluation,
)
from collector.store.records import (
    ArtifactRecord,
    MetricRecord,
    RoundRecord,
    RunSummary,
    ServerEvaluationRecord,
)


def metric_records(
    session: Session, run_pk: int, *where: ColumnElement[bool]
) -> list[MetricRecord]:
    query = _metric_select().where(RunMetric.run_pk == run_pk, *where)
    query = query.order_by(Client.client_identifier.nulls_first(), RunMetric.step, RunMetric.id)
    return [MetricRecord(*row) for row in session.execute(query)]


def _metric_select() -> Select[str, float, int, str, str, str, int, datetime]:
    return (
        select(
            RunMetric.metric_name,
            RunMetric.metric_value,
            RunMetric.step,
            RunMetric.dataset_type,
            RunMetric.context,
            Client.client_identifier,
            Round.round_number,
            RunMetric.recorded_at,
        )
        .outerjoin(Client, RunMetric.client_pk == Client.id)
        .outerjoin(Round, RunMetric.round_pk == Round.id)
    )


def latest_values(session: Session, run_pk: int, context: str) -> dict[str, float]:
    """Each metric's value at its highest step (client-less rows only), e.g. for ``runs show``."""
    return {name: value for name, (_step, value) in latest_steps(session, run_pk, context).items()}


def latest_steps(session: Session, run_pk: int, context: str) -> dict[str, tuple[int, float]]:
    """Each metric's highest step and its value there (client-less rows only)."""
    latest = (
        select(RunMetric.metric_name, func.max(RunMetric.step).label("step"))
        .where(
            RunMetric.run_pk == run_pk, RunMetric.context == context, RunMetric.client_pk.is_(None)
        )
        .group_by(RunMetric.metric_name)
        .subquery()
    )
    query = (
        select(RunMetric.metric_name, RunMetric.step, RunMetric.metric_value)
        .join(
            latest,
            (RunMetric.metric_name == latest.c.metric_name) & (RunMetric.step == latest.c.step),
        )
        .where(
            RunMetric.run_pk == run_pk, RunMetric.context == context, RunMetric.client_pk.is_(None)
        )
        .order_by(RunMetric.metric_name, RunMetric.id)
    )
    return {name: (int(step), value) for name, step, value in session.execute(query)}


def server_evaluation_records(session: Session, run_pk: int) -> list[ServerEvaluationRecord]:
    query = (
        select(ServerEvaluation)
        .where(ServerEvaluation.run_pk == run_pk)
        .order_by(ServerEvaluation.round_number)
    )
    return [_server_evaluation_record(e) for e in session.scalars(query)]


def round_records(session: Session, run_pk: int) -> list[RoundRecord]:
    query = select(Round).where(Round.run_pk == run_pk).order_by(Round.round_number)
    return [_round_record(r) for r in session.scalars(query)]


def run_summaries(
    session: Session, *where: ColumnElement[bool], limit: int | None, with_metrics: bool
) -> list[RunSummary]:
    """Runs newest first with their relations, in a fixed number of statements (no N+1)."""
    metrics = Run.metrics if with_metrics else Run.metrics.and_(RunMetric.context == "final_epoch")
    query = (
        select(Run)
        .where(*where)
        .options(
            selectinload(Run.configurations),
            selectinload(Run.clients),
            selectinload(Run.rounds),
            selectinload(Run.artifacts),
            selectinload(metrics),
        )
        .order_by(Run.start_time.desc(), Run.id.desc())
        .limit(limit)
    )
    return [_summary(run, with_metrics) for run in session.scalars(query)]


def _summary(run: Run, with_metrics: bool) -> RunSummary:
    client_names = {c.id: c.client_identifier for c in run.clients}
    round_numbers = {r.id: r.round_number for r in run.rounds}
    metrics = sorted(run.metrics, key=lambda m: (m.step, m.id))
    return RunSummary(
        run_id=run.run_id,
        experiment=run.experiment_name,
        mode=run.training_mode,
        status=run.status,
        start_time=run.start_time,
        end_time=run.end_time,
        heartbeat_at=run.heartbeat_at,
        host=run.host,
        source_path=run.source_path,
        hyperparams=decode_hyperparams(run.configurations),
        final_stats={m.metric_name: m.metric_value for m in metrics if m.context == "final_epoch"},
        clients=tuple(sorted(client_names.values())),
        client_partitions={
            c.client_identifier: c.partition_id for c in run.clients if c.partition_id is not None
        },
        rounds=tuple(_round_record(r) for r in sorted(run.rounds, key=lambda r: r.round_number)),
        artifacts=tuple(_artifact_record(a) for a in sorted(run.artifacts, key=lambda a: a.id)),
        metrics=tuple(
            MetricRecord(
                m.metric_name,
                m.metric_value,
                m.step,
                m.dataset_type,
                m.context,
                client_names.get(m.client_pk) if m.client_pk is not None else None,
                round_numbers.get(m.round_pk) if m.round_pk is not None else None,
                m.recorded_at,
            )
            for m in metrics
        )
        if with_metrics
        else (),
    )


def decode_hyperparams(rows: Sequence[RunConfiguration]) -> dict[str, Any]:
    return {row.key: json.loads(row.value) for row in sorted(rows, key=lambda r: r.key)}


def _round_record(r: Round) -> RoundRecord:
    return RoundRecord(
        r.round_number,
        r.status,
        r.started_at,
        r.ended_at,
        r.num_clients,
        r.server_metrics,
        r.aggregated_client_metrics,
    )


def _artifact_record(a: RunArtifact) -> ArtifactRecord:
    return ArtifactRecord(
        a.kind, a.path, a.step, a.epoch, a.metric_name, a.metric_value, a.created_at
    )


def _server_evaluation_record(e: ServerEvaluation) -> ServerEvaluationRecord:
    return ServerEvaluationRecord(
        e.round_number,
        e.loss,
        e.accuracy,
        e.precision,
        e.recall,
        e.f1,
        e.auroc,
        e.cm_tp,
        e.cm_tn,
        e.cm_fp,
        e.cm_fn,
        e.metrics,
        e.recorded_at,
    )
