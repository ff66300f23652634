"""Many workers, one truth: stage_leases (fencing tokens for work two workers could drive at
once), PARKED message outcome (poison messages), ABANDONED stage executions with a heartbeat, and
training datasets marked unusable when a read finds them gone or corrupt.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OUTCOMES_BEFORE = ("DONE", "REFUSED")
_OUTCOMES = (*_OUTCOMES_BEFORE, "PARKED")
_EXECUTION_BEFORE = ("RUNNING", "SUCCEEDED", "FAILED")
_EXECUTION = (*_EXECUTION_BEFORE, "ABANDONED")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _widen(table: str, column: str, name: str, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    # The enum is a VARCHAR with a CHECK constraint: replace the constraint (batch mode rebuilds
    # the table on SQLite, where constraints cannot be altered in place).
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.alter_column(column, existing_type=_enum(before, name), type_=_enum(after, name))


def upgrade() -> None:
    op.create_table(
        "stage_leases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("purpose", sa.String(length=256), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_stage_leases")),
    )
    _widen("ops_messages", "outcome", "message_outcome", _OUTCOMES_BEFORE, _OUTCOMES)
    _widen("stage_executions", "status", "execution_status", _EXECUTION_BEFORE, _EXECUTION)
    with op.batch_alter_table("stage_executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("training_datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unusable_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("unusable_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_datasets", schema=None) as batch_op:
        batch_op.drop_column("unusable_at")
        batch_op.drop_column("unusable_reason")
    with op.batch_alter_table("stage_executions", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
    op.execute("UPDATE stage_executions SET status = 'FAILED' WHERE status = 'ABANDONED'")
    op.execute("UPDATE ops_messages SET outcome = 'REFUSED' WHERE outcome = 'PARKED'")
    _widen("stage_executions", "status", "execution_status", _EXECUTION, _EXECUTION_BEFORE)
    _widen("ops_messages", "outcome", "message_outcome", _OUTCOMES, _OUTCOMES_BEFORE)
    op.drop_table("stage_leases")
