"""A partial covering index of final stats, so ``runs list`` never scans epoch metrics.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FINAL = sa.text("context = 'final_epoch'")


def upgrade() -> None:
    op.create_index(
        "ix_run_metrics_final_stats",
        "run_metrics",
        ["run_pk", "metric_name", "metric_value"],
        sqlite_where=_FINAL,
        postgresql_where=_FINAL,
    )


def downgrade() -> None:
    op.drop_index("ix_run_metrics_final_stats", table_name="run_metrics")
