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
    # in place on SQLite too: a batch rebuild of clients would delete its metric rows (CASCADE)
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE clients DROP COLUMN partition_id")
    else:
        op.drop_column("clients", "partition_id")
