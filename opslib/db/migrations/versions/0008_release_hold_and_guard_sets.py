"""ml_pipeline_runs.release_hold: why a READY_FOR_RELEASE run waits for an operator's promote
instead of releasing automatically (e.g. its lift is not significant); NULL: nothing holds it.
evaluation_datasets.role: "evaluation" (every set registered before) or "guard" (a general set
scored to catch forgetting).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("release_hold", sa.Text(), nullable=True))
    with op.batch_alter_table("evaluation_datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), server_default="evaluation", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("evaluation_datasets", schema=None) as batch_op:
        batch_op.drop_column("role")
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.drop_column("release_hold")
