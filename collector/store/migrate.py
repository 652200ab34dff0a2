"""Programmatic Alembic upgrades: the store brings its schema to head on first use.

No ``alembic.ini`` is needed: the Config is built here and points at the migrations shipped
inside the package. Several processes may start at once on a new database, so the upgrade
runs inside one write transaction that first takes a lock every other upgrader waits on:
``BEGIN IMMEDIATE`` on SQLite (the database's write lock), ``pg_advisory_xact_lock`` on
PostgreSQL. Both backends have transactional DDL, so a waiter that gets the lock sees the
finished schema and has nothing left to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from collector.store.engine import write_engine
from collector.store.schema_revision import HEAD_REVISION

if TYPE_CHECKING:  # alembic costs half a second to import: only an upgrade needs it
    from alembic.config import Config

SCRIPT_LOCATION = "collector.store:migrations"
# Any constant shared by every runwatch process; "runwatch" in ASCII.
POSTGRES_LOCK_KEY = 0x72756E7761746368


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(connection: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    return set(MigrationContext.configure(connection).get_current_heads())


def is_at_head(engine: Engine) -> bool:
    with engine.connect() as connection:
        try:
            stamped = connection.execute(text("SELECT version_num FROM alembic_version"))
            return {row[0] for row in stamped} == {HEAD_REVISION}
        except DBAPIError:  # a new database: no version table yet
            return False


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call from many processes at once."""
    if is_at_head(engine):
        return
    with write_engine(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY}
            )
        from alembic import command

        command.upgrade(alembic_config(connection), "head")
