"""The ML Lifecycle Worker: consumes TRAINING_REQUESTs and drives runs through 30 → 40.

``run_once`` is one pass (for cron, tests and the demo): reconcile stalled runs, take every
visible request, then drive the runs it started (and the pending runs that start after them)
to the end. ``run_forever`` repeats it. While a run's stage executes, a heartbeat thread keeps
``heartbeat_at`` fresh; the reconciler treats a RUNNING run without one past
``run_stall_after_s`` as stalled and resumes it if its inputs are intact, else fails it.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import or_, select

from opslib.control.datasets import check_dataset, mark_dataset_unusable
from opslib.control.leases import RELEASE_LEASE, Lease, LeaseBusy, holding_release, lease_state
from opslib.control.messages import (
    ROLLBACK_REQUEST,
    TRAINING_REQUEST,
    RollbackRequest,
    TrainingRequest,
)
from opslib.control.queue import (
    Delivery,
    ack,
    delivery_cap,
    expire_claims,
    extend,
    park,
    receive,
    refuse,
    release_claim,
)
from opslib.control.release import current_release
from opslib.control.runs import (
    claim_stalled,
    fail_run,
    get_run,
    heartbeat,
    is_delivered,
    is_stalled,
    request_run,
    start_next_pending,
)
from opslib.db.models import (
    ExecutionStatus,
    FailureType,
    MLPipelineRun,
    ModelVersion,
    ReleaseStatus,
    RunStage,
    RunStatus,
    ServingState,
    StageExecution,
    TriggerSource,
    Video,
)
from opslib.errors import Conflict, IntegrityFailure, recorded_as
from opslib.execution.registry import StageError
from opslib.execution.runner import StageResult, reconcile_executions, run_stage
from opslib.infra.heartbeat import heartbeating
from opslib.infra.logs import get_logger, trace
from opslib.infra.model_artifacts import local_model_dir
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import latest_evaluation_set
from opslib.lifecycle.reindex import abort_candidate
from opslib.lifecycle.rollback import reinclude_excluded
from opslib.lifecycle.sharded_build import ReindexError, work_shards

log = get_logger(__name__)


@dataclass
class WorkerReport:
    messages: list[tuple[int, str]] = field(default_factory=list)  # (message id, what happened)
    runs: dict[int, str] = field(default_factory=dict)  # run id -> final status
    reconciled: list[tuple[int, str]] = field(default_factory=list)  # (run id, resumed | failed: reason)
    released: dict[int, str] = field(default_factory=dict)  # run id -> what the release stages did
    rollbacks: list[tuple[int, str]] = field(default_factory=list)  # (message id, outcome)
    shards: dict[str, list[int]] = field(default_factory=dict)  # candidate index -> shards this worker encoded
    abandoned_executions: list[int] = field(default_factory=list)  # StageExecution ids ended as ABANDONED


def resume_problem(ws: Workspace, run: MLPipelineRun) -> str | None:
    """Why a stalled run cannot be resumed, or None if its inputs are intact."""
    with ws.db.read() as session:
        delivered = is_delivered(session, run.candidate_model_version)
    if not ((run.dataset_version or delivered) and run.baseline_model_version and run.candidate_model_version):
        return "dataset, baseline or candidate were never fixed"
    if run.dataset_version:  # a delivered candidate's run has none
        try:
            check_dataset(ws.objects, run.dataset_version)
        except IntegrityFailure as failure:  # marked unusable: no later run picks it either
            mark_dataset_unusable(ws.db, run.dataset_version, str(failure))
            return f"dataset {run.dataset_version} is missing or fails its checksum: {failure}"
    for version in (run.baseline_model_version, run.candidate_model_version):
        with ws.db.read() as session:
            registered = session.get(ModelVersion, version) is not None
        if version == run.candidate_model_version and not registered:
            continue  # not trained yet: training is resumed from the start
        try:
            local_model_dir(ws, version)
        except Exception as exc:
            return f"model {version} is not intact: {exc}"
    return None


class Worker:
    def __init__(self, ws: Workspace, name: str | None = None) -> None:
        self.ws = ws
        self.name = name or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.settings = ws.settings

    # One pass ---------------------------------------------------------------------------
    def release_driven_elsewhere(self) -> str | None:
        """Who else drives the release right now (a live release lease), or None."""
        state = lease_state(self.ws.db, RELEASE_LEASE, stale_after_s=self.settings.lease_stale_after_s)
        return f"{state.holder} ({state.purpose})" if state is not None and state.live else None

    def run_once(self) -> WorkerReport:
        report = WorkerReport()
        to_drive = self.reconcile(report)
        self.converge_release(report)
        self.help_reindex(report)
        # While another worker drives the release, its rollback requests wait for it (claiming one
        # now would only spend a delivery).
        types = (TRAINING_REQUEST,) if self.release_driven_elsewhere() else (TRAINING_REQUEST, ROLLBACK_REQUEST)
        while (
            received := receive(
                self.ws.db,
                self.name,
                message_types=types,
                visibility_timeout_s=self.settings.queue_visibility_timeout_s,
                max_deliveries=self.settings.queue_max_deliveries,
            )
        ) is not None:
            delivery, message = received
            if isinstance(message, RollbackRequest):
                self.roll_back(delivery, message, report)
                continue
            assert isinstance(message, TrainingRequest)
            with trace(message.trace_id):
                outcome = request_run(
                    self.ws.db,
                    trigger_source=TriggerSource(message.trigger_source),
                    trace_id=message.trace_id,
                    request_message_id=delivery.message_id,
                    candidate_model_version=message.candidate_model_version,
                    objects=self.ws.objects,  # the dataset is verified before a run starts on it
                )
                if outcome.run_id is None or outcome.status is None:  # refused: no run (neither is set)
                    refuse(self.ws.db, delivery, outcome.reason)
                else:
                    ack(self.ws.db, delivery, note=f"run {outcome.run_id} {outcome.status.value}: {outcome.reason}")
                    if outcome.created and outcome.status is RunStatus.RUNNING:
                        to_drive.append(outcome.run_id)
                report.messages.append(
                    (
                        delivery.message_id,
                        outcome.reason
                        if outcome.run_id is None or outcome.status is None
                        else f"run {outcome.run_id} {outcome.status.value}",
                    )
                )
        next_run = start_next_pending(self.ws.db, self.ws.objects)
        if next_run is not None:
            to_drive.append(next_run)
        while to_drive:
            run_id = to_drive.pop(0)
            report.runs[run_id] = self.drive(run_id)
            promoted = start_next_pending(self.ws.db, self.ws.objects)
            if promoted is not None:
                to_drive.append(promoted)
        self.release_ready(report)
        return report

    def run_forever(self, poll_interval_s: float = 5.0) -> None:
        log.info("worker started", extra={"worker": self.name})
        while True:
            report = self.run_once()
            if not (report.messages or report.runs or report.released or report.rollbacks or report.shards):
                time.sleep(poll_interval_s)

    # Runs ---------------------------------------------------------------------------------
    def drive(self, run_id: int) -> str:
        """Execute what is left of RUNNING run ``run_id`` (train, then evaluate); its final status."""
        run = get_run(self.ws.db, run_id)
        # The evaluation set is needed at the end; without one, fail now rather than after training.
        ref = self.settings.evaluation_dataset_ref
        if ref is None:
            latest = latest_evaluation_set(self.ws)
            ref = latest.evaluation_dataset_ref if latest else None
        if ref is None:
            fail_run(
                self.ws.db,
                run_id,
                stage=RunStage.EVALUATION,
                failure_type=FailureType.ERROR,
                reason="no evaluation dataset registered (`opsbench register-eval`); nothing was trained",
            )
            return get_run(self.ws.db, run_id).status.value
        with (
            trace(run.trace_id),
            heartbeating(
                partial(heartbeat, self.ws.db, run_id),
                self.settings.heartbeat_interval_s,
                name=f"heartbeat-run-{run_id}",
                context={"run_id": run_id},
            ),
        ):
            with self.ws.db.read() as session:
                trained = session.get(ModelVersion, run.candidate_model_version or "") is not None
                # A delivered candidate is not trained, but 30 still runs once: its report records
                # the model as delivered (where from, who, why, what its validation measured).
                delivery_unrecorded = is_delivered(session, run.candidate_model_version) and not session.scalar(
                    select(StageExecution.id).where(
                        StageExecution.run_id == run_id,
                        StageExecution.stage == "30_train_candidate",
                        StageExecution.status == ExecutionStatus.SUCCEEDED,
                    )
                )
            if not trained or delivery_unrecorded:
                result = self._run_stage(
                    run_id,
                    RunStage.TRAINING,
                    "30_train_candidate",
                    {
                        "run_id": run_id,
                        "epochs": self.settings.training_epochs,
                        "batch_size": self.settings.training_batch_size,
                        "learning_rates": list(self.settings.training_learning_rates),
                        "losses": list(self.settings.training_losses),
                        "max_seq_length": self.settings.training_max_seq_length,
                        "seed": self.settings.training_seed,
                        "base_model_version": self.settings.training_base_model_version,
                    },
                    run.trace_id,
                )
                if result is None or not result.ok:
                    return get_run(self.ws.db, run_id).status.value
            self._run_stage(
                run_id,
                RunStage.EVALUATION,
                "40_evaluate_candidate",
                {
                    "run_id": run_id,
                    "evaluation_dataset_ref": ref,
                    "bootstrap_samples": self.settings.bootstrap_samples,
                },
                run.trace_id,
            )
        final = get_run(self.ws.db, run_id)
        if final.status is RunStatus.RUNNING:  # the stage finished without settling the run
            fail_run(
                self.ws.db,
                run_id,
                stage=RunStage.EVALUATION,
                failure_type=FailureType.ERROR,
                reason="40_evaluate_candidate finished without a verdict",
            )
            final = get_run(self.ws.db, run_id)
        return final.status.value

    def _run_stage(
        self, run_id: int, stage: RunStage, name: str, params: dict[str, Any], trace_id: str | None
    ) -> StageResult | None:
        """Execute a run's stage; one that cannot even start (parameters refused, notebook
        missing) fails the run with ERROR instead of leaving it RUNNING for the reconciler."""
        try:
            return run_stage(self.ws, name, params, run_id=run_id, trace_id=trace_id)
        except (StageError, OSError) as exc:
            fail_run(
                self.ws.db,
                run_id,
                stage=stage,
                failure_type=FailureType.ERROR,
                reason=f"{name} could not start: {type(exc).__name__}: {exc}",
            )
            return None

    def reconcile(self, report: WorkerReport | None = None) -> list[int]:
        """Stalled RUNNING runs: claim each, then resume it (returned) or fail it with the reason.
        First, stage executions whose process died end as ABANDONED."""
        report = report if report is not None else WorkerReport()
        report.abandoned_executions = reconcile_executions(self.ws)
        stall = self.settings.run_stall_after_s
        with self.ws.db.read() as session:
            running = list(session.scalars(select(MLPipelineRun).where(MLPipelineRun.status == RunStatus.RUNNING)))
        resume = []
        for run in running:
            if not is_stalled(run, stall) or not claim_stalled(self.ws.db, run.id, stall_after_s=stall):
                continue
            last = run.heartbeat_at.isoformat() if run.heartbeat_at else "never"
            problem = resume_problem(self.ws, run)
            if problem is None:
                log.warning("resuming stalled run", extra={"run_id": run.id, "last_heartbeat": last})
                report.reconciled.append((run.id, "resumed"))
                resume.append(run.id)
                continue
            with self.ws.db.read() as session:
                trained = session.get(ModelVersion, run.candidate_model_version or "") is not None
            reason = f"stalled: no heartbeat since {last}; not resumable: {problem}"
            fail_run(
                self.ws.db,
                run.id,
                stage=RunStage.EVALUATION if trained else RunStage.TRAINING,
                failure_type=FailureType.ERROR,
                reason=reason,
            )
            report.reconciled.append((run.id, f"failed: {reason}"))
        return resume

    # Release ------------------------------------------------------------------------------
    def release(self, run_id: int) -> str:
        """50 (reindex, resumable) then 60 (cutover) for a READY_FOR_RELEASE run; what happened.

        The release lease is held here, across both stages and their kernels (handed to them as
        parameters): a second worker that looks in between sees it driven and leaves it alone,
        instead of starting its own 50 or 60 to fail on the lease."""
        try:
            with holding_release(self.ws.db, self.settings, f"release of run {run_id} by {self.name}") as lease:
                return self._release(run_id, lease)
        except LeaseBusy:
            return f"left alone: {self.release_driven_elsewhere() or 'another worker'} drives the release"

    def _release(self, run_id: int, lease: Lease) -> str:
        run = get_run(self.ws.db, run_id)
        handed = {"lease_token": lease.token, "lease_holder": lease.holder}
        with trace(run.trace_id):
            with self.ws.db.read() as session:
                release = current_release(session)
                ready = bool(
                    release
                    and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING
                    and release.candidate_run_id == run_id
                    and release.candidate_ready_at
                )
            if not ready:
                result = run_stage(
                    self.ws, "50_reindex_candidate", {"run_id": run_id, **handed}, run_id=run_id, trace_id=run.trace_id
                )
                if not result.ok:
                    assert result.error is not None  # a FAILED stage always records its error
                    return f"reindex {_failed(result)}: {result.error['ename']}: {result.error['evalue']}"
            result = run_stage(
                self.ws, "60_cutover", {"run_id": run_id, **handed}, run_id=run_id, trace_id=run.trace_id
            )
            if not result.ok:
                assert result.error is not None  # a FAILED stage always records its error
                return f"cutover {_failed(result)}: {result.error['ename']}: {result.error['evalue']}"
            with self.ws.db.read() as session:
                release = current_release(session)
                switched = release is not None and release.active_model_version == run.candidate_model_version
            return "cut over: now serving" if switched else "waiting at the cutover gate"

    def release_ready(self, report: WorkerReport) -> None:
        """Resume an open candidate; release the newest READY run — with ``auto_cutover`` any the
        release rule does not hold, otherwise only one an operator promoted
        (``opslib.ops.actions.promote_run``)."""
        target, stale = None, []
        with self.ws.db.read() as session:
            release = current_release(session)
            if release is None:
                return
            if release.release_status is ReleaseStatus.CANDIDATE_REINDEXING and release.candidate_run_id:
                target = release.candidate_run_id
            elif release.release_status is ReleaseStatus.STABLE:
                query = select(MLPipelineRun).where(
                    MLPipelineRun.status == RunStatus.READY_FOR_RELEASE, MLPipelineRun.cutover_time.is_(None)
                )
                promoted = MLPipelineRun.promoted_at.is_not(None)
                if self.settings.auto_cutover:
                    query = query.where(or_(promoted, MLPipelineRun.release_hold.is_(None)))
                else:
                    query = query.where(promoted)
                ready = list(session.scalars(query.order_by(MLPipelineRun.id.desc())))
                current = [r.id for r in ready if r.baseline_model_version == release.active_model_version]
                stale = [r.id for r in ready if r.baseline_model_version != release.active_model_version]
                target = current[0] if current else None
        for run_id in stale:
            fail_run(
                self.ws.db,
                run_id,
                stage=RunStage.REINDEX,
                failure_type=FailureType.ERROR,
                reason="superseded before release: its baseline no longer serves (evaluate a new run)",
            )
        if target is not None:
            elsewhere = self.release_driven_elsewhere()
            report.released[target] = (
                f"left alone: {elsewhere} drives the release" if elsewhere else self.release(target)
            )

    def converge_release(self, report: WorkerReport) -> None:
        """Repair what a crash can leave: a candidate whose run failed, videos still excluded, a
        rollback whose driver died (its message is made visible now instead of after the claim
        lapses). Only when no other live worker drives the release, and the lease is taken only
        when there is something to repair (a worker polls every few seconds)."""
        if not self._release_needs_repair():
            return
        try:
            with holding_release(self.ws.db, self.settings, f"release repairs by {self.name}") as lease:
                with self.ws.db.read() as session:
                    release = current_release(session)
                    orphan, preparing = None, False
                    if release is not None and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING:
                        run = session.get(MLPipelineRun, release.candidate_run_id) if release.candidate_run_id else None
                        if run is None or run.status is not RunStatus.READY_FOR_RELEASE:
                            orphan = release.candidate_run_id
                    preparing = release is not None and release.release_status is ReleaseStatus.ROLLBACK_PREPARING
                if orphan is not None:
                    reason = "the candidate's run is no longer READY_FOR_RELEASE"
                    abort_candidate(self.ws, orphan, reason, actor=self.name, fence=lease)
                    report.released[orphan] = "aborted: its run is no longer READY_FOR_RELEASE"
                if preparing:  # we hold the lease, so the rollback's driver is gone
                    for message_id in expire_claims(self.ws.db, ROLLBACK_REQUEST, "the rollback's driver is gone"):
                        report.rollbacks.append((message_id, "its driver is gone: redelivered now"))
                reinclude_excluded(self.ws, lease)
        except LeaseBusy:
            return  # another worker drives the release: the repairs are theirs

    def _release_needs_repair(self) -> bool:
        with self.ws.db.read() as session:
            release = current_release(session)
            if release is None:
                return False
            if release.release_status is not ReleaseStatus.STABLE:
                return True  # an orphaned candidate or an interrupted rollback may need us
            excluded = session.scalar(
                select(Video.id).where(Video.search_serving_state == ServingState.ROLLBACK_EXCLUDED).limit(1)
            )
            return excluded is not None

    def help_reindex(self, report: WorkerReport) -> None:
        """Encode shards of a candidate index another worker's stage 50 is building."""
        with self.ws.db.read() as session:
            release = current_release(session)
            building = release is not None and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING
            index_name = release.candidate_index_name if release is not None and building else None
        if index_name is None:
            return
        try:
            work = work_shards(self.ws, index_name, self.name)
        except ReindexError:
            return  # the candidate was switched to or dropped meanwhile: nothing left to help with
        if work.shards:
            report.shards[index_name] = work.shards

    def holding_claim(self, delivery: Delivery) -> AbstractContextManager[None]:
        """Keep ``delivery`` claimed while the block runs (extended every heartbeat)."""
        timeout = self.settings.queue_visibility_timeout_s
        return heartbeating(
            partial(extend, self.ws.db, delivery, timeout),
            self.settings.heartbeat_interval_s,
            name=f"claim-{delivery.message_id}",
            context={"message_id": delivery.message_id},
        )

    def roll_back(self, delivery: Delivery, message: RollbackRequest, report: WorkerReport) -> None:
        with trace(message.trace_id):
            try:
                with (
                    self.holding_claim(delivery),
                    holding_release(self.ws.db, self.settings, f"70_rollback by {self.name}") as lease,
                ):
                    handed = {"lease_token": lease.token, "lease_holder": lease.holder}
                    result = run_stage(
                        self.ws, "70_rollback", {"message_id": delivery.message_id, **handed}, trace_id=message.trace_id
                    )
            except LeaseBusy as busy:  # another worker drives the release: the rollback waits for it
                release_claim(self.ws.db, delivery, delay_s=self.settings.heartbeat_interval_s)
                report.rollbacks.append((delivery.message_id, f"postponed: {busy}"))
                return
            except BaseException:  # stopped (Ctrl-C, SIGTERM): hand the claim back for another worker
                release_claim(self.ws.db, delivery)
                raise
            if result.ok:
                ack(self.ws.db, delivery, note="rollback carried out (or already was)")
                report.rollbacks.append((delivery.message_id, "done"))
                return
            error = result.error or {}
            reason = f"{error.get('ename')}: {error.get('evalue')}"
            cap = delivery_cap(self.settings.queue_max_deliveries, delivery.message_type) or 1
            if result.refused:  # decided by class (opslib.errors.Refused): a refusal is never retried
                refuse(self.ws.db, delivery, reason)
                report.rollbacks.append((delivery.message_id, f"refused: {reason}"))
            elif recorded_as(result.error, Conflict):  # e.g. another worker holds the release lease
                release_claim(self.ws.db, delivery, delay_s=self.settings.heartbeat_interval_s)
                report.rollbacks.append((delivery.message_id, f"postponed: {reason}"))
            elif delivery.attempt >= cap:
                park(self.ws.db, delivery, f"failed on delivery {delivery.attempt} of {cap}: {reason}")
                report.rollbacks.append((delivery.message_id, f"parked: {reason}"))
            else:  # left unacked: redelivered after the visibility timeout, and resumed
                report.rollbacks.append((delivery.message_id, f"will retry: {reason}"))


def _failed(result: StageResult) -> str:
    return "refused" if result.refused else "failed"
