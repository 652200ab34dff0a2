"""PostgreSQL from Debian's packages on 127.0.0.1, a free port and a temporary data dir.

initdb refuses to run as root, so when the tests run as root the data dir is owned by the
``postgres`` user Debian creates and the server runs as that user. ``postgres_url`` is one
database for the test session; ``fresh_postgres_url`` makes a new, empty database per call.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers._process import free_port, require_binary

PG_GLOB = "/usr/lib/postgresql/*/bin/"


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    pg_ctl: str
    user: str | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def execute_autocommit(self, sql: str) -> None:
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()


def _run_as(argv: list[str], user: str | None, log: Path) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, user=user, check=False, timeout=120
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{log.read_text(errors='replace')[-2000:]}"
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pg_ctl = require_binary("pg_ctl", PG_GLOB + "pg_ctl")
    initdb = str(Path(pg_ctl).with_name("initdb"))
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="runwatch-pg-"))
    data_dir = root / "data"
    log = root / "setup.log"  # ours; the server itself logs to server.log, owned by its user
    if user is not None:
        owner = pwd.getpwnam(user)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(free_port(), data_dir, pg_ctl, user)
    try:
        _run_as(
            [initdb, "-D", str(data_dir), "-A", "trust", "-U", "postgres", "--no-sync"], user, log
        )
        options = f"-k {root} -h 127.0.0.1 -p {server.port} -F"
        _run_as(
            [
                pg_ctl,
                "-D",
                str(data_dir),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            user,
            log,
        )
        try:
            yield server
        finally:
            _run_as([pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"], user, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A database created for this test session."""
    postgres_server.execute_autocommit("CREATE DATABASE runwatch_session")
    return postgres_server.url("runwatch_session")


_database_numbers = itertools.count(1)


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[Callable[[], str]]:
    """A factory of new, empty databases; all are dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name = f"runwatch_test_{os.getpid()}_{next(_database_numbers)}"
        postgres_server.execute_autocommit(f"CREATE DATABASE {name}")
        created.append(name)
        return postgres_server.url(name)

    yield make
    for name in created:
        postgres_server.execute_autocommit(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
