"""Stage 70: roll serving back to the rollback snapshot.

Steps: PREPARE_ROLLBACK (guards: STABLE, a snapshot exists, the request's expected active is
the active) — in the same transaction every video with a chunk missing from the snapshot index
(embedded only by the problem model) becomes ROLLBACK_EXCLUDED, so search hides it at once →
load the snapshot model (readiness) → restore the snapshot index (rebuilt from its snapshot
file if the collection is gone or fails its checksum) → COMPLETE_ROLLBACK: active = snapshot,
previous = the rolled-back model (never restored from the snapshot), candidate and snapshot
fields cleared → re-embed the excluded chunks with the restored model; each video is SERVABLE
again as soon as all its chunks are in.

``roll_back`` converges from any point: a redelivered request resumes an unfinished rollback,
and one whose rollback already completed is a no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, select

from opslib.control.endpoints import wait_until_loaded
from opslib.control.leases import Lease, check_fence, holding_release
from opslib.control.messages import RollbackRequest, parse_control_message
from opslib.control.release import (
    ReleaseError,
    apply,
    cleared_candidate,
    current_release,
    release_state,
)
from opslib.control.serving import exclude_for_rollback, make_servable_again
from opslib.corpus.indexing import index_chunks
from opslib.db.models import (
    Chunk,
    OpsMessage,
    ReleaseEvent,
    ReleaseStatus,
    ServingState,
    VectorIndexEntry,
    Video,
    VideoStatus,
    utcnow,
)
from opslib.infra.embedding import Purpose
from opslib.infra.faults import checkpoint
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.index_snapshot import (
    collection_matches,
    latest_snapshot,
    restore_index,
)

log = get_logger(__name__)


class RollbackRefused(ReleaseError):
    pass


@dataclass
class RollbackReport:
    trace_id: str
    outcome: str  # "rolled back" | "already rolled back"
    target_model_version: str | None = None
    target_index_name: str | None = None
    excluded_videos: int = 0
    restored_from_file: int | None = None  # vectors rebuilt from the snapshot file (None: collection intact)
    reembedded_chunks: int = 0
    servable_again: int = 0
    release_before: dict[str, Any] | None = None
    release_after: dict[str, Any] | None = None
    switch_ms: float | None = None  # the COMPLETE_ROLLBACK transaction alone
    endpoints_lagging: list[str] = field(default_factory=list)  # live endpoints without the target at the switch
    notes: list[str] = field(default_factory=list)


def _done_before(session: Any, trace_id: str) -> bool:
    return (
        session.scalar(
            select(exists().where(ReleaseEvent.kind == "COMPLETE_ROLLBACK", ReleaseEvent.trace_id == trace_id))
        )
        or False
    )


def _excluded_video_ids(session: Any, snapshot_index: str) -> list[str]:
    """Videos with a chunk the snapshot index does not hold."""
    in_snapshot = select(VectorIndexEntry.chunk_id).where(VectorIndexEntry.index_name == snapshot_index)
    return list(
        session.scalars(
            select(Video.id)
            .distinct()
            .join(Chunk, Chunk.video_id == Video.id)
            .where(Video.status == VideoStatus.READY, ~Chunk.id.in_(in_snapshot))
            .order_by(Video.id)
        )
    )


def prepare(ws: Workspace, request: RollbackRequest, report: RollbackReport, lease: Lease) -> bool:
    """STABLE → ROLLBACK_PREPARING with exclusions; False if the request was already carried out."""
    with ws.db.transaction() as session:
        check_fence(session, lease)
        release = current_release(session, for_update=True)
        assert release is not None
        report.release_before = release_state(release)
        if release.release_status is ReleaseStatus.ROLLBACK_PREPARING:
            report.notes.append("resuming a rollback in progress")
            report.target_model_version = release.rollback_snapshot_active_model_version
            report.target_index_name = release.rollback_snapshot_active_index_name
            return True
        if _done_before(session, request.trace_id):
            report.outcome = "already rolled back"
            return False

        def guard(current: Any) -> None:
            if current.rollback_snapshot_active_model_version is None:
                raise RollbackRefused("no rollback snapshot: nothing to roll back to")
            if current.active_model_version != request.expected_active_model_version:
                raise RollbackRefused(
                    f"stale request: it expects {request.expected_active_model_version} active, "
                    f"but {current.active_model_version} is"
                )

        snapshot_index = release.rollback_snapshot_active_index_name
        apply(
            session,
            "PREPARE_ROLLBACK",
            actor=request.requested_by or ws.settings.operator,
            trace_id=request.trace_id,
            guard=guard,
            fence=lease,
        )
        report.excluded_videos = _exclude(session, snapshot_index or "")
        report.target_model_version = release.rollback_snapshot_active_model_version
        report.target_index_name = snapshot_index
    return True


def _exclude(session: Any, snapshot_index: str) -> int:
    """Hide (ROLLBACK_EXCLUDED) every SERVABLE READY video with a chunk missing from the index."""
    excluded = _excluded_video_ids(session, snapshot_index)
    exclude_for_rollback(session, excluded)
    return len(excluded)


def exclude_incomplete(ws: Workspace, snapshot_index: str, lease: Lease) -> int:
    """After a restore from file: hide the videos the restored index does not fully hold."""
    with ws.db.transaction() as session:
        check_fence(session, lease)
        release = current_release(session, for_share=True)
        if release is None or release.release_status is not ReleaseStatus.ROLLBACK_PREPARING:
            return 0
        return _exclude(session, snapshot_index)


def roll_back(
    ws: Workspace, request: RollbackRequest, *, progress: bool = False, lease: Lease | None = None
) -> RollbackReport:
    """Stage 70 under the release lease (``LeaseBusy`` when another worker drives the release);
    ``lease``: the driving worker's, which holds it for the stage (``holding_release``)."""
    with holding_release(ws.db, ws.settings, f"70_rollback ({request.trace_id})", held=lease) as lease:
        return _roll_back(ws, request, lease, progress=progress)


def _roll_back(ws: Workspace, request: RollbackRequest, lease: Lease, *, progress: bool) -> RollbackReport:
    report = RollbackReport(trace_id=request.trace_id, outcome="rolled back")
    if prepare(ws, request, report, lease):
        checkpoint(ws.settings, "rollback.prepared")
        target, index_name = report.target_model_version, report.target_index_name
        assert target and index_name
        ws.embeddings.load(target)  # readiness of the model we return to
        # ... and where it will serve. Unlike a cutover, a rollback does not give up: a bad model is
        # serving. An endpoint still lacking the target after the wait loads it on its next search.
        report.endpoints_lagging = wait_until_loaded(
            ws.db,
            target,
            stale_after_s=ws.settings.endpoint_stale_after_s,
            timeout_s=ws.settings.endpoint_wait_s,
        )
        if report.endpoints_lagging:
            log.warning(
                "rollback switches before every endpoint loaded the target",
                extra={"target": target, "endpoints": report.endpoints_lagging},
            )
        checkpoint(ws.settings, "rollback.loaded")
        manifest = latest_snapshot(ws, index_name)
        if manifest is not None and not collection_matches(ws, manifest):
            report.restored_from_file = restore_index(ws, manifest)
            # The file predates chunks written into the index after the export: their videos are
            # now incomplete there too, so they are hidden and re-embedded like the others.
            report.excluded_videos += exclude_incomplete(ws, index_name, lease)
        elif manifest is None and not ws.vectors.exists(index_name):
            raise RollbackRefused(f"index {index_name} is gone and no snapshot file exists to rebuild it")
        checkpoint(ws.settings, "rollback.restored")
        started = time.perf_counter()
        with ws.db.transaction() as session:
            release = current_release(session)
            assert release is not None
            problem = (release.active_model_version, release.active_index_name)
            release = apply(
                session,
                "COMPLETE_ROLLBACK",
                actor=request.requested_by or ws.settings.operator,
                trace_id=request.trace_id,
                changes={
                    "active_model_version": target,
                    "active_index_name": index_name,
                    "previous_model_version": problem[0],
                    "previous_index_name": problem[1],
                    "rollback_snapshot_active_model_version": None,
                    "rollback_snapshot_active_index_name": None,
                    "rollback_snapshot_captured_at": None,
                    "switched_at": utcnow(),
                    **cleared_candidate(),
                },
                fence=lease,
            )
        report.switch_ms = (time.perf_counter() - started) * 1000
        checkpoint(ws.settings, "rollback.switched")
    reembedded, servable = reinclude_excluded(ws, lease, progress=progress)
    report.reembedded_chunks, report.servable_again = reembedded, servable
    with ws.db.read() as session:
        report.release_after = release_state(current_release(session))
    log.info(
        "rollback", extra={"outcome": report.outcome, "excluded": report.excluded_videos, "reembedded": reembedded}
    )
    return report


def reinclude_excluded(ws: Workspace, lease: Lease, *, progress: bool = False) -> tuple[int, int]:
    """Re-embed ROLLBACK_EXCLUDED videos with the active model; each is SERVABLE once complete.

    Only while the release is STABLE (after a completed rollback), by the holder of the release
    lease; safe to repeat."""
    with ws.db.read() as session:
        release = current_release(session)
        if release is None or release.release_status is not ReleaseStatus.STABLE:
            return 0, 0
        model, index = release.active_model_version, release.active_index_name
        videos = list(
            session.scalars(
                select(Video.id).where(Video.search_serving_state == ServingState.ROLLBACK_EXCLUDED).order_by(Video.id)
            )
        )
    reembedded = servable = 0
    for video_id in videos:
        with ws.db.read() as session:
            chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.video_id == video_id).order_by(Chunk.id)))
        written = index_chunks(
            ws, chunk_ids, index_name=index, model_version=model, purpose=Purpose.INGEST, progress=progress
        )
        reembedded += written.written
        with ws.db.transaction() as session:
            check_fence(session, lease)
            release = current_release(session)
            held = set(
                session.scalars(
                    select(VectorIndexEntry.chunk_id).where(
                        VectorIndexEntry.index_name == index, VectorIndexEntry.chunk_id.in_(chunk_ids)
                    )
                )
            )
            if release is not None and release.active_index_name == index and held >= set(chunk_ids):
                make_servable_again(session, [video_id])
                servable += 1
        if servable == 1:
            checkpoint(ws.settings, "rollback.reembedded_one")
    return reembedded, servable


def request_from_message(ws: Workspace, message_id: int) -> RollbackRequest:
    """The ROLLBACK_REQUEST stored as queue message ``message_id`` (parsed strictly)."""
    with ws.db.read() as session:
        row = session.get(OpsMessage, message_id)
        if row is None:
            raise RollbackRefused(f"message {message_id}: no such message")
        payload, attempt = dict(row.payload), row.attempt
    message = parse_control_message(payload, attempt)
    if not isinstance(message, RollbackRequest):
        raise RollbackRefused(f"message {message_id}: is a {message.message_type}, not a ROLLBACK_REQUEST")
    return message
