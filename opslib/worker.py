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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import select

from opslib.db.models import FailureType, MLPipelineRun, ModelVersion, RunStage, RunStatus, TriggerSource
from opslib.evaluation_sets import latest_evaluation_set
from opslib.logs import get_logger, trace
from opslib.messages import TRAINING_REQUEST, TrainingRequest
from opslib.model_artifacts import local_model_dir
from opslib.queue import ack, receive, refuse
from opslib.runner import run_stage
from opslib.runs import claim_stalled, fail_run, get_run, heartbeat, is_stalled, request_run, start_next_pending
from opslib.workspace import Workspace

log = get_logger(__name__)


@dataclass
class WorkerReport:
    messages: list[tuple[int, str]] = field(default_factory=list)  # (message id, what happened)
    runs: dict[int, str] = field(default_factory=dict)  # run id -> final status
    reconciled: list[tuple[int, str]] = field(default_factory=list)  # (run id, resumed | failed: reason)


@contextmanager
def heartbeating(ws: Workspace, run_id: int, interval_s: float) -> Iterator[None]:
    """Keep the run's heartbeat fresh from a background thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                if not heartbeat(ws.db, run_id):
                    return
            except Exception:  # a missed beat is survivable; the reconciler decides on staleness
                log.exception("heartbeat failed", extra={"run_id": run_id})

    heartbeat(ws.db, run_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-run-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 5)


def resume_problem(ws: Workspace, run: MLPipelineRun) -> str | None:
    """Why a stalled run cannot be resumed, or None if its inputs are intact."""
    if not (run.dataset_version and run.baseline_model_version and run.candidate_model_version):
        return "dataset, baseline or candidate were never fixed"
    train_key = f"datasets/{run.dataset_version}/train.jsonl"
    if not ws.objects.exists(train_key) or not ws.objects.verify(train_key):
        return f"dataset {run.dataset_version} is missing or fails its checksum"
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
    def run_once(self) -> WorkerReport:
        report = WorkerReport()
        to_drive = self.reconcile(report)
        while (received := receive(self.ws.db, self.name, message_types=(TRAINING_REQUEST,),
                                   visibility_timeout_s=self.settings.queue_visibility_timeout_s)) is not None:
            delivery, message = received
            assert isinstance(message, TrainingRequest)
            with trace(message.trace_id):
                outcome = request_run(self.ws.db, trigger_source=TriggerSource(message.trigger_source),
                                      trace_id=message.trace_id, request_message_id=delivery.message_id)
                if outcome.run_id is None:
                    refuse(self.ws.db, delivery, outcome.reason)
                else:
                    ack(self.ws.db, delivery, note=f"run {outcome.run_id} {outcome.status.value}: {outcome.reason}")
                    if outcome.created and outcome.status is RunStatus.RUNNING:
                        to_drive.append(outcome.run_id)
                report.messages.append((delivery.message_id, outcome.reason if outcome.run_id is None
                                        else f"run {outcome.run_id} {outcome.status.value}"))
        next_run = start_next_pending(self.ws.db)
        if next_run is not None:
            to_drive.append(next_run)
        while to_drive:
            run_id = to_drive.pop(0)
            report.runs[run_id] = self.drive(run_id)
            promoted = start_next_pending(self.ws.db)
            if promoted is not None:
                to_drive.append(promoted)
        return report

    def run_forever(self, poll_interval_s: float = 5.0) -> None:
        log.info("worker started", extra={"worker": self.name})
        while True:
            report = self.run_once()
            if not report.messages and not report.runs:
                time.sleep(poll_interval_s)

    # Runs ---------------------------------------------------------------------------------
    def drive(self, run_id: int) -> str:
        """Execute what is left of RUNNING run ``run_id`` (train, then evaluate); its final status."""
        run = get_run(self.ws.db, run_id)
        with trace(run.trace_id), heartbeating(self.ws, run_id, self.settings.heartbeat_interval_s):
            with self.ws.db.read() as session:
                trained = session.get(ModelVersion, run.candidate_model_version or "") is not None
            if not trained:
                result = run_stage(self.ws, "30_train_candidate", {
                    "run_id": run_id, "epochs": self.settings.training_epochs,
                    "batch_size": self.settings.training_batch_size,
                    "learning_rate": self.settings.training_learning_rate,
                    "max_seq_length": self.settings.training_max_seq_length, "seed": self.settings.training_seed,
                }, run_id=run_id, trace_id=run.trace_id)
                if not result.ok:
                    return get_run(self.ws.db, run_id).status.value
            ref = self.settings.evaluation_dataset_ref
            if ref is None:
                latest = latest_evaluation_set(self.ws)
                ref = latest.evaluation_dataset_ref if latest else None
            if ref is None:
                fail_run(self.ws.db, run_id, stage=RunStage.EVALUATION, failure_type=FailureType.ERROR,
                         reason="no evaluation dataset registered (`opsbench register-eval`)")
                return get_run(self.ws.db, run_id).status.value
            run_stage(self.ws, "40_evaluate_candidate", {
                "run_id": run_id, "evaluation_dataset_ref": ref,
                "bootstrap_samples": self.settings.bootstrap_samples,
            }, run_id=run_id, trace_id=run.trace_id)
        final = get_run(self.ws.db, run_id)
        if final.status is RunStatus.RUNNING:  # the stage finished without settling the run
            fail_run(self.ws.db, run_id, stage=RunStage.EVALUATION, failure_type=FailureType.ERROR,
                     reason="40_evaluate_candidate finished without a verdict")
            final = get_run(self.ws.db, run_id)
        return final.status.value

    def reconcile(self, report: WorkerReport | None = None) -> list[int]:
        """Stalled RUNNING runs: claim each, then resume it (returned) or fail it with the reason."""
        report = report if report is not None else WorkerReport()
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
            fail_run(self.ws.db, run.id, stage=RunStage.EVALUATION if trained else RunStage.TRAINING,
                     failure_type=FailureType.ERROR, reason=reason)
            report.reconciled.append((run.id, f"failed: {reason}"))
        return resume
