"""Stage 50: open CANDIDATE_REINDEXING for a READY_FOR_RELEASE run and build its index.

Steps (each a checkpoint for the crash tests): open the candidate → load the candidate model
(readiness) → build the candidate collection from every READY chunk, in batches, reusing
embeddings by content hash → catch up chunks that became READY meanwhile → CANDIDATE_READY.
Resumable: re-running it for the same run continues where it stopped (entries already written
are not recomputed). Any failure aborts the candidate — fields cleared, dual-write stopped, run
FAILED(REINDEX, ERROR) in the same transaction — and leaves serving untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from opslib.control.release import (
    ReleaseError,
    apply,
    cleared_candidate,
    current_release,
    release_state,
)
from opslib.control.runs import RunError, RunNotFound, mark_failed
from opslib.corpus.indexing import build_index, index_chunks, missing_from_index
from opslib.corpus.ingest import still_reindexing
from opslib.db.models import (
    FailureType,
    MLPipelineRun,
    ReleaseStatus,
    RunStage,
    RunStatus,
    VectorIndexEntry,
    utcnow,
)
from opslib.errors import Conflict
from opslib.infra.embedding import Purpose
from opslib.infra.faults import checkpoint
from opslib.infra.logs import current_trace_id, get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)


class ReindexError(Conflict):
    """The release moved on while the candidate index was being built (lost the race)."""


@dataclass
class ReindexReport:
    run_id: int
    candidate_model_version: str
    candidate_index_name: str
    resumed: bool = False
    chunks: int = 0
    embedded: int = 0
    reused: int = 0
    unchanged: int = 0
    caught_up: int = 0
    release_before: dict[str, Any] | None = None
    release_after: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def released_run(session: Session, run_id: int) -> MLPipelineRun:
    """The READY_FOR_RELEASE run a release stage acts on; refused once it has been cut over."""
    run = session.get(MLPipelineRun, run_id)
    if run is None:
        raise RunNotFound(f"run {run_id}: no such run")
    if run.status is not RunStatus.READY_FOR_RELEASE:
        raise RunError(f"run {run_id}: is {run.status.value}; only a READY_FOR_RELEASE run is released")
    if run.cutover_time is not None:
        release = current_release(session)
        if release is None or release.candidate_run_id != run_id:
            raise ReleaseError(f"run {run_id}: already cut over at {run.cutover_time.isoformat()}")
    return run


def open_candidate(ws: Workspace, run_id: int, *, actor: str) -> tuple[bool, dict[str, Any] | None]:
    """STABLE → CANDIDATE_REINDEXING for the run (or find it open already): (resumed, state before)."""
    with ws.db.transaction() as session:
        run = released_run(session, run_id)
        release = current_release(session, for_update=True)
        assert release is not None
        before = release_state(release)
        if release.release_status is ReleaseStatus.CANDIDATE_REINDEXING and release.candidate_run_id == run_id:
            return True, before

        def guard(current: Any) -> None:
            if run.baseline_model_version != current.active_model_version:
                raise ReleaseError(
                    f"run {run_id} was judged against {run.baseline_model_version}, but "
                    f"{current.active_model_version} serves now: evaluate a new run instead"
                )

        apply(
            session,
            "OPEN_CANDIDATE",
            actor=actor,
            trace_id=run.trace_id or current_trace_id(),
            guard=guard,
            changes={
                "candidate_model_version": run.candidate_model_version,
                "candidate_index_name": run.candidate_index_name,
                "candidate_run_id": run_id,
                "candidate_ready_at": None,
            },
        )
        return False, before


def abort_candidate(ws: Workspace, run_id: int, reason: str, *, actor: str, stage: RunStage = RunStage.REINDEX) -> bool:
    """Drop the run's candidate (if it is the open one) and fail the run, in one transaction."""
    with ws.db.transaction() as session:
        release = current_release(session, for_update=True)
        aborted = False
        if (
            release is not None
            and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING
            and release.candidate_run_id == run_id
        ):
            apply(session, "ABORT_CANDIDATE", actor=actor, trace_id=current_trace_id(), changes=cleared_candidate())
            aborted = True
        run = session.get(MLPipelineRun, run_id)
        if run is not None and run.status is RunStatus.READY_FOR_RELEASE:
            mark_failed(session, run_id, stage=stage, failure_type=FailureType.ERROR, reason=reason)
        index_name = run.candidate_index_name if run is not None else None
    if aborted and index_name:
        # The aborted candidate index is never served: free it (its entries first, the SOT).
        with ws.db.transaction() as session:
            session.execute(delete(VectorIndexEntry).where(VectorIndexEntry.index_name == index_name))
        ws.vectors.drop(index_name)
    return aborted


def reindex_candidate(ws: Workspace, run_id: int, *, progress: bool = False) -> ReindexReport:
    actor = ws.settings.operator
    resumed, before = open_candidate(ws, run_id, actor=actor)
    with ws.db.read() as session:
        run = session.get(MLPipelineRun, run_id)
        assert run is not None and run.candidate_model_version and run.candidate_index_name
        version, index_name = run.candidate_model_version, run.candidate_index_name
    report = ReindexReport(run_id, version, index_name, resumed=resumed, release_before=before)
    checkpoint(ws.settings, "reindex.opened")
    try:
        ws.embeddings.load(version)  # readiness: loaded + smoke encode
        checkpoint(ws.settings, "reindex.loaded")
        guard = still_reindexing(index_name)
        first_batch = {"done": False}

        def after_batch(_done: int) -> None:
            if not first_batch["done"]:
                first_batch["done"] = True
                checkpoint(ws.settings, "reindex.mid_batch")

        built = build_index(
            ws,
            index_name=index_name,
            model_version=version,
            purpose=Purpose.REINDEX,
            progress=progress,
            batch_size=ws.settings.reindex_batch_size,
            guard=guard,
            on_batch=after_batch,
        )
        if built.stopped:
            raise ReindexError("the release left CANDIDATE_REINDEXING while the index was being built")
        report.chunks, report.embedded, report.reused, report.unchanged = (
            built.requested,
            built.embedded,
            built.reused,
            built.unchanged,
        )
        checkpoint(ws.settings, "reindex.built")
        late = missing_from_index(ws, index_name)  # READY meanwhile, or written before dual-write began
        if late:
            caught = index_chunks(
                ws, late, index_name=index_name, model_version=version, purpose=Purpose.REINDEX, guard=guard
            )
            report.caught_up = caught.written
        with ws.db.transaction() as session:

            def is_ours(current: Any) -> None:
                if current.candidate_run_id != run_id:
                    raise ReleaseError(f"the open candidate is run {current.candidate_run_id}'s, not run {run_id}'s")

            release = apply(
                session,
                "CANDIDATE_READY",
                actor=actor,
                trace_id=run.trace_id,
                guard=is_ours,
                changes={"candidate_ready_at": utcnow()},
            )
            report.release_after = release_state(release)
        checkpoint(ws.settings, "reindex.ready")
    except Exception as exc:
        abort_candidate(ws, run_id, f"50_reindex_candidate: {type(exc).__name__}: {exc}", actor=actor)
        raise
    log.info(
        "candidate index built",
        extra={"run_id": run_id, "index_name": index_name, "embedded": report.embedded, "reused": report.reused},
    )
    return report
