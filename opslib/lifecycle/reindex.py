"""Stage 50: open CANDIDATE_REINDEXING for a READY_FOR_RELEASE run and build its index.

Steps (each a checkpoint for the crash tests): open the candidate → load the candidate model
(readiness) → build the candidate collection from every READY chunk, in batches, reusing
embeddings by content hash → catch up chunks that became READY meanwhile → CANDIDATE_READY.
Resumable: re-running it for the same run continues where it stopped (entries already written
are not recomputed). Any failure aborts the candidate — fields cleared, dual-write stopped, run
FAILED(REINDEX, ERROR) in the same transaction — and leaves serving untouched.

The stage holds the release lease (``opslib.control.leases``) throughout: a second worker asking
to release the same run meanwhile gets ``LeaseBusy`` and changes nothing, and every release move
carries the lease's fencing token, so a driver that lost its lease cannot move the release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from opslib.control.leases import Lease, LeaseBusy, StaleLease, check_fence, default_holder, holding_release
from opslib.control.release import (
    ReleaseError,
    apply,
    cleared_candidate,
    current_release,
    release_state,
)
from opslib.control.runs import RunError, RunNotFound, mark_failed
from opslib.control.shards import drop_shards, plan_shards, shard_table
from opslib.corpus.indexing import index_chunks, missing_from_index, servable_chunk_ids
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
from opslib.infra.embedding import Purpose
from opslib.infra.faults import checkpoint
from opslib.infra.logs import current_trace_id, get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.sharded_build import finish_shards

log = get_logger(__name__)


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
    shards: list[dict[str, Any]] = field(default_factory=list)  # opslib.control.shards.shard_table
    shards_here: int = 0  # shards this stage's own process encoded (the rest: other workers)


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


def open_candidate(ws: Workspace, run_id: int, *, actor: str, fence: Lease) -> tuple[bool, dict[str, Any] | None]:
    """STABLE → CANDIDATE_REINDEXING for the run (or find it open already): (resumed, state before)."""
    with ws.db.transaction() as session:
        check_fence(session, fence)
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
            fence=fence,
            changes={
                "candidate_model_version": run.candidate_model_version,
                "candidate_index_name": run.candidate_index_name,
                "candidate_run_id": run_id,
                "candidate_ready_at": None,
            },
        )
        return False, before


def abort_candidate(
    ws: Workspace,
    run_id: int,
    reason: str,
    *,
    actor: str,
    stage: RunStage = RunStage.REINDEX,
    fence: Lease | None = None,
) -> bool:
    """Drop the run's candidate (if it is the open one) and fail the run, in one transaction.

    Under ``fence`` (the caller's release lease), else under the release lease taken here — when
    another live driver holds it, the release is theirs: nothing is changed (False). A run whose
    candidate was switched to is never failed: it serves."""
    if fence is None:
        try:
            with holding_release(ws.db, ws.settings, f"abort the candidate of run {run_id}") as lease:
                return abort_candidate(ws, run_id, reason, actor=actor, stage=stage, fence=lease)
        except LeaseBusy as busy:
            log.warning(
                "candidate not aborted: the release is driven elsewhere", extra={"run_id": run_id, "why": str(busy)}
            )
            return False
    with ws.db.transaction() as session:
        check_fence(session, fence)
        release = current_release(session, for_update=True)
        aborted = False
        if (
            release is not None
            and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING
            and release.candidate_run_id == run_id
        ):
            apply(
                session,
                "ABORT_CANDIDATE",
                actor=actor,
                trace_id=current_trace_id(),
                changes=cleared_candidate(),
                fence=fence,
            )
            aborted = True
        run = session.get(MLPipelineRun, run_id)
        if run is not None and run.status is RunStatus.READY_FOR_RELEASE and not switched_to(release, run):
            mark_failed(session, run_id, stage=stage, failure_type=FailureType.ERROR, reason=reason)
        index_name = run.candidate_index_name if run is not None else None
    if aborted and index_name:
        # The aborted candidate index is never served: free it (its entries first, the SOT).
        with ws.db.transaction() as session:
            session.execute(delete(VectorIndexEntry).where(VectorIndexEntry.index_name == index_name))
            drop_shards(session, index_name)
        ws.vectors.drop(index_name)
    return aborted


def switched_to(release: Any, run: MLPipelineRun) -> bool:
    """The run's candidate was switched to (its cutover completed): it is released, never failed."""
    return run.cutover_time is not None and (release is None or release.candidate_run_id != run.id)


def reindex_candidate(
    ws: Workspace, run_id: int, *, progress: bool = False, lease: Lease | None = None
) -> ReindexReport:
    """Stage 50 under the release lease (``LeaseBusy`` when another worker drives the release);
    ``lease``: the driving worker's, held across 50 → 60 (``holding_release``)."""
    with holding_release(ws.db, ws.settings, f"50_reindex_candidate for run {run_id}", held=lease) as lease:
        return _reindex(ws, run_id, lease, progress=progress)


def _reindex(ws: Workspace, run_id: int, lease: Lease, *, progress: bool) -> ReindexReport:
    actor = ws.settings.operator
    resumed, before = open_candidate(ws, run_id, actor=actor, fence=lease)
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

        # The build is split into shards any live worker may take (opslib.control.shards); the
        # plan is recorded once, so a resumed stage continues it. Chunks sorted by length keep
        # each shard's batches evenly padded.
        ws.vectors.collection(index_name)  # an empty corpus still gets its (empty) index
        plan_shards(ws.db, index_name, version, servable_chunk_ids(ws, by_length=True), ws.settings.reindex_shard_size)
        holder = default_holder("50_reindex_candidate")
        mine = finish_shards(ws, index_name, holder, progress=progress, on_batch=after_batch)
        shards = shard_table(ws.db, index_name)
        report.shards = shards
        report.shards_here = len(mine.shards)
        # This execution's own figures; what other workers (or an earlier attempt) encoded is in
        # the shard table.
        report.chunks = sum(s["chunks"] for s in shards)
        report.embedded, report.reused = mine.embedded, mine.reused
        report.unchanged = report.chunks - report.embedded - report.reused
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
                fence=lease,
            )
            report.release_after = release_state(release)
        checkpoint(ws.settings, "reindex.ready")
    except StaleLease:
        raise  # no longer the driver: whoever took the lease over decides
    except Exception as exc:
        abort_candidate(ws, run_id, f"50_reindex_candidate: {type(exc).__name__}: {exc}", actor=actor, fence=lease)
        raise
    log.info(
        "candidate index built",
        extra={"run_id": run_id, "index_name": index_name, "embedded": report.embedded, "reused": report.reused},
    )
    return report
