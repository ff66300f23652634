"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _create_tables()
    _create_keyword_index()


def downgrade() -> None:
    _drop_keyword_index()
    _drop_tables()


# Keyword search over chunks.enriched_text. A trigram index finds a word anywhere
# inside a longer token, which Korean needs (a noun inside an eojeol with its particles).
_SQLITE_FTS = [
    """CREATE VIRTUAL TABLE chunk_fts USING fts5(
        enriched_text, content='chunks', content_rowid='rowid', tokenize='trigram')""",
    """CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunk_fts(rowid, enriched_text) VALUES (new.rowid, new.enriched_text);
    END""",
    """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunk_fts(chunk_fts, rowid, enriched_text)
        VALUES ('delete', old.rowid, old.enriched_text);
    END""",
    """CREATE TRIGGER chunks_fts_update AFTER UPDATE OF enriched_text ON chunks BEGIN
        INSERT INTO chunk_fts(chunk_fts, rowid, enriched_text)
        VALUES ('delete', old.rowid, old.enriched_text);
        INSERT INTO chunk_fts(rowid, enriched_text) VALUES (new.rowid, new.enriched_text);
    END""",
]
_POSTGRES_FTS = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    """ALTER TABLE chunks ADD COLUMN enriched_tsv tsvector
        GENERATED ALWAYS AS (to_tsvector('simple', enriched_text)) STORED""",
    "CREATE INDEX ix_chunks_enriched_tsv ON chunks USING gin (enriched_tsv)",
    "CREATE INDEX ix_chunks_enriched_trgm ON chunks USING gin (enriched_text gin_trgm_ops)",
]


def _create_keyword_index() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_FTS, "postgresql": _POSTGRES_FTS}.get(dialect, []):
        op.execute(statement)


def _drop_keyword_index() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("chunks_fts_insert", "chunks_fts_delete", "chunks_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS chunk_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_chunks_enriched_trgm")
        op.execute("DROP INDEX IF EXISTS ix_chunks_enriched_tsv")
        op.execute("ALTER TABLE chunks DROP COLUMN IF EXISTS enriched_tsv")


def _create_tables() -> None:

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)

    op.create_table(
        "corpus_imports",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("project_count", sa.Integer(), nullable=False),
        sa.Column("video_count", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("traffic_query_count", sa.Integer(), nullable=False),
        sa.Column("reserved_query_count", sa.Integer(), nullable=False),
        sa.Column("traffic_queries_key", sa.String(length=1024), nullable=False),
        sa.Column("reserved_queries_key", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_corpus_imports")),
    )
    op.create_table(
        "evaluation_datasets",
        sa.Column("evaluation_dataset_ref", sa.String(length=128), nullable=False),
        sa.Column("storage_path", sa.String(length=1024), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("evaluation_dataset_ref", name=op.f("pk_evaluation_datasets")),
    )
    op.create_table(
        "ml_pipeline_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "RUNNING",
                "READY_FOR_RELEASE",
                "FAILED",
                "SUPERSEDED",
                name="run_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "failed_stage",
            sa.Enum(
                "DATASET",
                "TRAINING",
                "EVALUATION",
                "REINDEX",
                "CUTOVER",
                name="run_stage",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column(
            "failure_type",
            sa.Enum("FAIL", "ERROR", name="failure_type", native_enum=False, create_constraint=True, length=32),
            nullable=True,
        ),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("dataset_version", sa.String(length=128), nullable=True),
        sa.Column("baseline_model_version", sa.String(length=128), nullable=True),
        sa.Column("candidate_model_version", sa.String(length=128), nullable=True),
        sa.Column("candidate_index_name", sa.String(length=128), nullable=True),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("cutover_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by_run_id", sa.Integer(), nullable=True),
        sa.Column(
            "trigger_source",
            sa.Enum("schedule", "manual", name="trigger_source", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["superseded_by_run_id"],
            ["ml_pipeline_runs.id"],
            name=op.f("fk_ml_pipeline_runs_superseded_by_run_id_ml_pipeline_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ml_pipeline_runs")),
    )
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.create_index(
            "uq_ml_pipeline_runs_one_pending",
            ["status"],
            unique=True,
            sqlite_where=sa.text("status = 'PENDING'"),
            postgresql_where=sa.text("status = 'PENDING'"),
        )
        batch_op.create_index(
            "uq_ml_pipeline_runs_one_running",
            ["status"],
            unique=True,
            sqlite_where=sa.text("status = 'RUNNING'"),
            postgresql_where=sa.text("status = 'RUNNING'"),
        )

    op.create_table(
        "ops_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("visible_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "outcome",
            sa.Enum("DONE", "REFUSED", name="message_outcome", native_enum=False, create_constraint=True, length=32),
            nullable=True,
        ),
        sa.Column("outcome_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ops_messages")),
    )
    with op.batch_alter_table("ops_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ops_messages_message_type"), ["message_type"], unique=False)
        batch_op.create_index("ix_ops_messages_ready", ["acked_at", "visible_at"], unique=False)

    op.create_table(
        "search_response_snapshots",
        sa.Column("req_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("query_text", sa.Text(), nullable=False),
        sa.Column("topk_ids", sa.JSON(), nullable=False),
        sa.Column("used_ids", sa.JSON(), nullable=False),
        sa.Column("active_model_version", sa.String(length=128), nullable=False),
        sa.Column("active_index_name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("req_id", name=op.f("pk_search_response_snapshots")),
    )
    with op.batch_alter_table("search_response_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_search_response_snapshots_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_search_response_snapshots_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "training_datasets",
        sa.Column("dataset_version", sa.String(length=128), nullable=False),
        sa.Column("storage_path", sa.String(length=1024), nullable=False),
        sa.Column("generation_rule_version", sa.String(length=64), nullable=False),
        sa.Column("source_window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("ineligible_reasons", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset_version", name=op.f("pk_training_datasets")),
    )
    with op.batch_alter_table("training_datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_datasets_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_datasets_eligible"), ["eligible"], unique=False)

    op.create_table(
        "vector_index_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("index_name", sa.String(length=128), nullable=False),
        sa.Column("chunk_id", sa.String(length=160), nullable=False),
        sa.Column("embedding_model_version", sa.String(length=128), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_index_entries")),
        sa.UniqueConstraint("index_name", "chunk_id", name="uq_vector_index_entries_index_chunk"),
    )
    with op.batch_alter_table("vector_index_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vector_index_entries_chunk_id"), ["chunk_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_vector_index_entries_index_name"), ["index_name"], unique=False)
        batch_op.create_index(
            "ix_vector_index_entries_model_hash", ["embedding_model_version", "content_hash"], unique=False
        )

    op.create_table(
        "videos",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column("category", sa.String(length=128), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "UPLOADED",
                "PROCESSING",
                "READY",
                "FAILED",
                "DELETING",
                name="video_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "search_serving_state",
            sa.Enum(
                "SERVABLE",
                "ROLLBACK_EXCLUDED",
                name="serving_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("failed_stage", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_videos")),
    )
    with op.batch_alter_table("videos", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_videos_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_videos_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_videos_user_id"), ["user_id"], unique=False)

    op.create_table(
        "chunks",
        sa.Column("id", sa.String(length=160), nullable=False),
        sa.Column("video_id", sa.String(length=128), nullable=False),
        sa.Column("start_ms", sa.Integer(), nullable=False),
        sa.Column("end_ms", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("enriched_text", sa.Text(), nullable=False),
        sa.Column("chunking_version", sa.String(length=64), nullable=False),
        sa.Column("embedding_model_version", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["video_id"], ["videos.id"], name=op.f("fk_chunks_video_id_videos"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunks")),
    )
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chunks_video_id"), ["video_id"], unique=False)

    op.create_table(
        "model_evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("candidate_model_version", sa.String(length=128), nullable=False),
        sa.Column("baseline_model_version", sa.String(length=128), nullable=False),
        sa.Column("evaluation_dataset_ref", sa.String(length=128), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("quality_metrics", sa.JSON(), nullable=False),
        sa.Column("pass_criteria", sa.JSON(), nullable=False),
        sa.Column(
            "overall_decision",
            sa.Enum("PASS", "FAIL", name="decision", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("detail_artifact_path", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["ml_pipeline_runs.id"], name=op.f("fk_model_evaluations_run_id_ml_pipeline_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_evaluations")),
    )
    with op.batch_alter_table("model_evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_evaluations_run_id"), ["run_id"], unique=False)

    op.create_table(
        "model_releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("serving_key", sa.String(length=64), nullable=False),
        sa.Column(
            "release_status",
            sa.Enum(
                "STABLE",
                "CANDIDATE_REINDEXING",
                "ROLLBACK_PREPARING",
                name="release_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("active_model_version", sa.String(length=128), nullable=False),
        sa.Column("active_index_name", sa.String(length=128), nullable=False),
        sa.Column("previous_model_version", sa.String(length=128), nullable=True),
        sa.Column("previous_index_name", sa.String(length=128), nullable=True),
        sa.Column("candidate_model_version", sa.String(length=128), nullable=True),
        sa.Column("candidate_index_name", sa.String(length=128), nullable=True),
        sa.Column("candidate_run_id", sa.Integer(), nullable=True),
        sa.Column("rollback_snapshot_active_model_version", sa.String(length=128), nullable=True),
        sa.Column("rollback_snapshot_active_index_name", sa.String(length=128), nullable=True),
        sa.Column("rollback_snapshot_captured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("candidate_ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("switched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_run_id"],
            ["ml_pipeline_runs.id"],
            name=op.f("fk_model_releases_candidate_run_id_ml_pipeline_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_releases")),
        sa.UniqueConstraint("serving_key", name=op.f("uq_model_releases_serving_key")),
    )
    op.create_table(
        "model_versions",
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("artifact_path", sa.String(length=1024), nullable=False),
        sa.Column("base_model_version", sa.String(length=128), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["ml_pipeline_runs.id"], name=op.f("fk_model_versions_run_id_ml_pipeline_runs")
        ),
        sa.PrimaryKeyConstraint("model_version", name=op.f("pk_model_versions")),
    )
    op.create_table(
        "stage_executions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("notebook", sa.String(length=256), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("output_ipynb", sa.String(length=1024), nullable=True),
        sa.Column("output_html", sa.String(length=1024), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                name="execution_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["ml_pipeline_runs.id"], name=op.f("fk_stage_executions_run_id_ml_pipeline_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_executions")),
    )
    with op.batch_alter_table("stage_executions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stage_executions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_stage_executions_stage"), ["stage"], unique=False)

    op.create_table(
        "release_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"], ["model_releases.id"], name=op.f("fk_release_events_release_id_model_releases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_events")),
    )
    with op.batch_alter_table("release_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_release_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_release_events_release_id"), ["release_id"], unique=False)


def _drop_tables() -> None:
    with op.batch_alter_table("release_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_events_release_id"))
        batch_op.drop_index(batch_op.f("ix_release_events_at"))

    op.drop_table("release_events")
    with op.batch_alter_table("stage_executions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stage_executions_stage"))
        batch_op.drop_index(batch_op.f("ix_stage_executions_run_id"))

    op.drop_table("stage_executions")
    op.drop_table("model_versions")
    op.drop_table("model_releases")
    with op.batch_alter_table("model_evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_evaluations_run_id"))

    op.drop_table("model_evaluations")
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chunks_video_id"))

    op.drop_table("chunks")
    with op.batch_alter_table("videos", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_videos_user_id"))
        batch_op.drop_index(batch_op.f("ix_videos_status"))
        batch_op.drop_index(batch_op.f("ix_videos_project_id"))

    op.drop_table("videos")
    with op.batch_alter_table("vector_index_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_vector_index_entries_model_hash")
        batch_op.drop_index(batch_op.f("ix_vector_index_entries_index_name"))
        batch_op.drop_index(batch_op.f("ix_vector_index_entries_chunk_id"))

    op.drop_table("vector_index_entries")
    with op.batch_alter_table("training_datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_datasets_eligible"))
        batch_op.drop_index(batch_op.f("ix_training_datasets_created_at"))

    op.drop_table("training_datasets")
    with op.batch_alter_table("search_response_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_response_snapshots_expires_at"))
        batch_op.drop_index(batch_op.f("ix_search_response_snapshots_created_at"))

    op.drop_table("search_response_snapshots")
    with op.batch_alter_table("ops_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_ops_messages_ready")
        batch_op.drop_index(batch_op.f("ix_ops_messages_message_type"))

    op.drop_table("ops_messages")
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_ml_pipeline_runs_one_running",
            sqlite_where=sa.text("status = 'RUNNING'"),
            postgresql_where=sa.text("status = 'RUNNING'"),
        )
        batch_op.drop_index(
            "uq_ml_pipeline_runs_one_pending",
            sqlite_where=sa.text("status = 'PENDING'"),
            postgresql_where=sa.text("status = 'PENDING'"),
        )

    op.drop_table("ml_pipeline_runs")
    op.drop_table("evaluation_datasets")
    op.drop_table("corpus_imports")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))

    op.drop_table("audit_log")
