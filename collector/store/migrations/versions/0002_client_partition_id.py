"""clients.partition_id: a federated client's node config ``partition-id``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("clients", sa.Column("partition_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # SQLite drops a column only by rebuilding the table (batch mode does that)
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("partition_id")
