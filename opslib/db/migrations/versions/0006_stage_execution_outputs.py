"""stage_executions.outputs: what an execution produced (e.g. the dataset version a
20_build_dataset execution built), recorded by its notebook

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stage_executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outputs", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stage_executions", schema=None) as batch_op:
        batch_op.drop_column("outputs")
