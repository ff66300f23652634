"""ml_pipeline_runs.request_message_id: one run per TRAINING_REQUEST, however often delivered

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_message_id", sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_ml_pipeline_runs_request_message_id"), ["request_message_id"])
        batch_op.create_foreign_key(
            op.f("fk_ml_pipeline_runs_request_message_id_ops_messages"),
            "ops_messages",
            ["request_message_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_ml_pipeline_runs_request_message_id_ops_messages"), type_="foreignkey")
        batch_op.drop_constraint(op.f("uq_ml_pipeline_runs_request_message_id"), type_="unique")
        batch_op.drop_column("request_message_id")
