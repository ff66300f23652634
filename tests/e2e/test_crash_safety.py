"""Fault injection: each release stage runs in a subprocess and is SIGKILLed at every step
boundary; the invariants must hold in the state it leaves, and a restarted worker must converge.

On SQLite and on PostgreSQL (the ``settings`` fixture's backends): what a kill leaves behind is a
matter of transactions, so both are killed at every point. The matrix of kill points × outcomes is
in docs/release.md.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import corpus_ready, ready_run
from invariants import check_invariants

from opslib.control.messages import new_rollback_request
from opslib.control.queue import publish
from opslib.control.release import current_release
from opslib.control.runs import get_run
from opslib.corpus.ingest import ChunkIn, VideoIn, ingest_videos
from opslib.db.models import (
    MessageOutcome,
    OpsMessage,
    ReleaseStatus,
    RunStatus,
    ServingState,
    Video,
)
from opslib.execution.worker import Worker
from opslib.infra.faults import CHECKPOINTS
from opslib.infra.vector_store import forget_local_clients
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import cutover
from opslib.lifecycle.reindex import reindex_candidate
from opslib.settings import Settings

pytestmark = pytest.mark.slow
CASES = [(stage, point) for stage, points in CHECKPOINTS.items() for point in points]
STAGE_CALL = {
    "50_reindex_candidate": "from opslib.lifecycle.reindex import reindex_candidate as f; f(ws, arg)",
    "60_cutover": "from opslib.lifecycle.cutover import cutover as f; f(ws, arg)",
    "70_rollback": "from opslib.lifecycle.rollback import roll_back, request_from_message; roll_back(ws, request_from_message(ws, arg))",
}


def _prepare(ws: Workspace, stage: str, candidate_dir: Path) -> tuple[int, int]:
    """(run id, the stage's argument) in the state just before ``stage``."""
    corpus_ready(ws)
    run_id = ready_run(ws, candidate_dir)
    if stage == "50_reindex_candidate":
        return run_id, run_id
    reindex_candidate(ws, run_id)
    if stage == "60_cutover":
        return run_id, run_id
    cutover(ws, run_id)
    ingest_videos(
        ws,
        [
            VideoIn(
                video_id="after-cutover",
                user_id="owner",
                project_id="mini-alpha",
                title="new",
                chunks=[ChunkIn(text="marimba ensemble tuning", start_ms=0, end_ms=1)],
            )
        ],
    )
    candidate = get_run(ws.db, run_id).candidate_model_version
    return run_id, publish(ws.db, new_rollback_request(candidate, trace_id="crash-rollback"))


def _kill_at(ws: Workspace, stage: str, point: str, arg: int) -> tuple[int, str]:
    env = {**ws.settings.as_env(), "OPS_FAULT_POINT": point, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    script = (
        f"import sys\nfrom opslib.settings import Settings\nfrom opslib.infra.workspace import Workspace\n"
        f"ws = Workspace(Settings())\narg = int(sys.argv[1])\n{STAGE_CALL[stage]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(arg)], env=env, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stderr[-3000:]


@pytest.mark.parametrize(("stage", "point"), CASES, ids=[p for _, p in CASES])
def test_killed_at_every_step_the_system_converges(
    settings: Settings, tiny_candidate_dir: Path, stage: str, point: str
) -> None:
    # A kill leaves the release lease held by a dead process: it is taken over once stale.
    fast = {"queue_visibility_timeout_s": 1, "lease_stale_after_s": 1, "heartbeat_interval_s": 0.2}
    ws = Workspace(settings.model_copy(update=fast))
    from opslib.ops.bootstrap import init_workspace

    init_workspace(ws)
    run_id, arg = _prepare(ws, stage, tiny_candidate_dir)
    returncode, stderr = _kill_at(ws, stage, point, arg)
    assert returncode == -signal.SIGKILL, f"{point} was never reached:\n{stderr}"
    forget_local_clients()  # another process wrote the embedded vector store
    assert check_invariants(ws) == [], f"after a kill at {point}"

    time.sleep(1.1)  # the dead holder's lease goes stale
    Worker(ws, name="restarted").run_once()
    assert check_invariants(ws) == []
    with ws.db.read() as session:
        release = current_release(session)
        run = get_run(ws.db, run_id)
        assert release.release_status is ReleaseStatus.STABLE
        if stage == "70_rollback":
            assert (release.active_model_version, release.previous_model_version) == (
                "tiny-base",
                run.candidate_model_version,
            )
            assert session.get(Video, "after-cutover").search_serving_state is ServingState.SERVABLE
            assert session.get(OpsMessage, arg).outcome is MessageOutcome.DONE
        else:
            assert release.active_model_version == run.candidate_model_version
            assert release.rollback_snapshot_active_model_version == "tiny-base"
            assert run.status is RunStatus.READY_FOR_RELEASE and run.cutover_time is not None
