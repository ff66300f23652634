"""Many workers, one truth (issue 15): the release is driven by one worker at a time (a lease with
a fencing token), claims are held while their work runs, and a dead driver's work is resumed at
once by the next worker. Real notebooks, real worker processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import corpus_ready, ready_run
from invariants import check_invariants
from sqlalchemy import select

from opslib.control.leases import RELEASE_LEASE, acquire, holding, lease_state
from opslib.control.messages import new_rollback_request
from opslib.control.queue import claim, publish
from opslib.control.release import current_release
from opslib.control.runs import get_run
from opslib.db.models import (
    ExecutionStatus,
    MessageOutcome,
    OpsMessage,
    ReleaseEvent,
    ReleaseStatus,
    RunStatus,
    StageLease,
    utcnow,
)
from opslib.execution import worker as worker_module
from opslib.execution.runner import StageResult
from opslib.execution.worker import Worker
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import cutover
from opslib.lifecycle.reindex import reindex_candidate
from opslib.lifecycle.rollback import RollbackReport, prepare
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings

pytestmark = pytest.mark.slow


def _events(ws: Workspace) -> list[str]:
    with ws.db.read() as session:
        return [e.kind for e in session.scalars(select(ReleaseEvent).order_by(ReleaseEvent.id))]


def _release(ws: Workspace):  # type: ignore[no-untyped-def]
    with ws.db.read() as session:
        return current_release(session)


def test_two_worker_processes_release_one_run_once(
    settings: Settings, tiny_candidate_dir: Path, chroma_server: tuple[str, int]
) -> None:
    """Reproduces the double release: two `worker --once` started apart while a run is
    READY_FOR_RELEASE both reindexed it, CANDIDATE_READY was recorded twice and the run ended
    FAILED/CUTOVER/ERROR while its model served."""
    host, port = chroma_server
    shared = settings.model_copy(
        update={
            "chroma_host": host,
            "chroma_port": port,  # one vector store for both processes, as on the scale-out stack
            "base_model_version": f"tiny-{uuid.uuid4().hex[:8]}",  # collections on the shared server
            "auto_cutover": True,
        }
    )
    ws = Workspace(shared)
    init_workspace(ws)
    corpus_ready(ws)
    run_id = ready_run(ws, tiny_candidate_dir)
    env = {**shared.as_env(), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    script = (
        "import sys\nfrom opslib.settings import Settings\nfrom opslib.infra.workspace import Workspace\n"
        "from opslib.execution.worker import Worker\n"
        "print(Worker(Workspace(Settings()), name=sys.argv[1]).run_once().released)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script, "worker-a"], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(3)  # the second starts while the first is inside 50/60
    second = subprocess.Popen([sys.executable, "-c", script, "worker-b"], env=env, stdout=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs

    run = get_run(ws.db, run_id)
    assert (run.status, run.failed_stage) == (RunStatus.READY_FOR_RELEASE, None), run.failure_reason
    assert _release(ws).active_model_version == run.candidate_model_version
    kinds = _events(ws)
    assert kinds.count("CANDIDATE_READY") == 1 and kinds.count("CUTOVER") == 1, kinds
    assert check_invariants(ws) == []
    assert any("cut over" in out for out in outputs), outputs


def test_a_release_driven_elsewhere_is_left_alone_until_its_lease_goes_stale(
    ws: Workspace, tiny_candidate_dir: Path
) -> None:
    corpus_ready(ws)
    run_id = ready_run(ws, tiny_candidate_dir)
    fast = Workspace(ws.settings.model_copy(update={"lease_stale_after_s": 2.0, "heartbeat_interval_s": 0.5}))
    with holding(fast.db, RELEASE_LEASE, purpose="50 for run 1 on another machine", stale_after_s=2.0, heartbeat_s=0.5):
        report = Worker(fast, name="worker-b").run_once()
        assert report.released == {run_id: report.released[run_id]}
        assert report.released[run_id].startswith("left alone: ") and "on another machine" in report.released[run_id]
        assert get_run(ws.db, run_id).status is RunStatus.READY_FOR_RELEASE  # untouched, not FAILED
        assert _events(ws) == ["BOOTSTRAP"]
    # The other driver dies holding the lease (no release, no heartbeat): taken over once stale.
    dead = acquire(fast.db, RELEASE_LEASE, "dead-worker", purpose="50 for run 1", stale_after_s=2.0)
    assert Worker(fast, name="worker-b").run_once().released == {
        run_id: "left alone: dead-worker (50 for run 1) drives the release"
    }
    time.sleep(2.2)
    assert Worker(fast, name="worker-b").run_once().released == {run_id: "cut over: now serving"}
    state = lease_state(fast.db, RELEASE_LEASE, stale_after_s=2.0)
    assert state is not None and state.token > dead.token and state.holder is None
    assert check_invariants(ws) == []


def test_a_rollback_longer_than_the_visibility_timeout_keeps_its_claim(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduces the double rollback: with a 4 s visibility timeout, `70_rollback` ran twice at
    once because nothing extended the claim."""
    short = Workspace(ws.settings.model_copy(update={"queue_visibility_timeout_s": 1.5, "heartbeat_interval_s": 0.3}))
    message_id = publish(short.db, new_rollback_request("tiny-base", trace_id="long-rollback"))
    stolen: list[Any] = []

    def slow_rollback(ws_: Workspace, name: str, params: dict[str, Any], **kwargs: Any) -> StageResult:
        for _ in range(8):  # 4 s: more than twice the visibility timeout
            time.sleep(0.5)
            stolen.append(claim(short.db, "worker-b", visibility_timeout_s=1.5))
        return StageResult(1, name, ExecutionStatus.SUCCEEDED, ws_.settings.runs_dir / "x.ipynb", None, None)

    monkeypatch.setattr(worker_module, "run_stage", slow_rollback)
    report = Worker(short, name="worker-a").run_once()
    assert report.rollbacks == [(message_id, "done")]
    assert stolen == [None] * 8  # never delivered to a second worker while the first worked
    with short.db.read() as session:
        row = session.get(OpsMessage, message_id)
        assert (row.outcome, row.attempt, row.claimed_by) == (MessageOutcome.DONE, 1, "worker-a")


def test_a_rollback_whose_driver_died_is_resumed_by_the_next_worker_at_once(
    ws: Workspace, tiny_candidate_dir: Path
) -> None:
    """Reproduces: after a kill -9 during 70, `worker --once` said "nothing to do" and the release
    stayed ROLLBACK_PREPARING until the claim expired (300 s)."""
    corpus_ready(ws)
    run_id = ready_run(ws, tiny_candidate_dir)
    reindex_candidate(ws, run_id)
    cutover(ws, run_id)
    candidate = get_run(ws.db, run_id).candidate_model_version
    message_id = publish(ws.db, new_rollback_request(candidate, trace_id="rollback-of-a-dead-driver"))
    # The dead driver: it claimed the message for 300 s and prepared the rollback under the lease.
    delivery = claim(ws.db, "dead-worker", visibility_timeout_s=300)
    assert delivery is not None and delivery.message_id == message_id
    lease = acquire(ws.db, RELEASE_LEASE, "dead-worker", purpose="70_rollback", stale_after_s=60)
    from opslib.lifecycle.rollback import request_from_message

    assert prepare(ws, request_from_message(ws, message_id), RollbackReport("rollback-of-a-dead-driver", "x"), lease)
    with ws.db.transaction() as session:  # ... then died: its heartbeat stops
        session.get(StageLease, RELEASE_LEASE).heartbeat_at = utcnow() - timedelta(minutes=5)  # type: ignore[union-attr]
    assert _release(ws).release_status is ReleaseStatus.ROLLBACK_PREPARING

    report = Worker(ws, name="worker-b").run_once()
    assert (message_id, "its driver is gone: redelivered now") in report.rollbacks
    assert (message_id, "done") in report.rollbacks
    release = _release(ws)
    assert (release.release_status, release.active_model_version) == (ReleaseStatus.STABLE, "tiny-base")
    assert check_invariants(ws) == []


def test_a_worker_stopped_mid_rollback_hands_its_claim_back(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    message_id = publish(ws.db, new_rollback_request("tiny-base", trace_id="interrupted"))

    def interrupted(*args: Any, **kwargs: Any) -> StageResult:
        raise KeyboardInterrupt  # the operator stops the worker (Ctrl-C / SIGTERM)

    monkeypatch.setattr(worker_module, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Worker(ws, name="worker-a").run_once()
    delivery = claim(ws.db, "worker-b", visibility_timeout_s=60)  # at once, not after the timeout
    assert delivery is not None and (delivery.message_id, delivery.attempt) == (message_id, 1)


def test_the_lease_heartbeat_survives_a_stage_longer_than_the_stale_limit(ws: Workspace) -> None:
    done = threading.Event()

    def long_stage() -> None:
        with holding(ws.db, RELEASE_LEASE, purpose="long 50", stale_after_s=1.0, heartbeat_s=0.2, holder="a"):
            done.wait(3)

    thread = threading.Thread(target=long_stage)
    thread.start()
    time.sleep(2)
    state = lease_state(ws.db, RELEASE_LEASE, stale_after_s=1.0)
    assert state is not None and state.live and state.holder == "a"
    done.set()
    thread.join()
