"""feedback_outbox: feedback the HTTP endpoint acknowledged, durable until it is written to
raw_logs/. serving_endpoints: running `opsbench serve` replicas and what they have loaded (the
cutover and the rollback wait for them). search_response_snapshots.trace_id: the search request's
trace, carried into its feedback event (NULL for older snapshots).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("search_response_snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trace_id", sa.String(length=64), nullable=True))
    op.create_table(
        "feedback_outbox",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_feedback_outbox")),
    )
    op.create_index(op.f("ix_feedback_outbox_received_at"), "feedback_outbox", ["received_at"])
    op.create_table(
        "serving_endpoints",
        sa.Column("endpoint_id", sa.String(length=128), nullable=False),
        sa.Column("address", sa.String(length=256), nullable=False),
        sa.Column("loaded_versions", sa.JSON(), nullable=False),
        sa.Column("serving_model_version", sa.String(length=128), nullable=True),
        sa.Column("serving_index_name", sa.String(length=128), nullable=True),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("ready_reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("endpoint_id", name=op.f("pk_serving_endpoints")),
    )
    op.create_index(op.f("ix_serving_endpoints_heartbeat_at"), "serving_endpoints", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_serving_endpoints_heartbeat_at"), table_name="serving_endpoints")
    op.drop_table("serving_endpoints")
    op.drop_index(op.f("ix_feedback_outbox_received_at"), table_name="feedback_outbox")
    op.drop_table("feedback_outbox")
    with op.batch_alter_table("search_response_snapshots", schema=None) as batch_op:
        batch_op.drop_column("trace_id")
