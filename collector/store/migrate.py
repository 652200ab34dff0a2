"""Programmatic Alembic upgrades: the store brings its schema to head on first use.

No ``alembic.ini`` is needed: the Config is built here and points at the migrations shipped
inside the package. Several processes may start at once on a new database, so the upgrade
runs inside one write transaction that first takes a lock every other upgrader waits on:
``BEGIN IMMEDIATE`` on SQLite (the database's write lock), ``pg_advisory_xact_lock`` on
PostgreSQL. Both backends have transactional DDL, so a waiter that gets the lock sees the
finished schema and has nothing left to do.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from collector.store.engine import write_engine

SCRIPT_LOCATION = "collector.store:migrations"
# Any constant shared by every runwatch process; "runwatch" in ASCII.
POSTGRES_LOCK_KEY = 0x72756E7761746368


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


def is_at_head(engine: Engine) -> bool:
    with engine.connect() as connection:
        return current_revisions(connection) == head_revisions()


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call from many processes at once."""
    if is_at_head(engine):
        return
    with write_engine(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY}
            )
        command.upgrade(alembic_config(connection), "head")
