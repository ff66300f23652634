"""model_versions.source, delivered_by, delivery_reason: the provenance of a model an operator
delivered (``opsbench propose-model``) — where its files came from, who delivered it and why.
Rows from before were all bootstrapped or fine-tuned here: no source.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("delivered_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("delivery_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("delivery_reason")
        batch_op.drop_column("delivered_by")
        batch_op.drop_column("source")
