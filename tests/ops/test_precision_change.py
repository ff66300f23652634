"""Changing the serving precision: a new model version through the gate, 50 and 60 — never an
index's precision changed in place."""

from pathlib import Path

import pytest
from helpers import corpus_ready, loop_ready, pass_stand_in
from tiny_model import build_blind_model

from opslib.control.release import current_release
from opslib.control.runs import get_run, request_run
from opslib.corpus.search import search
from opslib.db.models import (
    AuditLog,
    Decision,
    ModelEvaluation,
    ModelVersion,
    RunStatus,
    VectorIndexEntry,
)
from opslib.execution.worker import Worker
from opslib.infra.model_artifacts import read_manifest, register_model
from opslib.infra.precision import PrecisionChoice
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import cutover
from opslib.lifecycle.evaluation.evaluate import decide
from opslib.lifecycle.evaluation.sets import records_from_corpus, register_evaluation_set
from opslib.lifecycle.reindex import reindex_candidate
from opslib.ops import actions
from opslib.ops.actions import ActionRefused
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings


@pytest.fixture
def fp32_ws(settings: Settings, tmp_path: Path) -> Workspace:
    """Serving at fp32 (the base was registered under an fp32 setting); an admin operator. The base
    is the blind tiny model (it reads no text: every text embeds alike, at any precision), so its
    weights at bf16 rank exactly as at fp32 and the precision change must PASS."""
    assert settings.base_model_path is not None
    ws = Workspace(
        settings.model_copy(
            update={
                "base_model_path": build_blind_model(settings.base_model_path, tmp_path / "tiny-blind"),
                "encode_precision": "fp32",
                "operator_role": "admin",
                "training_batch_size": 8,
                "training_max_seq_length": 32,
                "bootstrap_samples": 200,
            }
        )
    )
    init_workspace(ws)
    return ws


def test_the_preview_names_the_new_version_and_refuses_what_cannot_be(fp32_ws: Workspace) -> None:
    assert "no eligible training dataset" in (actions.preview_precision_change(fp32_ws, "bf16").blocker or "")
    corpus_ready(fp32_ws)
    preview = actions.preview_precision_change(fp32_ws, "bf16")
    assert preview.possible and preview.target == "tiny-base-bf16"
    assert "weights of tiny-base (serving at fp32) recorded at bf16" in preview.summary
    assert actions.preview_precision_change(fp32_ws, "fp32").blocker == "tiny-base already serves at fp32"
    assert "must be one of" in (actions.preview_precision_change(fp32_ws, "int8").blocker or "")
    assert actions.precision_version_for("x" * 56, "bf16") == "x" * 51 + "-bf16"


def test_a_wrong_confirmation_is_refused_and_registers_nothing(fp32_ws: Workspace) -> None:
    corpus_ready(fp32_ws)
    with pytest.raises(ActionRefused, match="does not match 'tiny-base-bf16'"):
        actions.change_precision(fp32_ws, "bf16", confirm="tiny-base", reason="faster serving")
    with fp32_ws.db.read() as session:
        assert session.get(ModelVersion, "tiny-base-bf16") is None
        assert session.query(AuditLog).one().result.startswith("refused: confirmation")


@pytest.mark.slow
def test_a_precision_change_is_evaluated_against_the_serving_model_and_released_like_a_candidate(
    fp32_ws: Workspace,
) -> None:
    loop_ready(fp32_ws)
    register_evaluation_set(fp32_ws, records_from_corpus(fp32_ws, "mini"), source="reserved")
    done = actions.change_precision(fp32_ws, "bf16", confirm="tiny-base-bf16", reason="bf16 serves 2x faster")
    manifest = read_manifest(fp32_ws, "tiny-base-bf16")
    assert (manifest.encode_precision, manifest.base_model_version, manifest.run_id) == ("bf16", "tiny-base", None)
    assert manifest.files == read_manifest(fp32_ws, "tiny-base").files  # the same weights
    assert manifest.precision_choice["check_min_cosine"] is not None  # the check ran and is on record

    report = Worker(fp32_ws, name="w").run_once()
    assert report.messages[0][0] == done.message_id
    ((run_id, _status),) = report.runs.items()
    run = get_run(fp32_ws.db, run_id)
    assert (run.candidate_model_version, run.baseline_model_version) == ("tiny-base-bf16", "tiny-base")
    with fp32_ws.db.read() as session:
        evaluation = session.get(ModelEvaluation, run.evaluation_id)
        assert evaluation is not None
        assert evaluation.quality_metrics["encoding"] == {
            "device": "cpu",
            "baseline_precision": "fp32",
            "candidate_precision": "bf16",
            "precision_change_only": True,
        }
        assert evaluation.quality_metrics["release"] == {"automatic": True, "hold": None}  # no lift needed
        assert evaluation.overall_decision is Decision.PASS
        assert decide(evaluation.quality_metrics, evaluation.pass_criteria) == (Decision.PASS, None)
        assert all(evaluation.quality_metrics["delta"][m] == 0 for m in evaluation.pass_criteria["metrics"])
        release = current_release(session)
        assert {
            e.encode_precision for e in session.query(VectorIndexEntry).filter_by(index_name="idx-tiny-base-bf16")
        } == {"bf16"}
    # Released like any candidate: its own index at bf16, serving switched to it.
    assert report.released == {run_id: "cut over: now serving"}
    assert (release.active_model_version, release.active_index_name) == ("tiny-base-bf16", "idx-tiny-base-bf16")
    assert get_run(fp32_ws.db, run_id).status is RunStatus.READY_FOR_RELEASE


def test_a_released_precision_change_builds_its_own_index_at_that_precision(
    fp32_ws: Workspace, tiny_model_dir: Path
) -> None:
    corpus_ready(fp32_ws)
    register_model(
        fp32_ws,
        "tiny-base-bf16",
        tiny_model_dir,
        base_model_version="tiny-base",
        precision=PrecisionChoice("bf16", "cpu", "test"),
    )
    run_id = request_run(
        fp32_ws.db, trigger_source="manual", trace_id="precision", candidate_model_version="tiny-base-bf16"
    ).run_id
    assert run_id is not None
    pass_stand_in(fp32_ws, run_id)
    reindex_candidate(fp32_ws, run_id)
    cutover(fp32_ws, run_id)
    with fp32_ws.db.read() as session:
        by_index = {
            name: {p for (p,) in session.query(VectorIndexEntry.encode_precision).filter_by(index_name=name)}
            for name in ("idx-tiny-base", "idx-tiny-base-bf16")
        }
    assert by_index == {"idx-tiny-base": {"fp32"}, "idx-tiny-base-bf16": {"bf16"}}  # one precision per index
    response = search(fp32_ws, "how do I go about parsing dates", user_id="u", project_id="mini-alpha")
    assert (response.active_model_version, response.active_index_name) == ("tiny-base-bf16", "idx-tiny-base-bf16")
    assert fp32_ws.embeddings.load("tiny-base-bf16").precision == "bf16"


def test_a_named_candidate_must_be_registered_and_not_serving(fp32_ws: Workspace) -> None:
    corpus_ready(fp32_ws)
    refused = request_run(fp32_ws.db, trigger_source="manual", trace_id="t", candidate_model_version="nope-bf16")
    assert (refused.run_id, refused.reason) == (None, "candidate_model_version 'nope-bf16': not registered")
    serving = request_run(fp32_ws.db, trigger_source="manual", trace_id="t2", candidate_model_version="tiny-base")
    assert serving.reason == "candidate_model_version 'tiny-base': already serving"
