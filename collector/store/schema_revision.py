"""The newest migration, importable without SQLAlchemy or alembic (tests check it is alembic's
head): a store already there is recognised by one query."""

HEAD_REVISION = "0004"
