"""SQLAlchemy 2.0 typed models for every table of the Metadata DB.

Tables are created only by Alembic migrations (``opsbench db upgrade``); ``metadata`` here is the
target the migrations are checked against in the test suite.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; the Metadata DB stores aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class VideoStatus(enum.StrEnum):
    PENDING = "PENDING"
    UPLOADED = "UPLOADED"
    PROCESSING = "PROCESSING"
    READY = "READY"
    FAILED = "FAILED"
    DELETING = "DELETING"


class ServingState(enum.StrEnum):
    SERVABLE = "SERVABLE"
    ROLLBACK_EXCLUDED = "ROLLBACK_EXCLUDED"


class RunStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    READY_FOR_RELEASE = "READY_FOR_RELEASE"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"


class RunStage(enum.StrEnum):
    DATASET = "DATASET"
    TRAINING = "TRAINING"
    EVALUATION = "EVALUATION"
    REINDEX = "REINDEX"
    CUTOVER = "CUTOVER"


class FailureType(enum.StrEnum):
    FAIL = "FAIL"  # quality below criteria
    ERROR = "ERROR"  # system error


class TriggerSource(enum.StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


class ExecutionStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"  # its process died: no heartbeat past the stall limit (the reconciler)


class Decision(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"


class ReleaseStatus(enum.StrEnum):
    STABLE = "STABLE"
    CANDIDATE_REINDEXING = "CANDIDATE_REINDEXING"
    ROLLBACK_PREPARING = "ROLLBACK_PREPARING"


class MessageOutcome(enum.StrEnum):
    DONE = "DONE"
    REFUSED = "REFUSED"
    PARKED = "PARKED"  # poison: delivered more often than its type's cap without an ack; never redelivered


class TickStatus(enum.StrEnum):
    STARTED = "STARTED"
    DONE = "DONE"
    FAILED = "FAILED"


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    project_id: Mapped[str] = mapped_column(String(128), index=True)
    title: Mapped[str] = mapped_column(String(512))
    category: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[VideoStatus] = mapped_column(_enum(VideoStatus, "video_status"), index=True)
    search_serving_state: Mapped[ServingState] = mapped_column(
        _enum(ServingState, "serving_state"), default=ServingState.SERVABLE
    )
    failed_stage: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    enriched_text: Mapped[str] = mapped_column(Text)
    chunking_version: Mapped[str] = mapped_column(String(64))
    embedding_model_version: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChunkChange(Base):
    """The chunk change log: one row per chunk inserted, deleted or re-texted, appended by
    triggers (migration 0012) in the writer's transaction; the in-memory keyword index follows it."""

    __tablename__ = "chunk_changes"
    __table_args__ = ({"sqlite_autoincrement": True},)  # never reuse a sequence number

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    chunk_id: Mapped[str] = mapped_column(String(160))
    # PostgreSQL: the writer's transaction id (a trigger default), so a reader can tell which rows
    # may still be invisible to it; NULL on SQLite, where writers are serialised.
    txid: Mapped[int | None] = mapped_column(BigInteger, index=True)


class DatabaseIdentity(Base):
    """One row, written by migration 0012: tells a re-created or replaced database from the one
    an in-memory index was built from."""

    __tablename__ = "database_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    identity: Mapped[str] = mapped_column(String(36))


class VectorIndexEntry(Base):
    """SOT record of which chunk is in which index."""

    __tablename__ = "vector_index_entries"
    __table_args__ = (
        UniqueConstraint("index_name", "chunk_id", name="uq_vector_index_entries_index_chunk"),
        Index("ix_vector_index_entries_model_hash", "embedding_model_version", "content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    index_name: Mapped[str] = mapped_column(String(128), index=True)
    chunk_id: Mapped[str] = mapped_column(String(160), index=True)
    embedding_model_version: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str] = mapped_column(String(64))
    # The precision the vector was computed at: the model version's (one precision per index).
    encode_precision: Mapped[str] = mapped_column(String(8), default="fp32", server_default="fp32")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SearchResponseSnapshot(Base):
    __tablename__ = "search_response_snapshots"

    req_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    project_id: Mapped[str] = mapped_column(String(128))
    query_text: Mapped[str] = mapped_column(Text)
    topk_ids: Mapped[list[Any]] = mapped_column(JSON)
    used_ids: Mapped[list[Any]] = mapped_column(JSON)
    active_model_version: Mapped[str] = mapped_column(String(128))
    active_index_name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # The search request's trace (0009); its feedback event carries the same one.
    trace_id: Mapped[str | None] = mapped_column(String(64))


class MLPipelineRun(Base):
    __tablename__ = "ml_pipeline_runs"
    __table_args__ = (
        # At most one RUNNING and one PENDING run, enforced by the database.
        Index(
            "uq_ml_pipeline_runs_one_running",
            "status",
            unique=True,
            sqlite_where=text("status = 'RUNNING'"),
            postgresql_where=text("status = 'RUNNING'"),
        ),
        Index(
            "uq_ml_pipeline_runs_one_pending",
            "status",
            unique=True,
            sqlite_where=text("status = 'PENDING'"),
            postgresql_where=text("status = 'PENDING'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"))
    failed_stage: Mapped[RunStage | None] = mapped_column(_enum(RunStage, "run_stage"))
    failure_type: Mapped[FailureType | None] = mapped_column(_enum(FailureType, "failure_type"))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    dataset_version: Mapped[str | None] = mapped_column(String(128))
    baseline_model_version: Mapped[str | None] = mapped_column(String(128))
    candidate_model_version: Mapped[str | None] = mapped_column(String(128))
    candidate_index_name: Mapped[str | None] = mapped_column(String(128))
    evaluation_id: Mapped[int | None] = mapped_column(Integer)
    cutover_time: Mapped[datetime | None] = mapped_column()
    superseded_by_run_id: Mapped[int | None] = mapped_column(ForeignKey("ml_pipeline_runs.id"))
    trigger_source: Mapped[TriggerSource] = mapped_column(_enum(TriggerSource, "trigger_source"))
    trace_id: Mapped[str] = mapped_column(String(64))
    # Not in the base data model: an operator's approval to release this READY run when automatic
    # cutover is off or the release rule holds it (written with its AuditLog row; the worker then
    # runs 50 → 60).
    promoted_at: Mapped[datetime | None] = mapped_column()
    promoted_by: Mapped[str | None] = mapped_column(String(128))
    # Why a READY_FOR_RELEASE run waits for a promote rather than releasing itself (release rule).
    release_hold: Mapped[str | None] = mapped_column(Text)
    # Not in the base data model: the TRAINING_REQUEST that created the run, unique, so a
    # redelivered message can never create a second run.
    request_message_id: Mapped[int | None] = mapped_column(ForeignKey("ops_messages.id"), unique=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StageExecution(Base):
    __tablename__ = "stage_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ml_pipeline_runs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(64), index=True)
    notebook: Mapped[str] = mapped_column(String(256))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_ipynb: Mapped[str | None] = mapped_column(String(1024))
    output_html: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[ExecutionStatus] = mapped_column(_enum(ExecutionStatus, "execution_status"))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the execution produced, recorded by its notebook (opslib.execution.context.record_outputs),
    # e.g. {"dataset_version": ..., "dataset_created": true} — so the run index ties it exactly.
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    trace_id: Mapped[str] = mapped_column(String(64))
    # Not in the base data model: the executing process's liveness, so a killed stage's row ends
    # (ABANDONED) instead of staying RUNNING.
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class TrainingDataset(Base):
    __tablename__ = "training_datasets"

    dataset_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    storage_path: Mapped[str] = mapped_column(String(1024))
    generation_rule_version: Mapped[str] = mapped_column(String(64))
    source_window_start: Mapped[datetime] = mapped_column()
    source_window_end: Mapped[datetime] = mapped_column()
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    eligible: Mapped[bool] = mapped_column(Boolean, index=True)
    ineligible_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Not in the base data model: set when a read finds the artifact gone or failing its checksum;
    # an unusable dataset is never "latest eligible" again.
    unusable_reason: Mapped[str | None] = mapped_column(Text)
    unusable_at: Mapped[datetime | None] = mapped_column()


class EvaluationDataset(Base):
    __tablename__ = "evaluation_datasets"

    evaluation_dataset_ref: Mapped[str] = mapped_column(String(128), primary_key=True)
    storage_path: Mapped[str] = mapped_column(String(1024))
    sample_count: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(512))
    # Not in the base data model: "evaluation" (judges candidates) or "guard" (a general set with
    # its own stored corpus that catches forgetting; opslib.lifecycle.evaluation.guard).
    role: Mapped[str] = mapped_column(String(16), default="evaluation", server_default="evaluation")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    artifact_path: Mapped[str] = mapped_column(String(1024))
    base_model_version: Mapped[str | None] = mapped_column(String(128))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ml_pipeline_runs.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    # Not in the base data model: the precision this version encodes at, wherever it runs (chosen at
    # registration, opslib.infra.precision); its indexes and queries all use it.
    encode_precision: Mapped[str] = mapped_column(String(8), default="fp32", server_default="fp32")
    # Not in the base data model: the provenance of a model an operator delivered (``opsbench
    # propose-model``): where its files came from, who delivered it and why. None for the
    # bootstrapped base and for fine-tunes (their provenance is base_model_version and run_id).
    source: Mapped[str | None] = mapped_column(String(1024))
    delivered_by: Mapped[str | None] = mapped_column(String(128))
    delivery_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def delivered(self) -> bool:
        """An operator delivered it (it was not trained here)."""
        return self.source is not None


class ModelEvaluation(Base):
    __tablename__ = "model_evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ml_pipeline_runs.id"), index=True)
    candidate_model_version: Mapped[str] = mapped_column(String(128))
    baseline_model_version: Mapped[str] = mapped_column(String(128))
    evaluation_dataset_ref: Mapped[str] = mapped_column(String(128))
    sample_count: Mapped[int] = mapped_column(Integer)
    quality_metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    pass_criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    overall_decision: Mapped[Decision] = mapped_column(_enum(Decision, "decision"))
    fail_reason: Mapped[str | None] = mapped_column(Text)
    detail_artifact_path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRelease(Base):
    """One row per serving combination; updated by compare-and-swap on ``row_version``."""

    __tablename__ = "model_releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serving_key: Mapped[str] = mapped_column(String(64), unique=True, default="default")
    release_status: Mapped[ReleaseStatus] = mapped_column(_enum(ReleaseStatus, "release_status"))
    active_model_version: Mapped[str] = mapped_column(String(128))
    active_index_name: Mapped[str] = mapped_column(String(128))
    previous_model_version: Mapped[str | None] = mapped_column(String(128))
    previous_index_name: Mapped[str | None] = mapped_column(String(128))
    candidate_model_version: Mapped[str | None] = mapped_column(String(128))
    candidate_index_name: Mapped[str | None] = mapped_column(String(128))
    candidate_run_id: Mapped[int | None] = mapped_column(ForeignKey("ml_pipeline_runs.id"))
    rollback_snapshot_active_model_version: Mapped[str | None] = mapped_column(String(128))
    rollback_snapshot_active_index_name: Mapped[str | None] = mapped_column(String(128))
    rollback_snapshot_captured_at: Mapped[datetime | None] = mapped_column()
    candidate_ready_at: Mapped[datetime | None] = mapped_column()
    switched_at: Mapped[datetime | None] = mapped_column()
    row_version: Mapped[int] = mapped_column(Integer, nullable=False)

    # RUF012 silenced: SQLAlchemy types __mapper_args__ as an instance attribute (a ClassVar fails mypy).
    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class ReleaseEvent(Base):
    """Append-only history of release transitions: the answer to "what served when"."""

    __tablename__ = "release_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("model_releases.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(128))
    trace_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OpsMessage(Base):
    """The control-message queue (a table in the Metadata DB)."""

    __tablename__ = "ops_messages"
    __table_args__ = (Index("ix_ops_messages_ready", "acked_at", "visible_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_type: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    trace_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    visible_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    acked_at: Mapped[datetime | None] = mapped_column()
    # Not in the base data model; needed so a refusal is recorded with its reason.
    outcome: Mapped[MessageOutcome | None] = mapped_column(_enum(MessageOutcome, "message_outcome"))
    outcome_reason: Mapped[str | None] = mapped_column(Text)


class StageLease(Base):
    """Who drives a piece of work that two workers could otherwise drive at once (e.g. the release),
    with a fencing token: every write of that work checks its token, and a takeover (only of a
    stale lease) increments it, so a paused former holder's late writes are refused."""

    __tablename__ = "stage_leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    token: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str | None] = mapped_column(String(128))  # None: released
    purpose: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()
    released_at: Mapped[datetime | None] = mapped_column()


class ReindexShard(Base):
    """A slice of a candidate index build (stage 50) that any live worker may claim and encode.

    Claimed like a lease: ``claimed_by`` + ``heartbeat_at``, taken over only when stale, and
    ``token`` incremented on each claim — the entries a shard's worker records carry that check."""

    __tablename__ = "reindex_shards"
    __table_args__ = (UniqueConstraint("index_name", "shard_no"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    index_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    shard_no: Mapped[int] = mapped_column(Integer)
    chunk_ids: Mapped[list[Any]] = mapped_column(JSON)
    token: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    done_at: Mapped[datetime | None] = mapped_column()
    done_by: Mapped[str | None] = mapped_column(String(128))
    embedded: Mapped[int] = mapped_column(Integer, default=0)
    reused: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    operator: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(Text)
    trace_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class CorpusImport(Base):
    """An imported corpus and where its queries live (traffic and reserved-for-evaluation)."""

    __tablename__ = "corpus_imports"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    project_count: Mapped[int] = mapped_column(Integer)
    video_count: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    traffic_query_count: Mapped[int] = mapped_column(Integer)
    reserved_query_count: Mapped[int] = mapped_column(Integer)
    traffic_queries_key: Mapped[str] = mapped_column(String(1024))
    reserved_queries_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScheduleTick(Base):
    """One cron tick of a schedule (``opslib.execution.schedule``), claimed by inserting this row.

    UNIQUE(schedule, due_at) is what makes a tick run once: of two schedulers claiming the same
    tick, the second insert fails and that scheduler skips it.
    """

    __tablename__ = "schedule_ticks"
    __table_args__ = (UniqueConstraint("schedule", "due_at", name="uq_schedule_ticks_schedule_due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column()  # the tick time (UTC)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[TickStatus] = mapped_column(_enum(TickStatus, "schedule_tick_status"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Stamped while the job runs (opslib.infra.heartbeat); stale past run_stall_after_s = scheduler gone.
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str] = mapped_column(String(64))


class FeedbackOutbox(Base):
    """Feedback the HTTP endpoint acknowledged and has not yet written to ``raw_logs/``.

    A row is committed before the endpoint answers 202, so an acknowledged event survives a crash;
    a flusher moves rows to raw-log batch files (by count or age) and deletes them. ``event_id``
    as the key makes a repeated delivery of the same feedback one row.
    """

    __tablename__ = "feedback_outbox"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[dict[str, Any]] = mapped_column(JSON)  # the feedback event as raw_logs/ will hold it
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ServingEndpoint(Base):
    """A running ``opsbench serve`` replica, as it reports itself (heartbeat).

    The cutover's "candidate ready" and the rollback's "target ready" wait until every *live*
    endpoint (heartbeat within the endpoint staleness limit) lists the model in ``loaded_versions``.
    """

    __tablename__ = "serving_endpoints"

    endpoint_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(256))
    loaded_versions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    serving_model_version: Mapped[str | None] = mapped_column(String(128))
    serving_index_name: Mapped[str | None] = mapped_column(String(128))
    ready: Mapped[bool] = mapped_column(Boolean, default=False)
    ready_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column()
