"""Stage 60: the gated, atomic switch of serving to the candidate.

Steps: fix the run's ``cutover_time`` (once) → completeness gate: every chunk READY before
``cutover_time`` has an entry in the candidate index (an id-set check; chunks still missing are
caught up once, then the gate is final) → endpoint gate: every live serving endpoint has loaded
the candidate (waited for up to ``endpoint_wait_s``; refused, to be retried, if one has not) → export the outgoing active index to an index snapshot
file → CUTOVER: in one transaction capture the rollback snapshot of the active combination,
previous = old active, active = candidate, candidate fields cleared, ``switched_at``.
Search reads the release row once per request, so it sees the old or the new combination,
never a mix, and never the candidate before the switch.

The stage holds the release lease throughout; its writes (cutover_time, the snapshot file, the
switch) check the lease's fencing token, so two workers never cut over at once and a driver that
lost its lease cannot switch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opslib.control.endpoints import wait_until_loaded
from opslib.control.leases import Lease, check_fence, holding_release, verify_fence
from opslib.control.release import (
    ReleaseError,
    apply,
    cleared_candidate,
    current_release,
    release_state,
)
from opslib.corpus.indexing import index_chunks, missing_from_index
from opslib.corpus.ingest import still_reindexing
from opslib.db.models import MLPipelineRun, ReleaseStatus, utcnow
from opslib.infra.embedding import Purpose
from opslib.infra.faults import checkpoint
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.index_snapshot import SnapshotManifest, export_index
from opslib.lifecycle.reindex import released_run

log = get_logger(__name__)


class CutoverRefused(ReleaseError):
    """The cutover guard is not met yet; ``waiting_on`` says which one."""

    def __init__(self, waiting_on: str) -> None:
        super().__init__(f"cutover refused: {waiting_on}")
        self.waiting_on = waiting_on


@dataclass
class CutoverReport:
    run_id: int
    cutover_time: datetime
    required: int = 0  # READY chunks before cutover_time
    missing_before_catch_up: int = 0
    missing: int = 0
    snapshot: SnapshotManifest | None = None
    release_before: dict[str, Any] | None = None
    release_after: dict[str, Any] | None = None
    switch_ms: float | None = None  # the switch transaction alone: what search can notice


def waiting_on(release: Any, run_id: int) -> str | None:
    """The cutover guard not met yet for ``run_id`` (None when the switch may happen)."""
    if release.release_status is not ReleaseStatus.CANDIDATE_REINDEXING:
        return f"the release is {release.release_status.value}, not CANDIDATE_REINDEXING"
    if release.candidate_run_id != run_id:
        return f"the open candidate belongs to run {release.candidate_run_id}"
    if release.candidate_ready_at is None:
        return "the candidate is not ready (its index is still being built)"
    return None


def _fix_cutover_time(ws: Workspace, run_id: int, lease: Lease) -> datetime:
    with ws.db.transaction() as session:
        check_fence(session, lease)
        run = released_run(session, run_id)
        release = current_release(session)
        assert release is not None
        reason = waiting_on(release, run_id)
        if reason:
            raise CutoverRefused(reason)
        if run.cutover_time is None:
            run.cutover_time = utcnow()
        return run.cutover_time


def cutover(ws: Workspace, run_id: int, *, lease: Lease | None = None) -> CutoverReport:
    """Stage 60 under the release lease (``LeaseBusy`` when another worker drives the release);
    ``lease``: the driving worker's, held across 50 → 60 (``holding_release``)."""
    with holding_release(ws.db, ws.settings, f"60_cutover for run {run_id}", held=lease) as lease:
        return _cutover(ws, run_id, lease)


def _cutover(ws: Workspace, run_id: int, lease: Lease) -> CutoverReport:
    actor = ws.settings.operator
    cutover_time = _fix_cutover_time(ws, run_id, lease)
    report = CutoverReport(run_id, cutover_time)
    checkpoint(ws.settings, "cutover.time_fixed")
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None
        report.release_before = release_state(release)
        candidate_index, candidate_version = release.candidate_index_name, release.candidate_model_version
        active_index, active_version = release.active_index_name, release.active_model_version
        trace_id = session.get(MLPipelineRun, run_id).trace_id  # type: ignore[union-attr]
    assert candidate_index and candidate_version

    missing = missing_from_index(ws, candidate_index, ready_before=cutover_time)
    report.missing_before_catch_up = len(missing)
    if missing:  # READY before cutover_time but not reached by the build or dual-write yet
        index_chunks(
            ws,
            missing,
            index_name=candidate_index,
            model_version=candidate_version,
            purpose=Purpose.REINDEX,
            guard=still_reindexing(candidate_index),
        )
        missing = missing_from_index(ws, candidate_index, ready_before=cutover_time)
    report.missing = len(missing)
    if missing:
        raise CutoverRefused(
            f"{len(missing)} chunks READY before cutover_time are not in the candidate index (e.g. {missing[:3]})"
        )
    checkpoint(ws.settings, "cutover.complete")

    # Candidate ready where it will serve: a switch must not land on a replica that cannot encode
    # with the candidate (they preload it while the release is CANDIDATE_REINDEXING).
    lagging = wait_until_loaded(
        ws.db,
        candidate_version,
        stale_after_s=ws.settings.endpoint_stale_after_s,
        timeout_s=ws.settings.endpoint_wait_s,
    )
    if lagging:
        raise CutoverRefused(f"serving endpoints {lagging} have not loaded the candidate {candidate_version}")

    verify_fence(ws.db, lease)  # the file cannot join the switch transaction; that one checks again
    report.snapshot = export_index(ws, active_index, active_version, tag=f"cutover-run-{run_id:05d}")
    checkpoint(ws.settings, "cutover.exported")

    # The id-set check once more, after the export and outside the switch transaction: the switch
    # must not grow with the corpus. Nothing can open a gap after it: while the release is
    # CANDIDATE_REINDEXING a video turns READY only with its candidate entries written, under a
    # shared lock on the release row (opslib.corpus.ingest), and the switch takes that row exclusively.
    still_missing = missing_from_index(ws, candidate_index, ready_before=cutover_time)
    if still_missing:
        report.missing = len(still_missing)
        raise CutoverRefused(
            f"{len(still_missing)} chunks READY before cutover_time are missing from the "
            f"candidate index (e.g. {still_missing[:3]})"
        )
    started = time.perf_counter()
    with ws.db.transaction() as session:

        def gate(current: Any) -> None:
            reason = waiting_on(current, run_id)
            if reason:
                raise CutoverRefused(reason)
            if current.active_index_name != active_index:
                raise CutoverRefused("the active index changed since the snapshot was exported")

        now = utcnow()
        release = apply(
            session,
            "CUTOVER",
            actor=actor,
            trace_id=trace_id,
            guard=gate,
            fence=lease,
            changes={
                "rollback_snapshot_active_model_version": active_version,
                "rollback_snapshot_active_index_name": active_index,
                "rollback_snapshot_captured_at": now,
                "previous_model_version": active_version,
                "previous_index_name": active_index,
                "active_model_version": candidate_version,
                "active_index_name": candidate_index,
                "switched_at": now,
                **cleared_candidate(),
            },
        )
        report.release_after = release_state(release)
    report.switch_ms = (time.perf_counter() - started) * 1000
    checkpoint(ws.settings, "cutover.switched")
    log.info(
        "cutover",
        extra={"run_id": run_id, "active_model_version": candidate_version, "previous_model_version": active_version},
    )
    return report


def cutover_or_wait(
    ws: Workspace, run_id: int, *, lease: Lease | None = None
) -> tuple[CutoverReport | None, str | None]:
    """(report, None) after the switch, or (None, the guard waited on) when it is refused for now."""
    try:
        return cutover(ws, run_id, lease=lease), None
    except CutoverRefused as refused:
        return None, refused.waiting_on
