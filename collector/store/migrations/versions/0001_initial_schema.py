"""Initial schema: runs, run_configurations, clients, rounds, run_metrics,
server_evaluations, run_artifacts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("experiment_name", sa.String(length=255), nullable=False),
        sa.Column("training_mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('in_progress', 'completed', 'failed', 'crashed')",
            name=op.f("ck_runs_status"),
        ),
        sa.CheckConstraint(
            "training_mode IN ('centralized', 'federated')", name=op.f("ck_runs_training_mode")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_runs_run_id")),
    )
    op.create_index(op.f("ix_runs_experiment_name"), "runs", ["experiment_name"])
    op.create_index(op.f("ix_runs_start_time"), "runs", ["start_time"])
    op.create_index(op.f("ix_runs_status_heartbeat_at"), "runs", ["status", "heartbeat_at"])

    op.create_table(
        "clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("client_identifier", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name=op.f("fk_clients_run_pk_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
        sa.UniqueConstraint(
            "run_pk", "client_identifier", name=op.f("uq_clients_run_pk_client_identifier")
        ),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("server_metrics", sa.JSON(), nullable=True),
        sa.Column("aggregated_client_metrics", sa.JSON(), nullable=True),
        sa.Column("num_clients", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint("status IN ('in_progress', 'completed')", name=op.f("ck_rounds_status")),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name=op.f("fk_rounds_run_pk_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rounds")),
        sa.UniqueConstraint("run_pk", "round_number", name=op.f("uq_rounds_run_pk_round_number")),
    )
    op.create_table(
        "run_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("metric_name", sa.String(length=255), nullable=True),
        sa.Column("metric_value", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name=op.f("fk_run_artifacts_run_pk_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_artifacts")),
    )
    op.create_index(op.f("ix_run_artifacts_run_pk"), "run_artifacts", ["run_pk"])

    op.create_table(
        "run_configurations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"],
            ["runs.id"],
            name=op.f("fk_run_configurations_run_pk_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_configurations")),
        sa.UniqueConstraint("run_pk", "key", name=op.f("uq_run_configurations_run_pk_key")),
    )
    op.create_table(
        "run_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("metric_name", sa.String(length=255), nullable=False),
        sa.Column("metric_value", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("dataset_type", sa.String(length=16), nullable=False),
        sa.Column("context", sa.String(length=16), nullable=False),
        sa.Column("client_pk", sa.Integer(), nullable=True),
        sa.Column("round_pk", sa.Integer(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_pk"],
            ["clients.id"],
            name=op.f("fk_run_metrics_client_pk_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["round_pk"],
            ["rounds.id"],
            name=op.f("fk_run_metrics_round_pk_rounds"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name=op.f("fk_run_metrics_run_pk_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metrics")),
    )
    op.create_index(
        op.f("ix_run_metrics_run_pk_context_step"), "run_metrics", ["run_pk", "context", "step"]
    )
    for column in ("client_pk", "round_pk"):
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            op.f(f"ix_run_metrics_{column}"),
            "run_metrics",
            [column],
            sqlite_where=where,
            postgresql_where=where,
        )

    op.create_table(
        "server_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("round_pk", sa.Integer(), nullable=True),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("precision", sa.Float(), nullable=True),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("f1", sa.Float(), nullable=True),
        sa.Column("auroc", sa.Float(), nullable=True),
        sa.Column("cm_tp", sa.Float(), nullable=True),
        sa.Column("cm_tn", sa.Float(), nullable=True),
        sa.Column("cm_fp", sa.Float(), nullable=True),
        sa.Column("cm_fn", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_pk"],
            ["rounds.id"],
            name=op.f("fk_server_evaluations_round_pk_rounds"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_pk"],
            ["runs.id"],
            name=op.f("fk_server_evaluations_run_pk_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_evaluations")),
        sa.UniqueConstraint(
            "run_pk", "round_number", name=op.f("uq_server_evaluations_run_pk_round_number")
        ),
    )
    op.create_index(op.f("ix_server_evaluations_round_pk"), "server_evaluations", ["round_pk"])


def downgrade() -> None:
    op.drop_index(op.f("ix_server_evaluations_round_pk"), table_name="server_evaluations")

    op.drop_table("server_evaluations")
    op.drop_index(op.f("ix_run_metrics_run_pk_context_step"), table_name="run_metrics")
    op.drop_index(op.f("ix_run_metrics_round_pk"), table_name="run_metrics")
    op.drop_index(op.f("ix_run_metrics_client_pk"), table_name="run_metrics")

    op.drop_table("run_metrics")
    op.drop_table("run_configurations")
    op.drop_index(op.f("ix_run_artifacts_run_pk"), table_name="run_artifacts")

    op.drop_table("run_artifacts")
    op.drop_table("rounds")
    op.drop_table("clients")
    op.drop_index(op.f("ix_runs_status_heartbeat_at"), table_name="runs")
    op.drop_index(op.f("ix_runs_start_time"), table_name="runs")
    op.drop_index(op.f("ix_runs_experiment_name"), table_name="runs")

    op.drop_table("runs")
