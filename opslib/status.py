"""A read-only summary of the workspace, from the Metadata DB (the SOT)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from opslib.db.migrate import current_revision, head_revision
from opslib.db.models import (
    Chunk,
    CorpusImport,
    MLPipelineRun,
    ModelVersion,
    OpsMessage,
    StageExecution,
    VectorIndexEntry,
    Video,
)
from opslib.release import current_release, release_state
from opslib.workspace import Workspace


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def workspace_status(ws: Workspace, recent: int = 10) -> dict[str, Any]:
    revision = current_revision(ws.db)
    status: dict[str, Any] = {
        "workspace": str(ws.settings.workspace),
        "db_url": ws.db.engine.url.render_as_string(hide_password=True),
        "schema": {"current": revision, "head": head_revision()},
    }
    if revision is None:
        status["hint"] = "the Metadata DB is empty: run `opsbench init`"
        return status
    with ws.db.read() as session:
        status["release"] = release_state(current_release(session))
        status["models"] = [
            {"model_version": m.model_version, "base_model_version": m.base_model_version,
             "run_id": m.run_id, "created_at": _iso(m.created_at)}
            for m in session.scalars(select(ModelVersion).order_by(ModelVersion.created_at))
        ]
        status["corpus"] = {
            "videos_by_status": dict(session.execute(select(Video.status, func.count()).group_by(Video.status)).all()),
            "chunks": session.scalar(select(func.count()).select_from(Chunk)),
            "index_entries": dict(
                session.execute(
                    select(VectorIndexEntry.index_name, func.count()).group_by(VectorIndexEntry.index_name)
                ).all()
            ),
            "imports": [c.name for c in session.scalars(select(CorpusImport).order_by(CorpusImport.name))],
        }
        status["runs"] = [
            {"id": r.id, "status": r.status.value, "failed_stage": r.failed_stage and r.failed_stage.value,
             "failure_type": r.failure_type and r.failure_type.value, "created_at": _iso(r.created_at)}
            for r in session.scalars(select(MLPipelineRun).order_by(MLPipelineRun.id.desc()).limit(recent))
        ]
        status["queue"] = {
            "unacked": session.scalar(select(func.count()).select_from(OpsMessage).where(OpsMessage.acked_at.is_(None))),
        }
        status["stage_executions"] = [
            {"id": e.id, "stage": e.stage, "status": e.status.value, "run_id": e.run_id,
             "started_at": _iso(e.started_at), "output_html": e.output_html,
             "error": e.error}
            for e in session.scalars(select(StageExecution).order_by(StageExecution.id.desc()).limit(recent))
        ]
    status["corpus"]["videos_by_status"] = {k.value: v for k, v in status["corpus"]["videos_by_status"].items()}
    from opslib.schedule import schedule_status

    status["schedules"] = schedule_status(ws)
    return status
