"""Invariants that must hold in every state the release stages can leave behind."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from opslib.control.release import current_release
from opslib.corpus.indexing import indexed_chunk_ids
from opslib.corpus.search import search
from opslib.db.models import (
    Chunk,
    MLPipelineRun,
    ModelVersion,
    ReleaseEvent,
    ReleaseStatus,
    RunStatus,
    ServingState,
    Video,
    VideoStatus,
)
from opslib.infra.workspace import Workspace


def _double_effects(session: Session) -> list[str]:
    """A release move recorded twice for one opening, or a run failed although its model was
    switched to (the two-worker release of issue 15)."""
    problems: list[str] = []
    events = list(session.scalars(select(ReleaseEvent).order_by(ReleaseEvent.id)))
    ready_since_open: dict[int, int] = {}
    for event in events:
        run_id = (event.before or {}).get("candidate_run_id") or event.after.get("candidate_run_id")
        if event.kind == "OPEN_CANDIDATE":
            ready_since_open[run_id] = 0
        elif event.kind == "CANDIDATE_READY":
            ready_since_open[run_id] = ready_since_open.get(run_id, 0) + 1
            if ready_since_open[run_id] > 1:
                problems.append(f"CANDIDATE_READY recorded {ready_since_open[run_id]} times for run {run_id}")
    switched_to = {(e.before or {}).get("candidate_run_id") for e in events if e.kind == "CUTOVER"} - {None}
    for run in session.scalars(select(MLPipelineRun).where(MLPipelineRun.id.in_(switched_to))):
        if run.status is not RunStatus.READY_FOR_RELEASE:
            problems.append(f"run {run.id} was cut over but is {run.status.value} ({run.failure_reason})")
    return problems


def check_invariants(ws: Workspace) -> list[str]:
    """Every broken invariant, described (empty when all hold)."""
    problems: list[str] = []
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None
        status = release.release_status
        candidate_fields = (release.candidate_model_version, release.candidate_index_name, release.candidate_run_id)
        if status is ReleaseStatus.STABLE and any(candidate_fields):
            problems.append(f"STABLE with candidate fields set: {candidate_fields}")
        if status is ReleaseStatus.CANDIDATE_REINDEXING:
            run = session.get(MLPipelineRun, release.candidate_run_id) if release.candidate_run_id else None
            if not all(candidate_fields):
                problems.append("CANDIDATE_REINDEXING without candidate fields")
            if run is None or run.status is not RunStatus.READY_FOR_RELEASE:
                problems.append(f"the candidate's run is {run.status.value if run else 'missing'}")
            if release.candidate_index_name == release.active_index_name:
                problems.append("the candidate index is the active index")
        if status is ReleaseStatus.ROLLBACK_PREPARING and not release.rollback_snapshot_active_model_version:
            problems.append("ROLLBACK_PREPARING without a snapshot")
        if session.get(ModelVersion, release.active_model_version) is None:
            problems.append(f"active model {release.active_model_version} is not registered")
        problems.extend(_double_effects(session))
        active_index, candidate_index = release.active_index_name, release.candidate_index_name
        servable = set(
            session.scalars(
                select(Chunk.id)
                .join(Video, Video.id == Chunk.video_id)
                .where(Video.status == VideoStatus.READY, Video.search_serving_state == ServingState.SERVABLE)
            )
        )
        excluded = list(
            session.execute(
                select(Video.id, Video.project_id, Chunk.text)
                .join(Chunk, Chunk.video_id == Video.id)
                .where(Video.search_serving_state == ServingState.ROLLBACK_EXCLUDED)
            ).all()
        )
    if not ws.vectors.exists(active_index):
        problems.append(f"the active index {active_index} does not exist")
    unindexed = servable - indexed_chunk_ids(ws, active_index)
    if unindexed:
        problems.append(f"{len(unindexed)} servable chunks are not in the active index (e.g. {sorted(unindexed)[:2]})")
    for video_id, project, text in excluded[:5]:
        response = search(ws, text, project_id=project, user_id="invariant-check")
        if any(ref.startswith(video_id) for ref in response.refs):
            problems.append(f"ROLLBACK_EXCLUDED video {video_id} is searchable")
        if candidate_index and response.active_index_name == candidate_index:
            problems.append("search used the candidate index")
    response = search(ws, "how do I go about sorting lists", project_id="mini-alpha", user_id="invariant-check")
    if response.active_index_name != active_index or (
        candidate_index and response.active_index_name == candidate_index
    ):
        problems.append(f"search served {response.active_index_name}, the release says {active_index}")
    return problems
