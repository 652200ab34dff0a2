"""``runs list`` on a SQLite file with Python's own ``sqlite3``: no SQLAlchemy to import.

Only where the answer is the store's own: a plain file URL (``sqlite:///path``), a file that
exists, its schema at the newest migration. Anything else (a new or older database that
needs migrating, URL options, another backend) returns None and the caller asks the
``Store``, which creates, migrates and reports errors as everywhere else. The statements are
``run_listing``'s, the ones the store runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from collector.config import SQLITE_FILE_URL
from collector.store import run_listing
from collector.store.records import RunListing
from collector.store.schema_revision import HEAD_REVISION

_Listed = TypeVar("_Listed")

BUSY_TIMEOUT_S = 30.0
"""As long as the store's engine waits for a writer (``engine.BUSY_TIMEOUT_S``, which this
module cannot import: it pulls in SQLAlchemy)."""


class _Rows:
    """``run_listing.SqlRows`` on a ``sqlite3`` connection."""

    is_sqlite = True

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __call__(self, sql: str, params: Mapping[str, object]) -> Sequence[tuple[Any, ...]]:
        return self._connection.execute(sql, params).fetchall()


def sqlite_file_of(db_url: str) -> Path | None:
    """The file of a plain SQLite file URL; None for any other URL."""
    match = SQLITE_FILE_URL.fullmatch(db_url)
    if match is None or match["path"] == ":memory:" or match["path"].startswith("file:"):
        return None
    return Path(match["path"]).expanduser()


def listing(
    db_url: str,
    wanted: run_listing.ListingFilter,
    *,
    details: bool,
    stale_after: timedelta | None,
) -> list[RunListing] | None:
    """What ``Store.listing`` returns, read with ``sqlite3``; None where only the store can
    answer (see the module doc)."""
    return _read(
        db_url, stale_after, lambda rows: run_listing.list_runs(rows, wanted, details=details)
    )


def listing_json(
    db_url: str, wanted: run_listing.ListingFilter, *, stale_after: timedelta | None
) -> str | None:
    """What ``Store.listing_json`` returns, read with ``sqlite3``; None as above."""
    return _read(db_url, stale_after, lambda rows: run_listing.listing_json(rows, wanted))


def _read(
    db_url: str, stale_after: timedelta | None, reader: Callable[[_Rows], _Listed]
) -> _Listed | None:
    path = sqlite_file_of(db_url)
    if path is None or not path.is_file():
        return None
    try:
        with _connected(path) as connection:
            rows = _Rows(connection)
            if not _at_head(rows):
                return None
            if stale_after is not None:
                with _transaction(connection, "BEGIN IMMEDIATE"):
                    run_listing.mark_stale_runs(rows, datetime.now(UTC) - stale_after)
            with _transaction(connection, "BEGIN"):  # one snapshot for every statement
                return reader(rows)
    except sqlite3.Error:
        return None  # the store reads it again and reports what is wrong in its own words


@contextmanager
def _connected(path: Path) -> Iterator[sqlite3.Connection]:
    # isolation_level=None: transactions are the explicit BEGINs below, as the store's
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    with closing(connection):
        yield connection


@contextmanager
def _transaction(connection: sqlite3.Connection, begin: str) -> Iterator[None]:
    connection.execute(begin)
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _at_head(rows: _Rows) -> bool:
    try:
        stamped = rows("SELECT version_num FROM alembic_version", {})
    except sqlite3.OperationalError:  # no version table: a database the store never opened
        return False
    return {row[0] for row in stamped} == {HEAD_REVISION}
