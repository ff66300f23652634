"""The worker drives the release stages (real notebooks 50, 60, 70)."""

from pathlib import Path

import pytest
from helpers import corpus_ready, ready_run

from opslib.control.messages import new_rollback_request
from opslib.control.queue import publish
from opslib.control.release import current_release
from opslib.control.runs import get_run
from opslib.db.models import (
    ExecutionStatus,
    MessageOutcome,
    OpsMessage,
    ReleaseStatus,
    RunStatus,
    StageExecution,
)
from opslib.execution.worker import Worker
from opslib.infra.workspace import Workspace
from opslib.ops.actions import promote_run
from opslib.settings import Settings

pytestmark = pytest.mark.slow


def _with(ws: Workspace, **overrides: object) -> Workspace:
    return Workspace(Settings(**{**ws.settings.model_dump(), **overrides}))


def _release(ws: Workspace):  # type: ignore[no-untyped-def]
    with ws.db.read() as session:
        return current_release(session)


def _stages(ws: Workspace) -> list[tuple[str, ExecutionStatus]]:
    with ws.db.read() as session:
        return [(e.stage, e.status) for e in session.query(StageExecution).order_by(StageExecution.id)]


def test_a_ready_run_is_reindexed_and_cut_over_then_rolled_back(ws: Workspace, tiny_candidate_dir: Path) -> None:
    corpus_ready(ws)
    run_id = ready_run(ws, tiny_candidate_dir)
    candidate = get_run(ws.db, run_id).candidate_model_version
    report = Worker(ws).run_once()
    assert report.released == {run_id: "cut over: now serving"}
    assert _stages(ws) == [
        ("50_reindex_candidate", ExecutionStatus.SUCCEEDED),
        ("60_cutover", ExecutionStatus.SUCCEEDED),
    ]
    assert _release(ws).active_model_version == candidate
    with ws.db.read() as session:
        html = {e.stage: Path(e.output_html).read_text() for e in session.query(StageExecution)}
    assert "Release history" in html["60_cutover"] and "data:image/png" in html["60_cutover"]
    assert "switched" in html["60_cutover"] and "cutover_time" in html["60_cutover"]
    assert Worker(ws).run_once().released == {}  # nothing more to release

    stale = publish(ws.db, new_rollback_request("tiny-base"))
    good = publish(ws.db, new_rollback_request(candidate, reason="regression"))
    report = Worker(ws).run_once()
    assert [outcome.split(":")[0] for _, outcome in report.rollbacks] == ["refused", "done"]
    with ws.db.read() as session:
        assert session.get(OpsMessage, stale).outcome is MessageOutcome.REFUSED
        assert "stale request" in session.get(OpsMessage, stale).outcome_reason
        assert session.get(OpsMessage, good).outcome is MessageOutcome.DONE
    release = _release(ws)
    assert (release.release_status, release.active_model_version, release.previous_model_version) == (
        ReleaseStatus.STABLE,
        "tiny-base",
        candidate,
    )


def test_without_auto_cutover_a_ready_run_waits_for_promote(ws: Workspace, tiny_candidate_dir: Path) -> None:
    manual = _with(ws, auto_cutover=False)
    corpus_ready(manual)
    run_id = ready_run(manual, tiny_candidate_dir)
    assert Worker(manual).run_once().released == {}
    assert (
        _release(manual).release_status is ReleaseStatus.STABLE
        and get_run(manual.db, run_id).status is RunStatus.READY_FOR_RELEASE
    )
    admin = _with(manual, operator="ana", operator_role="admin")
    candidate = get_run(admin.db, run_id).candidate_model_version
    promote_run(admin, run_id, confirm=candidate, reason="reviewed the evaluation report")
    assert Worker(admin).run_once().released == {run_id: "cut over: now serving"}
    assert _release(admin).active_model_version == candidate
    assert Worker(admin).run_once().released == {}  # released once


def test_a_pass_that_is_not_significant_is_held_until_promoted(ws: Workspace, tiny_model_dir: Path) -> None:
    """The release rule: the candidate is the base's own weights under another name, so every
    delta is 0 — PASS (≥) but not significant. It waits, READY and held, for an operator."""
    from helpers import loop_ready

    from opslib.control.messages import new_training_request
    from opslib.db.models import Decision, ModelEvaluation
    from opslib.infra.model_artifacts import register_model
    from opslib.lifecycle.evaluation.sets import records_from_corpus, register_evaluation_set

    loop_ready(ws)
    register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved")
    register_model(ws, "tiny-same", tiny_model_dir, base_model_version="tiny-base")
    publish(ws.db, new_training_request(candidate_model_version="tiny-same", reason="same weights"))
    report = Worker(ws).run_once()
    ((run_id, status),) = report.runs.items()
    run = get_run(ws.db, run_id)
    with ws.db.read() as session:
        evaluation = session.get(ModelEvaluation, run.evaluation_id)
    assert status == RunStatus.READY_FOR_RELEASE.value and evaluation.overall_decision is Decision.PASS
    assert evaluation.quality_metrics["release"] == {"automatic": False, "hold": run.release_hold}
    assert run.release_hold.startswith("not significant: ndcg_at_5 delta +0.0000, 95 % CI [+0.0000, +0.0000]")
    assert evaluation.pass_criteria["release"]["primary_metric"] == "ndcg_at_5"
    assert report.released == {} and _release(ws).active_model_version == "tiny-base"
    assert Worker(ws).run_once().released == {}  # still held on the next pass
    admin = _with(ws, operator="ana", operator_role="admin")
    promote_run(admin, run_id, confirm="tiny-same", reason="same weights, new name: release it")
    assert Worker(admin).run_once().released == {run_id: "cut over: now serving"}
    assert _release(admin).active_model_version == "tiny-same"
