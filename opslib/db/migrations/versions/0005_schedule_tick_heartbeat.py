"""schedule_ticks.heartbeat_at: a scheduler running a tick's job keeps it fresh, so only a tick
whose scheduler stopped beating is taken over (not one whose job merely runs long)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedule_ticks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    # A tick claimed before this column existed counts as last seen when it started.
    op.execute("UPDATE schedule_ticks SET heartbeat_at = started_at WHERE heartbeat_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("schedule_ticks", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
