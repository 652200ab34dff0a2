"""runs.hyperparams_json, runs.final_stats_json: the listing's copy of each run's
hyperparameters and final stats, filled here for the runs already stored.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The texts as this revision's code writes them (collector.store.run_listing): a JSON object
# by key. Written out here so that later changes to that module never change this migration.
_HYPERPARAMS = "SELECT run_pk, key, value FROM run_configurations"
_FINAL_STATS = (
    "SELECT run_pk, metric_name, metric_value FROM run_metrics WHERE context = 'final_epoch'"
)
_KEEP = (
    "UPDATE runs SET hyperparams_json = :hyperparams, final_stats_json = :final_stats "
    "WHERE id = :pk"
)


def upgrade() -> None:
    op.add_column("runs", sa.Column("hyperparams_json", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("final_stats_json", sa.Text(), nullable=True))
    connection = op.get_bind()
    hyperparams: dict[int, dict[str, Any]] = {}
    unreadable: set[int] = set()  # a value another program stored that is not JSON
    for run_pk, key, value in connection.execute(sa.text(_HYPERPARAMS)):
        try:
            hyperparams.setdefault(run_pk, {})[key] = json.loads(value)
        except (TypeError, ValueError):
            unreadable.add(run_pk)
    final_stats: dict[int, dict[str, Any]] = {}
    for run_pk, name, value in connection.execute(sa.text(_FINAL_STATS)):
        final_stats.setdefault(run_pk, {})[name] = value
    kept = [
        {
            "pk": run_pk,
            "hyperparams": json.dumps(dict(sorted(hyperparams.get(run_pk, {}).items()))),
            "final_stats": json.dumps(dict(sorted(final_stats.get(run_pk, {}).items()))),
        }
        for (run_pk,) in connection.execute(sa.text("SELECT id FROM runs"))
        if run_pk not in unreadable  # no copy: read from the table, as before this revision
    ]
    if kept:
        connection.execute(sa.text(_KEEP), kept)


def downgrade() -> None:
    drop_columns("runs", "final_stats_json", "hyperparams_json")


def drop_columns(table: str, *columns: str) -> None:
    """Dropped in place. Not in batch mode on SQLite: it rebuilds the table, and dropping the
    old one deletes, through ON DELETE CASCADE, every row that refers to it (SQLite 3.35+
    drops a column in place; an older one refuses with an error, losing nothing)."""
    if op.get_bind().dialect.name == "sqlite":
        for column in columns:
            op.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    else:
        for column in columns:
            op.drop_column(table, column)
