"""Engine creation: SQLite tuned for several writing processes, any other SQLAlchemy URL as is.

SQLite gets WAL mode (readers never block the writer), a 30 s busy timeout, foreign keys, and
``BEGIN IMMEDIATE`` for write transactions. The last one matters: a deferred transaction that
reads first and writes later must upgrade its lock, and SQLite answers that upgrade with
SQLITE_BUSY at once, without waiting, when another process writes. Taking the write lock at
BEGIN makes every writer wait its turn through the busy timeout instead. Switching a new
database to WAL meets the same immediate SQLITE_BUSY while another process writes; it is
retried until the busy timeout.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from collector.config import mask_url
from collector.errors import ConfigError, RunwatchError

BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
WRITE_OPTION = "runwatch_write"


class DatabaseUnavailableError(RunwatchError):
    """The database cannot be reached or used (server down, unwritable file, ...)."""


def parse_db_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"RUNWATCH_DB_URL is not a valid SQLAlchemy URL ({mask_url(url)}): {exc}"
        ) from None


def build_engine(url: str) -> Engine:
    """An engine for ``url``; raises ConfigError naming RUNWATCH_DB_URL for a bad URL."""
    parsed = parse_db_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True, connect_args=_connect_args(parsed))
    except NoSuchModuleError:
        raise ConfigError(
            f"RUNWATCH_DB_URL names an unknown database dialect or driver "
            f"{parsed.drivername!r} ({mask_url(url)})"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"RUNWATCH_DB_URL needs a database driver that is not installed "
            f"({parsed.drivername}: {exc})"
        ) from None


def write_engine(engine: Engine) -> Engine:
    """The same engine (same pool, same listeners) with write transactions marked."""
    return engine.execution_options(**{WRITE_OPTION: True})


def sqlite_file(parsed: URL) -> Path | None:
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _connect_args(parsed: URL) -> dict[str, Any]:
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def _sqlite_engine(parsed: URL) -> Engine:
    path = sqlite_file(parsed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailableError(
                f"cannot create the directory of the SQLite database {path}: {exc.strerror or exc}"
            ) from None
    in_memory = path is None and not (parsed.database or "").startswith("file:")
    engine = create_engine(
        parsed,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        **({"poolclass": StaticPool} if in_memory else {}),
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _begin_sqlite_transaction); sqlite3 must not.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection writes: switching a
    database still in rollback mode reads, then needs the write lock, and SQLite answers that
    upgrade with SQLITE_BUSY at once, without its busy timeout (several processes opening a
    new database together: one writes its schema while the others switch)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not (busy or "locked" in str(exc)) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.2)


def _begin_sqlite_transaction(connection: Any) -> None:
    writing = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
