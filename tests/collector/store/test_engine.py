"""Engine set-up: SQLite pragmas and write locking, URL errors, unreachable servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, text

from collector.errors import ConfigError
from collector.store import DatabaseUnavailableError, Store
from collector.store.engine import BUSY_TIMEOUT_S
from tests.servers._process import free_port


def test_sqlite_creates_parent_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "runs.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.create_run("x")
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert (
                connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_S * 1000
            )
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert path.is_file()
    finally:
        store.dispose()


def test_sqlite_write_transactions_begin_immediate_and_reads_do_not(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.upgrade()
    begins: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("BEGIN"):
            begins.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        run_id = store.create_run("x")
        assert begins == ["BEGIN IMMEDIATE"]
        store.get_run(run_id)
        assert begins == ["BEGIN IMMEDIATE", "BEGIN"]
    finally:
        store.dispose()


def test_switching_a_new_database_to_wal_waits_for_a_writer(tmp_path: Path) -> None:
    """Several processes opening a new database together: one writes while another switches
    it to WAL, which SQLite answers with SQLITE_BUSY at once, busy timeout or not."""
    import sqlite3
    import threading
    import time

    path = tmp_path / "runs.db"
    holding = threading.Event()
    released_at: list[float] = []

    def write_in_rollback_mode() -> None:
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("CREATE TABLE t (a)")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (1)")
        holding.set()
        time.sleep(0.4)
        released_at.append(time.monotonic())
        writer.execute("COMMIT")
        writer.close()

    thread = threading.Thread(target=write_in_rollback_mode)
    thread.start()
    holding.wait(10)
    store = Store(f"sqlite:///{path}")
    try:
        with store.engine.connect() as connection:
            connected_at = time.monotonic()
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        thread.join(10)
        assert released_at and connected_at >= released_at[0]  # it waited for the writer
    finally:
        store.dispose()


def test_write_lock_is_taken_at_begin(tmp_path: Path) -> None:
    """While one writer holds the lock, a second one waits instead of failing at once."""
    import sqlite3
    import threading
    import time

    url_path = tmp_path / "runs.db"
    store = Store(f"sqlite:///{url_path}")
    run_id = store.create_run("x")
    blocker = sqlite3.connect(url_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    done = threading.Event()

    def heartbeat() -> None:
        store.heartbeat(run_id)
        done.set()

    thread = threading.Thread(target=heartbeat)
    thread.start()
    time.sleep(0.5)
    assert not done.is_set()  # waiting on the lock, not failed
    blocker.execute("COMMIT")
    thread.join(10)
    blocker.close()
    assert done.is_set()
    store.dispose()


@pytest.mark.parametrize("url", ["not a url", "://nothing", "postgresql://u:p@h:notaport/db"])
def test_malformed_url_is_a_config_error_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match="RUNWATCH_DB_URL"):
        Store(url)


def test_unknown_dialect_is_a_config_error_naming_the_variable() -> None:
    store = Store("nosuchdb://host/db")
    with pytest.raises(ConfigError, match=r"RUNWATCH_DB_URL.*unknown database dialect"):
        store.list_runs()


def test_missing_driver_is_a_config_error() -> None:
    store = Store("postgresql+nosuchdriver://host/db")
    with pytest.raises(ConfigError, match="RUNWATCH_DB_URL"):
        store.list_runs()


def test_unreachable_server_is_one_clear_line_without_password() -> None:
    store = Store(f"postgresql+psycopg2://runwatch:s3cret@127.0.0.1:{free_port()}/runs")
    with pytest.raises(DatabaseUnavailableError) as info:
        store.list_runs()
    message = str(info.value)
    assert "\n" not in message
    assert "unavailable" in message and "127.0.0.1" in message
    assert "s3cret" not in message


def test_unwritable_sqlite_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailableError, match="cannot create the directory"):
        Store(f"sqlite:///{blocker / 'runs.db'}").list_runs()


def test_session_gives_a_working_transaction(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    with store.session(write=False) as session:
        assert session.execute(text("SELECT 1")).scalar() == 1
    store.dispose()
