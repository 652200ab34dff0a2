"""The run listing (``runwatch runs list``): what the listing shows and nothing more.

Each run's own columns in one statement; with ``details``, its hyperparameters and final
stats in a second one (a ``UNION ALL`` restricted to the listed runs by a subquery, never by
a list of bound ids), so any number of runs costs two statements. Clients, rounds, artifacts
and metrics are ``runs show``'s (``Store.get_run``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, literal, literal_column, null, select, union_all
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from collector.store.models import Run, RunConfiguration, RunMetric
from collector.store.records import RunListing

_HYPERPARAM = 0
_FINAL_STAT = 1
_IS_FINAL_STAT = RunMetric.context == literal_column("'final_epoch'")
"""Written out, not bound: a planner uses a partial index (ix_run_metrics_final_stats) only
when the query's condition is the index's at prepare time."""


@dataclass(frozen=True)
class ListingFilter:
    limit: int | None = None
    """At most this many runs (the newest)."""
    since: datetime | None = None
    """Runs started at or after this moment."""
    experiment: str | None = None
    """Runs of this experiment only (its name as stored)."""

    def where(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if self.since is not None:
            conditions.append(Run.start_time >= self.since)
        if self.experiment is not None:
            conditions.append(Run.experiment_name == self.experiment)
        return conditions

    @property
    def selects_all(self) -> bool:
        return self.limit is None and self.since is None and self.experiment is None


def list_runs(session: Session, wanted: ListingFilter, *, details: bool) -> list[RunListing]:
    """Runs newest first (start time, then insertion); see the module doc for the statements."""
    connection = session.connection()  # Core rows: no ORM row processing for 10,000s of rows
    runs = connection.execute(
        _newest_first(
            select(
                Run.id,
                Run.run_id,
                Run.experiment_name,
                Run.training_mode,
                Run.status,
                Run.start_time,
                Run.end_time,
                Run.heartbeat_at,
                Run.host,
                Run.source_path,
            ),
            wanted,
        )
    ).all()
    if not details or not runs:
        return [_listing(row) for row in runs]
    hyperparams: dict[int, dict[str, Any]] = {row[0]: {} for row in runs}
    final_stats: dict[int, dict[str, float]] = {row[0]: {} for row in runs}
    encoded: list[tuple[int, str, str]] = []
    for run_pk, kind, name, text, value in _plain_rows(connection.execute(_details(wanted))):
        if kind == _HYPERPARAM:
            encoded.append((run_pk, name, text))
        else:
            final_stats[run_pk][name] = value
    # each value is JSON text: one json.loads of them all costs a tenth of one per value
    decoded = json.loads("[" + ",".join(text for _, _, text in encoded) + "]")
    for (run_pk, name, _), value in zip(encoded, decoded, strict=True):
        hyperparams[run_pk][name] = value
    return [
        _listing(row, dict(sorted(hyperparams[row[0]].items())), final_stats[row[0]])
        for row in runs
    ]


def _plain_rows(result: CursorResult[Any]) -> list[tuple[Any, ...]]:
    """The driver's own tuples: these columns (ints, text, floats) need none of SQLAlchemy's
    result processing, which costs more than the fetch on 100,000s of rows."""
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _listing(
    row: Any, hyperparams: dict[str, Any] | None = None, final_stats: dict[str, float] | None = None
) -> RunListing:
    _pk, run_id, experiment, mode, status, start, end, heartbeat, host, source = row
    return RunListing(
        run_id,
        experiment,
        mode,
        status,
        start,
        end,
        heartbeat,
        host,
        source,
        hyperparams if hyperparams is not None else {},
        final_stats if final_stats is not None else {},
    )


def _newest_first(query: Any, wanted: ListingFilter) -> Any:
    return (
        query.where(*wanted.where())
        .order_by(Run.start_time.desc(), Run.id.desc())
        .limit(wanted.limit)
    )


def _details(wanted: ListingFilter) -> Any:
    """Hyperparameters and final stats of the listed runs: (run_pk, kind, name, json, value),
    final stats in the order they were stored."""
    hyperparams = select(
        RunConfiguration.run_pk,
        literal(_HYPERPARAM).label("kind"),
        RunConfiguration.id.label("row_id"),
        RunConfiguration.key.label("name"),
        RunConfiguration.value.label("text"),
        null().label("value"),
    )
    finals = select(
        RunMetric.run_pk,
        literal(_FINAL_STAT),
        RunMetric.id,
        RunMetric.metric_name,
        null(),
        RunMetric.metric_value,
    ).where(_IS_FINAL_STAT)
    if not wanted.selects_all:
        listed = _newest_first(select(Run.id), wanted).scalar_subquery()
        hyperparams = hyperparams.where(RunConfiguration.run_pk.in_(listed))
        finals = finals.where(RunMetric.run_pk.in_(listed))
    both = union_all(hyperparams, finals).subquery()
    return select(both.c.run_pk, both.c.kind, both.c.name, both.c.text, both.c.value).order_by(
        both.c.kind, both.c.row_id
    )
