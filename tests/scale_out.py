"""The scale-out stack, run for real: PostgreSQL, a Chroma server, an S3 server (object and model
stores), two ``opsbench worker`` processes, one ``opsbench schedule`` and one ``opsbench serve``,
each a process of its own in a session of its own (so a kill -9 takes its notebook kernel too, as
a machine or container crash does).

``ScaleOutStack`` starts, kills and restarts those processes; ``run_lifecycle`` drives one loop
through them as an operator would (traffic over HTTP, the scheduler builds the dataset and queues
training, the workers train, evaluate, reindex in shards and cut over, a rollback is requested);
``Traffic`` keeps searching and giving feedback over HTTP meanwhile; ``audit`` checks what must
hold afterwards. tests/e2e/test_scale_out.py runs the loop once cleanly and once under kill -9.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from invariants import check_invariants
from sqlalchemy import func, select

from opslib.control.messages import new_rollback_request, new_training_request
from opslib.control.queue import publish
from opslib.control.release import current_release
from opslib.corpus.loader import read_queries
from opslib.db.models import (
    ExecutionStatus,
    MessageOutcome,
    MLPipelineRun,
    ModelEvaluation,
    OpsMessage,
    ReleaseEvent,
    ReleaseStatus,
    RunStatus,
    ScheduleTick,
    StageExecution,
    TrainingDataset,
)
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import read_raw_events
from opslib.lifecycle.feedback.intake import flush_outbox
from opslib.service.client import EndpointClient, EndpointError
from opslib.service.server import ServerProcess, spawn_server
from opslib.settings import Settings

# Liveness timings short enough that a killed process's work is taken over in seconds, not the
# production minutes; every other rule (fencing, caps, reconciliation) is the production code's.
FAST_TIMINGS = {
    "heartbeat_interval_s": 0.5,
    "lease_stale_after_s": 4.0,
    "queue_visibility_timeout_s": 6.0,
    "run_stall_after_s": 6.0,
    "endpoint_heartbeat_s": 0.5,
    "endpoint_stale_after_s": 3.0,
    "serve_follow_interval_s": 0.5,
    "feedback_flush_age_s": 1.0,
}


@dataclass
class Process:
    name: str
    kind: str  # "worker" | "schedule"
    popen: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]  # its own variables on top of the stack's


class ScaleOutStack:
    """The long-running processes of one deployment, all on ``settings``' stores."""

    def __init__(self, settings: Settings, env: dict[str, str], logs: Path) -> None:
        self.settings = settings
        self.env = {**os.environ, **env, **settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.logs = logs
        self.processes: dict[str, Process] = {}
        self.server: ServerProcess | None = None
        self.starts = 0

    def serve(self) -> EndpointClient:
        self.server = spawn_server(self.settings, self.logs / "serve.log", allow_anonymous=True)
        return EndpointClient(self.server.url, timeout=120)

    def start(self, name: str, kind: str, env: dict[str, str] | None = None) -> Process:
        command = [sys.executable, "-m", "opslib.ops.cli", kind, "--poll-interval", "0.5"]
        if kind == "worker":
            command += ["--name", f"{name}.{self.starts}"]
        self.starts += 1
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, start_new_session=True
            )
        self.processes[name] = Process(name, kind, popen, log_path, env or {})
        return self.processes[name]

    def restart(self, name: str) -> Process:
        """Start ``name`` again as it was started (a supervisor's restart)."""
        process = self.processes[name]
        return self.start(name, process.kind, process.env)

    def kill(self, name: str) -> None:
        """kill -9 of the process and everything in its session (its notebook kernel)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=30)

    def died(self) -> list[str]:
        """Processes that exited although nobody stopped them, with the end of their log."""
        return [
            f"{p.name} exited {p.popen.returncode}: {p.log_path.read_text(errors='replace')[-1500:]}"
            for p in self.processes.values()
            if p.popen.poll() is not None
        ]

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name)
        if self.server is not None:
            self.server.stop()


@dataclass
class Traffic:
    """Users searching and giving feedback over HTTP in a thread, until stopped; every failed
    search and every acknowledged feedback event is remembered."""

    client: EndpointClient
    queries: list[tuple[str, str]]  # (query text, project)
    seed: int = 0
    pause_s: float = 0.5  # about two searches a second: users throughout, without starving the workers of CPU
    searches: int = 0
    failed_searches: list[str] = field(default_factory=list)
    refused_feedback: list[str] = field(default_factory=list)  # feedback for a search that was answered
    acknowledged: set[str] = field(default_factory=set)  # event ids answered 202
    served_by: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.is_set():
            query, project = rng.choice(self.queries)
            user = f"chaos-user-{rng.randrange(20)}"
            self.searches += 1
            try:
                answer = self.client.search(query, project, user)
            except EndpointError as error:
                self.failed_searches.append(str(error))
                continue
            self.served_by.add(answer["active_model_version"])
            refs = [c["ref"] for c in answer["chunks"]]
            if refs:
                rating = "LIKE" if rng.random() < 0.7 else "DISLIKE"
                try:
                    accepted = self.client.feedback(answer["req_id"], user, rating, refs[:1])
                except EndpointError as error:  # recorded, and the users go on
                    self.refused_feedback.append(str(error))
                else:
                    self.acknowledged.add(accepted["event_id"])
            self._stop.wait(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)


def wait_for(what: str, condition: Callable[[], bool], stack: ScaleOutStack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if stack.died():
            raise AssertionError(f"while waiting for {what}: {stack.died()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (logs in {stack.logs})")
        time.sleep(0.5)


def release_events(ws: Workspace) -> list[ReleaseEvent]:
    with ws.db.read() as session:
        return list(session.scalars(select(ReleaseEvent).order_by(ReleaseEvent.id)))


def release_row(ws: Workspace):  # type: ignore[no-untyped-def]
    with ws.db.read() as session:
        return current_release(session)


def traffic_queries(ws: Workspace, corpus: str) -> list[tuple[str, str]]:
    return [(q.query_text, q.project_id) for q in read_queries(ws, corpus, "traffic")]


# What must hold afterwards --------------------------------------------------------------------
def duplicate_effects(ws: Workspace) -> list[str]:
    """Effects that happened twice: a run cut over twice, a rollback prepared twice for one
    request, a run trained or evaluated twice to a recorded result, a schedule tick that built
    two datasets. (A CANDIDATE_READY twice per opening is ``check_invariants``' own.)"""
    problems: list[str] = []
    events = release_events(ws)
    cutovers: dict[object, int] = {}
    for event in events:
        if event.kind == "CUTOVER":
            run_id = (event.before or {}).get("candidate_run_id")
            cutovers[run_id] = cutovers.get(run_id, 0) + 1
    problems += [f"run {run} cut over {n} times" for run, n in cutovers.items() if n > 1]
    prepares = sum(e.kind == "PREPARE_ROLLBACK" for e in events)
    completes = sum(e.kind == "COMPLETE_ROLLBACK" for e in events)
    with ws.db.read() as session:
        rollbacks_done = session.scalar(
            select(func.count())
            .select_from(OpsMessage)
            .where(OpsMessage.message_type == "ROLLBACK_REQUEST", OpsMessage.outcome == MessageOutcome.DONE)
        )
        evaluations = session.execute(
            select(ModelEvaluation.run_id, func.count()).group_by(ModelEvaluation.run_id).having(func.count() > 1)
        ).all()
        ticks = session.scalar(select(func.count()).select_from(ScheduleTick).where(ScheduleTick.schedule == "dataset"))
        built = session.scalar(
            select(func.count())
            .select_from(StageExecution)
            .where(
                StageExecution.stage == "20_build_dataset",
                StageExecution.status == ExecutionStatus.SUCCEEDED,
                StageExecution.outputs["dataset_created"].as_boolean(),
            )
        )
        datasets = session.scalar(select(func.count()).select_from(TrainingDataset))
    if prepares > (rollbacks_done or 0) or completes > prepares:
        problems.append(
            f"{prepares} rollbacks prepared and {completes} completed for {rollbacks_done} rollback requests done"
        )
    problems += [f"run {run} has {n} recorded evaluations" for run, n in evaluations]
    if (datasets or 0) > (ticks or 0) or (built or 0) > (ticks or 0):
        problems.append(f"{datasets} datasets ({built} built by 20) from {ticks} dataset ticks")
    return problems


def unfinished(ws: Workspace) -> list[str]:
    """Records that should have ended once every process is idle: runs neither terminal nor
    resumable, stage executions still RUNNING, a release not STABLE, messages still claimed."""
    problems = []
    with ws.db.read() as session:
        for run in session.scalars(select(MLPipelineRun).where(MLPipelineRun.status == RunStatus.RUNNING)):
            problems.append(f"run {run.id} still RUNNING")
        for ex in session.scalars(select(StageExecution).where(StageExecution.status == ExecutionStatus.RUNNING)):
            problems.append(f"stage execution {ex.id} ({ex.stage}) still RUNNING")
        for message in session.scalars(select(OpsMessage).where(OpsMessage.acked_at.is_(None))):
            problems.append(f"message {message.id} ({message.message_type}) not acknowledged")
        release = current_release(session)
        if release is not None and release.release_status is not ReleaseStatus.STABLE:
            problems.append(f"release {release.release_status.value}")
    return problems


def lost_feedback(ws: Workspace, acknowledged: set[str]) -> set[str]:
    """Acknowledged (202) event ids that are not in ``raw_logs/`` after a forced flush."""
    flush_outbox(ws, force=True)
    stored = {event.event_id for _, event in read_raw_events(ws.objects)}
    return acknowledged - stored


@dataclass
class Audit:
    invariant_violations: list[str]
    duplicate_effects: list[str]
    unfinished: list[str]
    lost_feedback: set[str]

    @property
    def clean(self) -> bool:
        return not (self.invariant_violations or self.duplicate_effects or self.unfinished or self.lost_feedback)


def audit(ws: Workspace, acknowledged: set[str]) -> Audit:
    return Audit(check_invariants(ws), duplicate_effects(ws), unfinished(ws), lost_feedback(ws, acknowledged))


# The loop ---------------------------------------------------------------------------------------
def cut_over_runs(ws: Workspace) -> list[int]:
    return [e.before["candidate_run_id"] for e in release_events(ws) if e.kind == "CUTOVER" and e.before]


def completed_rollbacks(ws: Workspace) -> int:
    return sum(e.kind == "COMPLETE_ROLLBACK" for e in release_events(ws))


def request_training_if_idle(ws: Workspace, reason: str) -> bool:
    """An operator's retrigger after a failed run: a TRAINING_REQUEST once the scheduler's run has
    ended without a release, unless a run is active, one is queued or one waits for its release."""
    released = set(cut_over_runs(ws))
    with ws.db.read() as session:
        runs = list(session.scalars(select(MLPipelineRun)))
        queued = session.scalar(
            select(func.count())
            .select_from(OpsMessage)
            .where(OpsMessage.message_type == "TRAINING_REQUEST", OpsMessage.acked_at.is_(None))
        )
    busy = [
        r
        for r in runs
        if r.status in (RunStatus.RUNNING, RunStatus.PENDING)
        or (r.status is RunStatus.READY_FOR_RELEASE and r.id not in released)
    ]
    if not runs or busy or queued:  # no run yet: the scheduler's training tick is still to come
        return False
    publish(ws.db, new_training_request(reason=reason))
    return True


def request_rollback_if_serving_candidate(ws: Workspace, reason: str) -> bool:
    """An operator's rollback request while a cut-over candidate serves and none is queued."""
    release = release_row(ws)
    if release.release_status is not ReleaseStatus.STABLE or not release.rollback_snapshot_active_model_version:
        return False
    if release.active_model_version == release.rollback_snapshot_active_model_version:
        return False
    with ws.db.read() as session:
        queued = session.scalar(
            select(func.count())
            .select_from(OpsMessage)
            .where(OpsMessage.message_type == "ROLLBACK_REQUEST", OpsMessage.acked_at.is_(None))
        )
    if queued:
        return False
    publish(ws.db, new_rollback_request(release.active_model_version, reason=reason))
    return True


def drive_loops(ws: Workspace, stack: ScaleOutStack, until: Callable[[], bool], timeout_s: float) -> None:
    """Keep the loop going as an operator would — retrigger training after a run that failed,
    request a rollback once a candidate serves — until ``until()`` (called every second; the chaos
    run kills from it)."""
    deadline = time.monotonic() + timeout_s
    while not until():
        done = completed_rollbacks(ws)
        if len(cut_over_runs(ws)) <= done:
            request_training_if_idle(ws, reason=f"retrigger for loop {done + 1}")
        else:
            request_rollback_if_serving_candidate(ws, reason=f"loop {done + 1}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{done} loops in {timeout_s:.0f} s; release {release_row(ws).release_status.value}; "
                f"unfinished {unfinished(ws)} (logs in {stack.logs})"
            )
        time.sleep(1.0)


def stage_in_flight(ws: Workspace) -> str:
    """The stage the newest RUNNING execution runs, or "between stages"."""
    with ws.db.read() as session:
        running = session.scalars(
            select(StageExecution.stage)
            .where(StageExecution.status == ExecutionStatus.RUNNING)
            .order_by(StageExecution.id.desc())
            .limit(1)
        ).first()
    return running or "between stages"


def settle(ws: Workspace, stack: ScaleOutStack, timeout_s: float = 120) -> None:
    """Wait until nothing is left to do: no run RUNNING, no stage executing, no message pending."""
    wait_for("the workers to finish what is in flight", lambda: not unfinished(ws), stack, timeout_s)
