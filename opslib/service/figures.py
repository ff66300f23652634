"""The batch figures of the lifecycle, read from the Metadata DB: what `/metrics` reports on every
scrape and `opsbench metrics --textfile` writes for node_exporter's textfile collector."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from opslib.control.endpoints import live_endpoints
from opslib.control.release import current_release
from opslib.corpus.indexing import missing_chunks_query
from opslib.db.models import (
    ExecutionStatus,
    FeedbackOutbox,
    MLPipelineRun,
    OpsMessage,
    RunStatus,
    StageExecution,
    utcnow,
)
from opslib.infra.workspace import Workspace


@dataclass
class StageFigures:
    last_success_at: datetime | None = None
    last_duration_s: float | None = None  # the latest finished execution, whatever its status
    last_status: str | None = None


@dataclass
class BatchFigures:
    release_status: str | None = None
    active_model_version: str | None = None
    active_index_name: str | None = None
    runs_by_status: dict[str, int] = field(default_factory=dict)
    queue_backlog: int = 0
    queue_oldest_age_s: float | None = None
    stages: dict[str, StageFigures] = field(default_factory=dict)
    index_missing_chunks: int = 0  # READY chunks not in the active index
    feedback_outbox_pending: int = 0
    feedback_outbox_oldest_age_s: float | None = None
    live_endpoints: int = 0


def batch_figures(ws: Workspace) -> BatchFigures:
    figures = BatchFigures()
    now = utcnow()
    with ws.db.read() as session:
        release = current_release(session)
        if release is not None:
            figures.release_status = release.release_status.value
            figures.active_model_version = release.active_model_version
            figures.active_index_name = release.active_index_name
            figures.index_missing_chunks = int(
                session.scalar(
                    select(func.count()).select_from(missing_chunks_query(release.active_index_name).subquery())
                )
                or 0
            )
        counts = dict(session.execute(select(MLPipelineRun.status, func.count()).group_by(MLPipelineRun.status)).all())
        figures.runs_by_status = {s.value: int(counts.get(s, 0)) for s in RunStatus}
        backlog, oldest = session.execute(
            select(func.count(), func.min(OpsMessage.issued_at)).where(OpsMessage.acked_at.is_(None))
        ).one()
        figures.queue_backlog = int(backlog)
        figures.queue_oldest_age_s = (now - oldest).total_seconds() if oldest is not None else None
        pending, oldest_feedback = session.execute(select(func.count(), func.min(FeedbackOutbox.received_at))).one()
        figures.feedback_outbox_pending = int(pending)
        figures.feedback_outbox_oldest_age_s = (
            (now - oldest_feedback).total_seconds() if oldest_feedback is not None else None
        )
        successes = session.execute(
            select(StageExecution.stage, func.max(StageExecution.finished_at))
            .where(StageExecution.status == ExecutionStatus.SUCCEEDED)
            .group_by(StageExecution.stage)
        ).all()
        for stage, finished in successes:
            figures.stages.setdefault(stage, StageFigures()).last_success_at = finished
        latest = (
            select(StageExecution.stage, func.max(StageExecution.id).label("id"))
            .where(StageExecution.finished_at.is_not(None))
            .group_by(StageExecution.stage)
            .subquery()
        )
        for execution in session.scalars(select(StageExecution).join(latest, StageExecution.id == latest.c.id)):
            stage_figures = figures.stages.setdefault(execution.stage, StageFigures())
            assert execution.finished_at is not None
            stage_figures.last_duration_s = (execution.finished_at - execution.started_at).total_seconds()
            stage_figures.last_status = execution.status.value
        figures.live_endpoints = len(live_endpoints(session, ws.settings.endpoint_stale_after_s))
    return figures
