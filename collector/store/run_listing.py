"""The run listing (``runwatch runs list``): what the listing shows and nothing more.

Each run's own columns in one statement, with ``details`` its hyperparameters and final stats
too: the writes that change them keep a copy of each as JSON text on the run's row
(``runs.hyperparams_json``, ``runs.final_stats_json``, written by ``collector.store.writes``
with ``hyperparams_text``/``final_stats_text`` below), as MLflow keeps its latest metrics
beside their history, so ``runs list --json`` splices stored text instead of reading and
encoding 160,000 values at 10,000 runs. Runs without a copy (rows another
program wrote) are read from their tables in two more statements, restricted by subqueries
(never by a list of bound ids): any number of runs costs one statement, or three. Clients,
rounds, artifacts and metrics are ``runs show``'s (``Store.get_run``).

The statements are plain SQL with named binds, read by a ``SqlRows`` — the store's SQLAlchemy
session on any backend (``SessionRows``), or Python's own ``sqlite3`` on a SQLite file at the
current schema (``collector.store.sqlite_listing``), which spares ``runs list`` the half
second SQLAlchemy takes to import. This module imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from collector.store.records import RunListing, listing_columns

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

RUN_COLUMNS = (
    "id, run_id, experiment_name, training_mode, status, "
    "start_time, end_time, heartbeat_at, host, source_path"
)
DETAILS_COLUMNS = "hyperparams_json, final_stats_json"
UNKEPT = (
    "run_pk IN (SELECT id FROM runs WHERE hyperparams_json IS NULL OR final_stats_json IS NULL)"
)
"""Runs whose details have no copy on their row: their rows were written by another program."""
FINAL_STATS = "context = 'final_epoch'"
NEWEST_FIRST = "ORDER BY start_time DESC, id DESC"
SQLITE_MOMENT = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLAlchemy stores a datetime in SQLite (naive UTC text): binds compare with it."""

STALE_RUNS = "SELECT run_id FROM runs WHERE status = 'in_progress' AND heartbeat_at < :cutoff"
"""Runs still ``in_progress`` whose heartbeat is older than the cutoff: their process died
without finishing them; they ended at their last heartbeat."""
MARK_STALE = (
    "UPDATE runs SET status = 'crashed', end_time = heartbeat_at "
    "WHERE status = 'in_progress' AND heartbeat_at < :cutoff"
)


class SqlRows(Protocol):
    """Runs one SQL statement with named binds (``:name``) and returns its rows."""

    @property
    def is_sqlite(self) -> bool: ...

    def __call__(self, sql: str, params: Mapping[str, object]) -> Sequence[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class ListingFilter:
    limit: int | None = None
    """At most this many runs (the newest)."""
    since: datetime | None = None
    """Runs started at or after this moment."""
    experiment: str | None = None
    """Runs of this experiment only (its name as stored)."""

    def listed_runs(self, rows: SqlRows) -> tuple[str, dict[str, object]]:
        """``FROM runs ...`` selecting the listed runs newest first, and its binds."""
        conditions: list[str] = []
        params: dict[str, object] = {}
        if self.since is not None:
            conditions.append("start_time >= :since")
            params["since"] = bound_moment(rows, self.since)
        if self.experiment is not None:
            conditions.append("experiment_name = :experiment")
            params["experiment"] = self.experiment
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"FROM runs{where} {NEWEST_FIRST}"
        if self.limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = self.limit
        return sql, params

    @property
    def selects_all(self) -> bool:
        return self.limit is None and self.since is None and self.experiment is None


Details = str | dict[str, Any]
"""A run's hyperparameters or final stats: the JSON text kept on its row, or the values read
from their table where no copy was kept."""


def list_runs(rows: SqlRows, wanted: ListingFilter, *, details: bool) -> list[RunListing]:
    """Runs newest first (start time, then insertion); see the module doc for the statements.
    Read in one transaction: the caller's."""
    if not details:
        listed, params = wanted.listed_runs(rows)
        return [_listing(row) for row in rows(f"SELECT {RUN_COLUMNS} {listed}", params)]
    detailed = _detailed_runs(rows, wanted)
    texts = [kept for _, *both in detailed for kept in both if isinstance(kept, str)]
    # one json.loads of every text costs a tenth of one per text
    decoded = iter(json.loads("[" + ",".join(texts) + "]"))
    return [
        _listing(
            row,
            hyperparams if isinstance(hyperparams, dict) else next(decoded),
            final_stats if isinstance(final_stats, dict) else next(decoded),
        )
        for row, hyperparams, final_stats in detailed
    ]


def listing_json(rows: SqlRows, wanted: ListingFilter) -> str:
    """The detailed listing as ``runs list --json`` prints it: a JSON array of
    ``RunListing.to_dict()``, one run per line, the kept texts spliced in undecoded."""
    items = [_item_json(*detailed) for detailed in _detailed_runs(rows, wanted)]
    return "[\n" + ",\n".join(items) + "\n]" if items else "[]"


def _item_json(row: Sequence[Any], hyperparams: Details, final_stats: Details) -> str:
    if isinstance(hyperparams, str) and isinstance(final_stats, str):
        head = json.dumps(_own_columns(row))[:-1]
        return f'{head}, "hyperparams": {hyperparams}, "final_stats": {final_stats}}}'
    return json.dumps(
        {
            **_own_columns(row),
            "hyperparams": _decoded(hyperparams),
            "final_stats": _decoded(final_stats),
        }
    )


def _decoded(details: Details) -> dict[str, Any]:
    return details if isinstance(details, dict) else json.loads(details)


def _own_columns(row: Sequence[Any]) -> dict[str, Any]:
    """``RunListing.own_columns()`` of a run's row, its moments written from SQLite's stored
    text, not parsed and formatted again (a third of the listing's time)."""
    _pk, run_id, experiment, mode, status, start, end, heartbeat, host, source = row
    started, ended = read_moment(start), read_moment(end)
    duration = None if ended is None or started is None else (ended - started).total_seconds()
    return listing_columns(
        run_id,
        experiment,
        mode,
        status,
        iso_moment(start),
        iso_moment(end),
        iso_moment(heartbeat),
        duration,
        host,
        source,
    )


def iso_moment(value: datetime | str | None) -> str | None:
    """A stored moment as ``datetime.isoformat()`` writes it in UTC."""
    if isinstance(value, str) and len(value) == len("2026-01-01 00:00:00.000000"):
        # SQLite's naive UTC text: microseconds always, which isoformat() leaves out at zero
        seconds = value[:10] + "T" + value[11:19]
        return f"{seconds}+00:00" if value.endswith(".000000") else f"{seconds}{value[19:]}+00:00"
    moment = read_moment(value)
    return moment.isoformat() if moment is not None else None


def hyperparams_text(stored: Iterable[Sequence[str]]) -> str:
    """The JSON text kept of a run's hyperparameters, from its (key, JSON value) rows."""
    return json.dumps(_by_name({key: json.loads(value) for key, value in stored}))


def final_stats_text(stored: Iterable[Sequence[Any]]) -> str:
    """The JSON text kept of a run's final stats, from its (name, value) rows."""
    return json.dumps(_by_name({name: value for name, value in stored}))


def _by_name(values: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(values.items()))


def _detailed_runs(
    rows: SqlRows, wanted: ListingFilter
) -> list[tuple[Sequence[Any], Details, Details]]:
    """Each listed run's columns with its hyperparameters and its final stats."""
    listed, params = wanted.listed_runs(rows)
    runs = rows(f"SELECT {RUN_COLUMNS}, {DETAILS_COLUMNS} {listed}", params)
    if all(row[-1] is not None and row[-2] is not None for row in runs):
        return [(row[:-2], row[-2], row[-1]) for row in runs]
    hyperparams, final_stats = _details_from_tables(rows, wanted)
    return [
        (
            row[:-2],
            row[-2] if row[-2] is not None else hyperparams.get(row[0], {}),
            row[-1] if row[-1] is not None else final_stats.get(row[0], {}),
        )
        for row in runs
    ]


def _details_from_tables(
    rows: SqlRows, wanted: ListingFilter
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Hyperparameters and final stats by run, of the listed runs without kept copies."""
    encoded = rows(*hyperparams_of(wanted, rows, unkept_only=True))
    # one json.loads of every value costs a tenth of one per value
    decoded = json.loads("[" + ",".join(row[2] for row in encoded) + "]")
    hyperparams: dict[int, dict[str, Any]] = {}
    for (run_pk, key, _), value in zip(encoded, decoded, strict=True):
        hyperparams.setdefault(run_pk, {})[key] = value
    final_stats: dict[int, dict[str, Any]] = {}
    for run_pk, name, value in rows(*final_stats_of(wanted, rows, unkept_only=True)):
        final_stats.setdefault(run_pk, {})[name] = value
    return (
        {run_pk: _by_name(values) for run_pk, values in hyperparams.items()},
        {run_pk: _by_name(values) for run_pk, values in final_stats.items()},
    )


def hyperparams_of(
    wanted: ListingFilter, rows: SqlRows, *, unkept_only: bool = False
) -> tuple[str, dict[str, object]]:
    """(run_pk, key, JSON text) of the listed runs' hyperparameters; ``unkept_only``: of
    those without their copy on the run's row."""
    sql = "SELECT run_pk, key, value FROM run_configurations"
    return _of_listed(sql, [], wanted, rows, unkept_only=unkept_only)


def final_stats_of(
    wanted: ListingFilter, rows: SqlRows, *, unkept_only: bool = False
) -> tuple[str, dict[str, object]]:
    """(run_pk, name, value) of the listed runs' final stats, by name (``unkept_only`` as
    above). The condition is written out, not bound: a planner uses the partial covering
    index ix_run_metrics_final_stats only when the query's condition is the index's at
    prepare time; reading it in its own order (run, name) needs no sort."""
    sql = "SELECT run_pk, metric_name, metric_value FROM run_metrics"
    order = "ORDER BY run_pk, metric_name"
    return _of_listed(sql, [FINAL_STATS], wanted, rows, unkept_only=unkept_only, order=order)


def _of_listed(
    sql: str,
    conditions: list[str],
    wanted: ListingFilter,
    rows: SqlRows,
    *,
    unkept_only: bool,
    order: str = "",
) -> tuple[str, dict[str, object]]:
    params: dict[str, object] = {}
    if unkept_only:
        conditions = [*conditions, UNKEPT]
    if not wanted.selects_all:
        listed, params = wanted.listed_runs(rows)
        conditions = [*conditions, f"run_pk IN (SELECT id {listed})"]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"{sql}{where} {order}".rstrip(), params


def mark_stale_runs(rows: SqlRows, cutoff: datetime) -> list[str]:
    """``STALE_RUNS`` at ``cutoff`` become ``crashed``; returns their ids, sorted. In the
    caller's write transaction. Selected then updated, not ``UPDATE … RETURNING``: SQLite has
    that only since 3.35, newer than some systems' (Debian 11 has 3.34)."""
    params = {"cutoff": bound_moment(rows, cutoff)}
    stale = sorted(row[0] for row in rows(STALE_RUNS, params))
    if stale:
        rows(MARK_STALE, params)
    return stale


def bound_moment(rows: SqlRows, moment: datetime) -> object:
    """A datetime as the backend compares it: SQLite's stored text, or an aware datetime."""
    moment = moment.astimezone(UTC)
    return moment.strftime(SQLITE_MOMENT) if rows.is_sqlite else moment


def read_moment(value: datetime | str | None) -> datetime | None:
    """A stored moment as an aware UTC datetime (SQLite gives naive UTC text)."""
    if value is None:
        return None
    if isinstance(value, str):  # naive UTC text; parsed with its offset: 6x faster than replace()
        return datetime.fromisoformat(value + "+00:00")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SessionRows:
    """``SqlRows`` on a SQLAlchemy session, in the session's transaction. Rows are the
    driver's own tuples: these columns (ints, text, floats) need none of SQLAlchemy's result
    processing, which costs more than the fetch on 100,000s of rows."""

    def __init__(self, session: Session) -> None:
        self._connection = session.connection()
        self.is_sqlite = self._connection.dialect.name == "sqlite"

    def __call__(self, sql: str, params: Mapping[str, object]) -> Sequence[tuple[Any, ...]]:
        from sqlalchemy import text

        result = self._connection.execute(text(sql), dict(params))
        try:
            return list(result.cursor.fetchall()) if result.returns_rows else []
        finally:
            result.close()


def _listing(
    row: Sequence[Any],
    hyperparams: dict[str, Any] | None = None,
    final_stats: dict[str, float] | None = None,
) -> RunListing:
    _pk, run_id, experiment, mode, status, start, end, heartbeat, host, source = row
    return RunListing(
        run_id,
        experiment,
        mode,
        status,
        read_moment(start),  # type: ignore[arg-type]  # never NULL
        read_moment(end),
        read_moment(heartbeat),  # type: ignore[arg-type]
        host,
        source,
        hyperparams if hyperparams is not None else {},
        final_stats if final_stats is not None else {},
    )
