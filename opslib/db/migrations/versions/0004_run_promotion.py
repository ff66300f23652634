"""ml_pipeline_runs.promoted_at / promoted_by: an operator's approval to release a READY run
when automatic cutover is off (the worker releases approved runs)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("promoted_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.drop_column("promoted_by")
        batch_op.drop_column("promoted_at")
