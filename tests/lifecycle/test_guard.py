"""The guard against forgetting: a general set, with its own corpus, scored beside the evaluation set."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import loop_ready, mini_corpus_spec
from tiny_model import build_blind_model

from opslib.control.runs import get_run, request_run
from opslib.db.models import Decision, RunStatus
from opslib.infra.model_artifacts import register_model
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.evaluate import decide, evaluate_run, pass_criteria
from opslib.lifecycle.evaluation.guard import guard_set, register_guard_set
from opslib.lifecycle.evaluation.retrieval import project_corpora
from opslib.lifecycle.evaluation.sets import EvalRecord, latest_evaluation_set, register_evaluation_set


def _first_chunk_set(ws: Workspace) -> str:
    """Each project's first chunk (by id), asked for by its own text: a model that reads finds it
    first, and so does one that reads nothing (all tie; ties keep chunk-id order) — both score 1.0."""
    corpora = project_corpora(ws, {"mini-alpha", "mini-beta"})
    records = [EvalRecord(c.texts[0], project, (c.chunk_ids[0],)) for project, c in corpora.items()]
    return register_evaluation_set(ws, records, source="first chunks").evaluation_dataset_ref


def test_a_candidate_that_forgets_fails_on_the_guard(ws: Workspace, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The candidate ties the baseline on the evaluation set but has collapsed (reads nothing):
    on the guard set, where the baseline finds answers by their words, it drops — FAIL, forgetting."""
    loop_ready(ws)
    evaluation = _first_chunk_set(ws)
    guard_spec = mini_corpus_spec(30)
    guard_spec.name = "guardmini"
    guard = register_guard_set(ws, guard_spec, source="guard: a second mini corpus")
    assert guard_set(ws) == guard and latest_evaluation_set(ws).evaluation_dataset_ref == evaluation  # roles kept apart
    register_model(
        ws, "tiny-collapsed", build_blind_model(tiny_model_dir, tmp_path / "collapsed"), base_model_version="tiny-base"
    )
    run_id = request_run(
        ws.db, trigger_source="manual", trace_id="forgets", candidate_model_version="tiny-collapsed"
    ).run_id
    outcome = evaluate_run(ws, run_id, evaluation, bootstrap_samples=200)
    q = outcome.quality_metrics
    assert all(q["candidate"][m] == q["baseline"][m] == 1.0 for m in ("recall_at_5", "ndcg_at_5"))  # tied
    assert q["guard"]["evaluation_dataset_ref"] == guard and q["guard"]["forgetting"]
    assert q["guard"]["delta"]["ndcg_at_5"] < -0.02
    assert outcome.decision is Decision.FAIL and outcome.fail_reason.startswith(
        f"forgetting: on guard set {guard} ndcg_at_5 fell"
    )
    assert "candidate below baseline" not in outcome.fail_reason
    run = get_run(ws.db, run_id)
    assert run.status is RunStatus.FAILED and run.failure_reason == outcome.fail_reason
    assert decide(q, outcome.pass_criteria) == (outcome.decision, outcome.fail_reason)  # from the summary alone
    # the same summary under a looser guard passes
    looser = pass_criteria("ndcg_at_5", 0.0, guard, guard_max_drop=1.0)
    assert decide(q, looser) == (Decision.PASS, None)


def test_with_no_guard_registered_the_built_in_one_is(ws: Workspace) -> None:
    loop_ready(ws)
    ref = guard_set(ws)
    assert ref is not None and guard_set(ws) == ref  # registered once, then found
    row = latest_evaluation_set(ws, role="guard")
    assert row.role == "guard" and "built-in corpus stdlib" in row.source and row.sample_count > 100
    assert latest_evaluation_set(ws) is None  # a guard set is never taken as the evaluation set


def test_a_guard_set_needs_its_corpus(ws: Workspace) -> None:
    from opslib.lifecycle.evaluation.sets import EvaluationSetError

    with pytest.raises(EvaluationSetError, match="a guard set needs its corpus"):
        register_evaluation_set(ws, [EvalRecord("q", "p", ("c",))], source="x", role="guard")
    with pytest.raises(EvaluationSetError, match="role"):
        register_evaluation_set(ws, [EvalRecord("q", "p", ("c",))], source="x", role="other")
