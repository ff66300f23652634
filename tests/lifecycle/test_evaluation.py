"""Evaluation: metrics (checked against sentence-transformers' evaluator), bootstrap, verdicts."""

from pathlib import Path

import numpy as np
import pytest
from helpers import loop_ready
from tiny_model import build_constant_model

from opslib.control.runs import get_run, request_run
from opslib.db.models import (
    Decision,
    FailureType,
    ModelEvaluation,
    ModelRelease,
    RunStage,
    RunStatus,
)
from opslib.infra.model_artifacts import register_model
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.evaluate import (
    PASS_CRITERIA,
    EvaluationError,
    _project_corpora,
    decide,
    evaluate_run,
    paired_bootstrap,
    query_metrics,
    rank,
    read_details,
)
from opslib.lifecycle.evaluation.sets import (
    EvalRecord,
    records_from_corpus,
    register_evaluation_set,
)


@pytest.fixture
def run_ws(ws: Workspace) -> tuple[Workspace, int, str]:
    loop_ready(ws)
    ref = register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved").evaluation_dataset_ref
    run_id = request_run(ws.db, trigger_source="manual", trace_id="t").run_id
    assert run_id is not None
    return ws, run_id, ref


def test_query_metrics_by_hand() -> None:
    m = query_metrics(["x", "a", "y", "b", "z", "c"], {"a", "b", "c"})
    assert m["recall_at_5"] == pytest.approx(2 / 3)
    assert m["mrr_at_5"] == pytest.approx(1 / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg_at_5"] == pytest.approx(dcg / idcg)
    assert query_metrics(["x"], {"a"}) == {"recall_at_5": 0.0, "mrr_at_5": 0.0, "ndcg_at_5": 0.0}


def test_metrics_equal_sentence_transformers_information_retrieval_evaluator(run_ws) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )

    ws, _run_id, _ref = run_ws
    records = [r for r in records_from_corpus(ws, "mini") if r.project_id == "mini-alpha"]
    corpora = _project_corpora(ws, {"mini-alpha"})
    ranked = rank(ws, "tiny-base", records, corpora)
    ours = {
        m: np.mean(
            [
                query_metrics([d for d, _ in ranking], set(r.expected_results))[m]
                for r, ranking in zip(records, ranked, strict=True)
            ]
        )
        for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")
    }
    corpus = dict(zip(corpora["mini-alpha"].chunk_ids, corpora["mini-alpha"].texts, strict=True))
    evaluator = InformationRetrievalEvaluator(
        queries={str(i): r.query_text for i, r in enumerate(records)},
        corpus=corpus,
        relevant_docs={str(i): set(r.expected_results) for i, r in enumerate(records)},
        mrr_at_k=[5],
        ndcg_at_k=[5],
        accuracy_at_k=[5],
        precision_recall_at_k=[5],
        map_at_k=[5],
        write_csv=False,
    )
    theirs = evaluator(SentenceTransformer(str(ws.embeddings.load("tiny-base").path), device="cpu"))
    assert abs(ours["recall_at_5"] - theirs["cosine_recall@5"]) < 1e-9
    assert abs(ours["mrr_at_5"] - theirs["cosine_mrr@5"]) < 1e-9
    assert abs(ours["ndcg_at_5"] - theirs["cosine_ndcg@5"]) < 1e-9


def test_paired_bootstrap() -> None:
    deltas = np.array([0.1, 0.2, -0.05, 0.0, 0.3, 0.15, 0.05, -0.1])
    low, high = paired_bootstrap(deltas, 2000)
    assert low < deltas.mean() < high
    assert paired_bootstrap(deltas, 2000) == (low, high)  # seeded
    assert paired_bootstrap(np.zeros(10), 500) == (0.0, 0.0)


def test_identical_candidate_passes_and_the_run_becomes_ready(run_ws, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    register_model(ws, run.candidate_model_version, tiny_model_dir, base_model_version="tiny-base", run_id=run_id)
    with ws.db.read() as session:
        release_before = session.query(ModelRelease).one().row_version
    outcome = evaluate_run(ws, run_id, ref, bootstrap_samples=200)
    assert outcome.decision is Decision.PASS and outcome.fail_reason is None
    q = outcome.quality_metrics
    assert all(q["delta"][m] == 0 and q["ci95"][m] == [0.0, 0.0] for m in PASS_CRITERIA["metrics"])
    assert all(q["win_tie_loss"][m]["tie"] == q["coverage"]["evaluated"] for m in PASS_CRITERIA["metrics"])
    run = get_run(ws.db, run_id)
    assert run.status is RunStatus.READY_FOR_RELEASE and run.evaluation_id == outcome.evaluation_id
    with ws.db.read() as session:
        row = session.get(ModelEvaluation, outcome.evaluation_id)
        assert row.overall_decision is Decision.PASS and row.sample_count == q["coverage"]["evaluated"]
        assert decide(row.quality_metrics, row.pass_criteria) == (Decision.PASS, None)
        assert session.query(ModelRelease).one().row_version == release_before  # serving untouched
    details = read_details(ws, outcome.detail_key)
    assert len(details) == q["coverage"]["evaluated"]
    assert {"query_text", "project_id", "expected_results", "baseline", "candidate"} <= set(details[0])
    assert len(details[0]["candidate"]["returned"]) == 5


def test_a_broken_candidate_fails_with_fail(run_ws, tiny_model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    broken = build_constant_model(tiny_model_dir, tmp_path / "broken")
    register_model(ws, run.candidate_model_version, broken, base_model_version="tiny-base", run_id=run_id)
    outcome = evaluate_run(ws, run_id, ref, bootstrap_samples=200)
    assert outcome.decision is Decision.FAIL and "candidate below baseline" in (outcome.fail_reason or "")
    run = get_run(ws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.FAILED, RunStage.EVALUATION, FailureType.FAIL)
    assert run.evaluation_id == outcome.evaluation_id
    with ws.db.read() as session:
        row = session.get(ModelEvaluation, outcome.evaluation_id)
        assert decide(row.quality_metrics, row.pass_criteria)[0] is Decision.FAIL
        assert session.query(ModelRelease).one().active_model_version == "tiny-base"


def test_decide_uses_only_the_stored_summary() -> None:
    q = {
        "baseline": {"recall_at_5": 0.5, "mrr_at_5": 0.4, "ndcg_at_5": 0.45},
        "candidate": {"recall_at_5": 0.5, "mrr_at_5": 0.41, "ndcg_at_5": 0.44},
    }
    decision, reason = decide(q, PASS_CRITERIA)
    assert decision is Decision.FAIL and reason == "candidate below baseline: ndcg_at_5 0.4400 < 0.4500"
    q["candidate"]["ndcg_at_5"] = 0.45
    assert decide(q, PASS_CRITERIA) == (Decision.PASS, None)


def test_evaluation_refuses_what_it_cannot_judge_fairly(run_ws, tiny_model_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    with pytest.raises(EvaluationError, match="not trained yet"):
        evaluate_run(ws, run_id, ref)
    register_model(ws, run.candidate_model_version, tiny_model_dir, base_model_version="tiny-base", run_id=run_id)
    from opslib.lifecycle.dataset.builder import read_groups

    trained_on = next(iter(read_groups(ws, run.dataset_version)))
    # Bypass the registration check (traffic is what the dataset came from) to prove the stage checks too.
    import opslib.lifecycle.evaluation.sets as sets

    monkeypatch.setattr(sets, "traffic_overlap", lambda ws_, records: [])
    bad_ref = register_evaluation_set(
        ws, [EvalRecord(trained_on["query_text"], trained_on["project_id"], ("mini:q000-a0",))], source="leak"
    ).evaluation_dataset_ref
    with pytest.raises(EvaluationError, match="shares 1 queries with training"):
        evaluate_run(ws, run_id, bad_ref)
    with pytest.raises(EvaluationError, match="bootstrap_samples"):
        evaluate_run(ws, run_id, ref, bootstrap_samples=10)
    assert get_run(ws.db, run_id).status is RunStatus.RUNNING  # refusals change nothing
