"""keyword index: the chunk change log the in-memory keyword index follows, and the database's
identity; the databases' own full-text indexes (SQLite FTS5, PostgreSQL tsvector + pg_trgm) go.

Triggers on ``chunks`` append one ``chunk_changes`` row per chunk inserted, deleted (also by a
video's cascade) or re-texted, in the writer's transaction, so no code path can forget it. On
PostgreSQL each row also records its writer's transaction id (see opslib/infra/keyword_index.py).
A later migration that rebuilds ``chunks`` in batch mode on SQLite drops these triggers and must
create them again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = {
    "chunks_log_insert": "AFTER INSERT ON chunks BEGIN INSERT INTO chunk_changes(chunk_id) VALUES (new.id); END",
    "chunks_log_delete": "AFTER DELETE ON chunks BEGIN INSERT INTO chunk_changes(chunk_id) VALUES (old.id); END",
    "chunks_log_update": (
        "AFTER UPDATE OF id, enriched_text, video_id ON chunks BEGIN "
        "INSERT INTO chunk_changes(chunk_id) VALUES (old.id); "
        "INSERT INTO chunk_changes(chunk_id) VALUES (new.id); END"
    ),
}
_POSTGRES_LOG = [
    "ALTER TABLE chunk_changes ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint)",
    """CREATE FUNCTION log_chunk_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN INSERT INTO chunk_changes(chunk_id) VALUES (OLD.id); END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN INSERT INTO chunk_changes(chunk_id) VALUES (NEW.id); END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER chunks_log AFTER INSERT OR DELETE OR UPDATE OF id, enriched_text, video_id
    ON chunks FOR EACH ROW EXECUTE FUNCTION log_chunk_change()""",
]


def upgrade() -> None:
    op.create_table(
        "database_identity",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("identity", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_identity")),
    )
    op.execute(
        sa.text("INSERT INTO database_identity (id, identity) VALUES (1, :identity)").bindparams(
            identity=str(uuid.uuid4())
        )
    )
    op.create_table(
        "chunk_changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("chunk_id", sa.String(length=160), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_chunk_changes")),
        sqlite_autoincrement=True,  # never reuse a sequence number, even after the newest row is gone
    )
    op.create_index(op.f("ix_chunk_changes_txid"), "chunk_changes", ["txid"])
    initial = _initial_schema()
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    elif dialect == "postgresql":
        for statement in _POSTGRES_LOG:
            op.execute(statement)
    initial._drop_keyword_index()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS chunks_log ON chunks")
        op.execute("DROP FUNCTION IF EXISTS log_chunk_change()")
    op.drop_table("chunk_changes")
    op.drop_table("database_identity")
    _initial_schema()._create_keyword_index()
    if dialect == "sqlite":  # an external-content FTS5 table created over existing rows indexes none
        op.execute("INSERT INTO chunk_fts(chunk_fts) VALUES ('rebuild')")


def _initial_schema() -> ModuleType:
    """0001, whose statements create and drop the full-text indexes (loaded by path: revision
    files are not a package)."""
    path = Path(__file__).with_name("0001_initial_schema.py")
    spec = importlib.util.spec_from_file_location("opsbench_migration_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
