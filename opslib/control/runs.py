"""MLPipelineRun control: the one module that creates runs and moves them.

Every move is checked against ``TRANSITIONS`` inside a write transaction. The run slots (at most
one RUNNING, at most one PENDING) are enforced by partial unique indexes; when an insert loses a
race for a slot, the request re-reads the slots and tries again instead of failing (ADR-011).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from opslib.control.datasets import choose_usable_dataset, no_usable_dataset_reason
from opslib.control.datasets import latest_eligible_dataset as latest_eligible_dataset  # imported from here too
from opslib.control.release import current_release
from opslib.db.engine import Database
from opslib.db.models import (
    FailureType,
    MLPipelineRun,
    ModelVersion,
    RunStage,
    RunStatus,
    TrainingDataset,
    TriggerSource,
    utcnow,
)
from opslib.errors import NotFound, Refused
from opslib.infra.logs import get_logger
from opslib.infra.storage import ObjectStore
from opslib.infra.vector_store import index_name_for

log = get_logger(__name__)

# (from, to) -> what the move is. ``None`` is "no run yet".
TRANSITIONS: dict[tuple[RunStatus | None, RunStatus], str] = {
    (None, RunStatus.RUNNING): "start: no active run, latest eligible dataset fixed",
    (None, RunStatus.PENDING): "queue: a run is active; the newest request waits",
    (RunStatus.PENDING, RunStatus.SUPERSEDED): "a newer request queued",
    (RunStatus.PENDING, RunStatus.RUNNING): "the active slot freed; the newest pending run starts",
    (RunStatus.RUNNING, RunStatus.READY_FOR_RELEASE): "trained and evaluated PASS; all persisted",
    (RunStatus.RUNNING, RunStatus.FAILED): "quality below criteria (FAIL) or system error (ERROR)",
    (RunStatus.READY_FOR_RELEASE, RunStatus.FAILED): "release failed (REINDEX/CUTOVER)",
}
ACTIVE = (RunStatus.RUNNING, RunStatus.PENDING)
_SLOT_RETRIES = 20


class RunError(Refused):
    """A refused run transition; nothing was changed."""


class RunNotFound(RunError, NotFound):
    """The run named does not exist."""


@dataclass(frozen=True)
class RunRequestOutcome:
    """What a TRAINING_REQUEST led to: a run started or queued, an existing run, or a refusal."""

    run_id: int | None
    status: RunStatus | None
    created: bool
    reason: str


def _is_retryable(exc: OperationalError) -> bool:
    """PostgreSQL deadlock / serialization failures on the slot rows: re-read and try again."""
    text = str(exc).lower()
    return "deadlock" in text or "could not serialize" in text


def candidate_version_for(run_id: int, dataset_version: str) -> str:
    return f"cand-r{run_id:05d}-{dataset_version}"


def check_transition(current: RunStatus | None, target: RunStatus) -> str:
    try:
        return TRANSITIONS[(current, target)]
    except KeyError:
        raise RunError(f"run transition {current.value if current else '—'} → {target.value} is not allowed") from None


def _lock_run(session: Session, run_id: int) -> MLPipelineRun:
    run = session.scalars(select(MLPipelineRun).where(MLPipelineRun.id == run_id).with_for_update()).one_or_none()
    if run is None:
        raise RunNotFound(f"run {run_id}: no such run")
    return run


def _slot(session: Session, status: RunStatus) -> MLPipelineRun | None:
    return session.scalars(select(MLPipelineRun).where(MLPipelineRun.status == status)).one_or_none()


def is_delivered(session: Session, model_version: str | None) -> bool:
    """``model_version`` is a model an operator delivered (``opsbench propose-model``): a run
    naming it trains nothing, so it needs no training dataset."""
    row = session.get(ModelVersion, model_version) if model_version else None
    return row is not None and row.delivered


def _fix_start(session: Session, run: MLPipelineRun, dataset_version: str | None = None) -> None:
    """What a run is fixed to when it starts: dataset (``dataset_version``, verified by the caller,
    else the latest eligible; none for a delivered candidate), baseline (= active now), candidate."""
    release = current_release(session)
    if release is None:
        raise RunError("no ModelRelease: bootstrap the workspace")
    run.baseline_model_version = release.active_model_version
    if is_delivered(session, run.candidate_model_version):
        # Nothing is trained: the run judges and releases the delivered model on the evaluation and
        # guard sets alone, so a workspace without feedback yet is not blocked (run.dataset_version None).
        assert run.candidate_model_version is not None
        run.candidate_index_name = index_name_for(run.candidate_model_version)
        run.heartbeat_at = utcnow()
        return
    dataset = session.get(TrainingDataset, dataset_version) if dataset_version else latest_eligible_dataset(session)
    if dataset is None or not dataset.eligible or dataset.unusable_at is not None:
        raise RunError("no eligible training dataset")
    run.dataset_version = dataset.dataset_version
    if run.candidate_model_version is None:  # else: a registered model was named by the request
        run.candidate_model_version = candidate_version_for(run.id, dataset.dataset_version)
    run.candidate_index_name = index_name_for(run.candidate_model_version)
    run.heartbeat_at = utcnow()


def request_run(
    db: Database,
    *,
    trigger_source: TriggerSource | str,
    trace_id: str,
    request_message_id: int | None = None,
    candidate_model_version: str | None = None,
    objects: ObjectStore | None = None,
) -> RunRequestOutcome:
    """Handle one TRAINING_REQUEST: start a run, queue it, or refuse — never two for one message.

    ``candidate_model_version`` names a registered model to evaluate and release instead of
    training one (e.g. the serving weights at another precision): stage 30 finds it trained —
    or, for a model an operator delivered, records it delivered; such a run needs no dataset.
    With ``objects`` (the worker passes its Object Storage) the dataset is verified before it is
    picked: one whose artifact is gone or changed is marked unusable and the next eligible one is
    used — or the request is refused with the reason when none is left."""
    source = TriggerSource(trigger_source)
    chosen: str | None = None
    with db.read() as session:
        delivered = is_delivered(session, candidate_model_version)
    if objects is not None and not delivered and not _redelivered(db, request_message_id):
        dataset, skipped = choose_usable_dataset(db, objects)
        if dataset is None:
            return RunRequestOutcome(None, None, False, no_usable_dataset_reason(skipped))
        chosen = dataset.dataset_version
    for _attempt in range(_SLOT_RETRIES):
        try:
            with db.transaction() as session:
                if request_message_id is not None:
                    existing = session.scalars(
                        select(MLPipelineRun).where(MLPipelineRun.request_message_id == request_message_id)
                    ).one_or_none()
                    if existing is not None:
                        return RunRequestOutcome(existing.id, existing.status, False, "redelivered: run exists")
                if not delivered and latest_eligible_dataset(session) is None:
                    return RunRequestOutcome(None, None, False, "no eligible training dataset: no run started")
                if candidate_model_version is not None:
                    refusal = _candidate_refusal(session, candidate_model_version)
                    if refusal:
                        return RunRequestOutcome(None, None, False, refusal)
                running = _slot(session, RunStatus.RUNNING)
                run = MLPipelineRun(
                    status=RunStatus.RUNNING if running is None else RunStatus.PENDING,
                    trigger_source=source,
                    trace_id=trace_id,
                    request_message_id=request_message_id,
                    candidate_model_version=candidate_model_version,
                )
                check_transition(None, run.status)
                # The newest request wins over an older pending one — also when the active slot
                # is free (the older one was left waiting by a run that just ended).
                older = _slot(session, RunStatus.PENDING)
                if older is not None:
                    check_transition(RunStatus.PENDING, RunStatus.SUPERSEDED)
                    older.status = RunStatus.SUPERSEDED
                    session.flush()  # free the pending slot before taking it
                session.add(run)
                session.flush()
                if older is not None:
                    older.superseded_by_run_id = run.id
                if run.status is RunStatus.RUNNING:
                    _fix_start(session, run, chosen)
                log.info("run requested", extra={"run_id": run.id, "status": run.status.value, "trace_id": trace_id})
                return RunRequestOutcome(run.id, run.status, True, TRANSITIONS[(None, run.status)])
        except IntegrityError:
            continue  # lost a race for a slot (or for the message): read the slots again
        except OperationalError as exc:
            if not _is_retryable(exc):
                raise
            continue
    raise RunError(f"could not settle the run slots after {_SLOT_RETRIES} attempts")


def _redelivered(db: Database, request_message_id: int | None) -> bool:
    if request_message_id is None:
        return False
    with db.read() as session:
        found = session.scalar(select(MLPipelineRun.id).where(MLPipelineRun.request_message_id == request_message_id))
    return found is not None


def _candidate_refusal(session: Session, model_version: str) -> str | None:
    """Why a named candidate cannot be a run's candidate, or None."""
    if session.get(ModelVersion, model_version) is None:
        return f"candidate_model_version {model_version!r}: not registered"
    release = current_release(session)
    if release is not None and release.active_model_version == model_version:
        return f"candidate_model_version {model_version!r}: already serving"
    return None


def start_next_pending(db: Database, objects: ObjectStore | None = None) -> int | None:
    """PENDING → RUNNING for the newest pending run if the active slot is free; its id or None.
    With ``objects``, its dataset is verified as ``request_run`` does; with none usable left the
    run keeps waiting (None) until a dataset is built."""
    chosen: str | None = None
    if objects is not None:
        with db.read() as session:
            pending = _slot(session, RunStatus.PENDING)
            waiting = pending is not None and _slot(session, RunStatus.RUNNING) is None
            waiting = waiting and pending is not None and not is_delivered(session, pending.candidate_model_version)
        if waiting:
            dataset, skipped = choose_usable_dataset(db, objects)
            if dataset is None:
                log.warning("pending run waits", extra={"reason": no_usable_dataset_reason(skipped)[:500]})
                return None
            chosen = dataset.dataset_version
    for _attempt in range(_SLOT_RETRIES):
        try:
            with db.transaction() as session:
                if _slot(session, RunStatus.RUNNING) is not None:
                    return None
                pending = session.scalars(
                    select(MLPipelineRun).where(MLPipelineRun.status == RunStatus.PENDING).with_for_update()
                ).one_or_none()
                if pending is None:
                    return None
                check_transition(RunStatus.PENDING, RunStatus.RUNNING)
                pending.status = RunStatus.RUNNING
                session.flush()
                _fix_start(session, pending, chosen)
                log.info("pending run started", extra={"run_id": pending.id})
                return pending.id
        except IntegrityError:
            continue
        except OperationalError as exc:
            if not _is_retryable(exc):
                raise
            continue
    raise RunError(f"could not settle the run slots after {_SLOT_RETRIES} attempts")


def mark_ready(session: Session, run_id: int, *, evaluation_id: int, release_hold: str | None = None) -> MLPipelineRun:
    """RUNNING → READY_FOR_RELEASE, in the caller's transaction (with the evaluation it cites);
    ``release_hold`` says why it must wait for an operator's promote (None: it may release itself)."""
    run = _lock_run(session, run_id)
    check_transition(run.status, RunStatus.READY_FOR_RELEASE)
    run.status = RunStatus.READY_FOR_RELEASE
    run.evaluation_id = evaluation_id
    run.release_hold = release_hold
    run.heartbeat_at = utcnow()
    return run


def mark_failed(
    session: Session,
    run_id: int,
    *,
    stage: RunStage,
    failure_type: FailureType,
    reason: str,
    evaluation_id: int | None = None,
) -> MLPipelineRun:
    """RUNNING (or READY_FOR_RELEASE, for release stages) → FAILED with stage, type and reason."""
    run = _lock_run(session, run_id)
    check_transition(run.status, RunStatus.FAILED)
    if run.status is RunStatus.READY_FOR_RELEASE and stage not in (RunStage.REINDEX, RunStage.CUTOVER):
        raise RunError(f"run {run_id}: a READY_FOR_RELEASE run can only fail in REINDEX or CUTOVER")
    run.status = RunStatus.FAILED
    run.failed_stage = stage
    run.failure_type = failure_type
    run.failure_reason = reason[:4000]
    if evaluation_id is not None:
        run.evaluation_id = evaluation_id
    log.warning(
        "run failed",
        extra={"run_id": run_id, "stage": stage.value, "failure_type": failure_type.value, "reason": reason[:500]},
    )
    return run


def fail_run(db: Database, run_id: int, *, stage: RunStage, failure_type: FailureType, reason: str) -> bool:
    """``mark_failed`` in its own transaction; False (no change) if the run is no longer active."""
    try:
        with db.transaction() as session:
            mark_failed(session, run_id, stage=stage, failure_type=failure_type, reason=reason)
        return True
    except RunError:
        return False


def heartbeat(db: Database, run_id: int) -> bool:
    """Record that the run's worker is alive; False if the run is no longer RUNNING."""
    with db.transaction() as session:
        run = session.get(MLPipelineRun, run_id)
        if run is None or run.status is not RunStatus.RUNNING:
            return False
        run.heartbeat_at = utcnow()
        return True


def claim_stalled(db: Database, run_id: int, *, stall_after_s: float, now: datetime | None = None) -> bool:
    """Take over a stalled RUNNING run (compare-and-swap on its heartbeat): True for one caller."""
    now = now or utcnow()
    with db.transaction() as session:
        run = _lock_run(session, run_id)
        if run.status is not RunStatus.RUNNING or not is_stalled(run, stall_after_s, now):
            return False
        run.heartbeat_at = now
        return True


def is_stalled(run: MLPipelineRun, stall_after_s: float, now: datetime | None = None) -> bool:
    if run.status is not RunStatus.RUNNING:
        return False
    last = run.heartbeat_at or run.created_at
    return (now or utcnow()) - last > timedelta(seconds=stall_after_s)


def get_run(db: Database, run_id: int) -> MLPipelineRun:
    with db.read() as session:
        run = session.get(MLPipelineRun, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id}: no such run")
        return run


def run_summary(run: MLPipelineRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status.value,
        "dataset_version": run.dataset_version,
        "baseline_model_version": run.baseline_model_version,
        "candidate_model_version": run.candidate_model_version,
        "failed_stage": run.failed_stage.value if run.failed_stage else None,
        "failure_type": run.failure_type.value if run.failure_type else None,
        "failure_reason": run.failure_reason,
        "evaluation_id": run.evaluation_id,
        "superseded_by_run_id": run.superseded_by_run_id,
        "trigger_source": run.trigger_source.value,
    }
