"""Bring your own model (``opsbench propose-model``): an operator's model is validated, registered
with its provenance and judged by the same gate as a fine-tune — and refused, audited, with
nothing registered, when it is not a usable model."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import loop_ready, mini_corpus_spec
from tiny_model import build_blind_model, build_char_model

from opslib.control.release import current_release
from opslib.control.runs import get_run, request_run
from opslib.corpus.loader import load_corpus
from opslib.corpus.search import search
from opslib.db.models import (
    AuditLog,
    ExecutionStatus,
    ModelVersion,
    OpsMessage,
    RunStatus,
    StageExecution,
    VectorIndexEntry,
)
from opslib.execution.worker import Worker
from opslib.infra.model_artifacts import read_manifest
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import records_from_corpus, register_evaluation_set
from opslib.lifecycle.training.stage import TrainingError, TrainingParams, train_candidate
from opslib.ops import actions
from opslib.ops.actions import ActionRefused
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings


@pytest.fixture(scope="session")
def char_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The delivered model: its own character-level tokenizer, 48 dimensions (the base has 32)."""
    return build_char_model(tmp_path_factory.mktemp("models") / "char")


@pytest.fixture
def admin_ws(settings: Settings, tmp_path: Path) -> Workspace:
    """An admin operator; the base is the blind tiny model (every text embeds alike), so a model
    that reads text at all ranks better and passes the gate."""
    assert settings.base_model_path is not None
    ws = Workspace(
        settings.model_copy(
            update={
                "base_model_path": build_blind_model(settings.base_model_path, tmp_path / "tiny-blind"),
                "encode_precision": "fp32",
                "operator_role": "admin",
                "operator": "ops-kim",
                "training_batch_size": 8,
                "training_max_seq_length": 32,
                "training_epochs": 1,
                "training_learning_rates": [5e-5],
                "bootstrap_samples": 200,
            }
        )
    )
    init_workspace(ws)
    return ws


def _refused(ws: Workspace, source: Path | str, version: str, match: str) -> None:
    with ws.db.read() as session:
        before = {v.model_version: v.sha256 for v in session.query(ModelVersion)}
    with pytest.raises(ActionRefused, match=match):
        actions.propose_model(ws, str(source), version, confirm=version, reason="try a multilingual model")
    with ws.db.read() as session:
        assert {v.model_version: v.sha256 for v in session.query(ModelVersion)} == before  # nothing registered
        assert session.query(OpsMessage).count() == 0  # nothing queued
        audit = session.query(AuditLog).order_by(AuditLog.id.desc()).first()
    assert audit is not None and audit.action == "propose-model" and audit.result.startswith("refused: ")
    assert audit.operator == "ops-kim" and audit.reason == "try a multilingual model"


def test_a_folder_that_is_not_a_model_is_refused(admin_ws: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "README.md").write_text("weights to follow")
    _refused(admin_ws, folder, "ko-model", r"not a sentence-transformers folder \(no modules.json\)")
    _refused(admin_ws, tmp_path / "missing", "ko-model", "not a folder")


def test_a_version_that_exists_is_refused(admin_ws: Workspace, char_model_dir: Path) -> None:
    assert "already registered" in (
        actions.preview_propose_model(admin_ws, str(char_model_dir), "tiny-base").blocker or ""
    )
    _refused(admin_ws, char_model_dir, "tiny-base", "'tiny-base': already registered")
    _refused(admin_ws, char_model_dir, "Bad Name", "must be 3-56 characters")


def test_a_model_that_needs_a_download_is_refused(admin_ws: Workspace, char_model_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(char_model_dir, elsewhere)
    modules = json.loads((elsewhere / "modules.json").read_text())
    modules[0]["path"] = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"  # on the Hub, not here
    (elsewhere / "modules.json").write_text(json.dumps(modules))
    _refused(admin_ws, elsewhere, "ko-model", "needs a download — module 0 .* not a folder of the delivered model")

    no_weights = tmp_path / "no-weights"
    shutil.copytree(char_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    _refused(admin_ws, no_weights, "ko-model", r"needs a download — its transformer \(.\) has no weight files")


def test_a_model_that_fails_its_smoke_encode_is_refused(
    admin_ws: Workspace, char_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(char_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    save_file(
        {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
        broken / "model.safetensors",
    )
    _refused(admin_ws, broken, "ko-model", "fails its smoke encode: the vectors are not finite")


def test_a_delivered_run_needs_no_dataset_and_30_records_it_delivered(
    admin_ws: Workspace, char_model_dir: Path
) -> None:
    """A workspace with a corpus but no feedback yet: the delivered model is not blocked by dataset
    eligibility, and stage 30 records it as delivered."""
    load_corpus(admin_ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    assert actions.preview_training(admin_ws).blocker  # a fine-tune would be refused: no dataset
    done = actions.propose_model(
        admin_ws, f"file://{char_model_dir}", "char-ko", confirm="char-ko", reason="Korean collection"
    )
    assert "48 dimensions, max sequence length 256" in done.result
    manifest = read_manifest(admin_ws, "char-ko")
    assert (manifest.embedding_dimension, manifest.max_seq_length, manifest.run_id) == (48, 256, None)
    assert manifest.delivery["source"] == f"file://{char_model_dir}"
    assert manifest.delivery["delivered_by"] == "ops-kim" and manifest.delivery["loaded_offline"] is True
    with admin_ws.db.read() as session:
        row = session.get(ModelVersion, "char-ko")
        assert row is not None and row.delivered
        assert (row.source, row.delivered_by, row.delivery_reason) == (
            f"file://{char_model_dir}",
            "ops-kim",
            "Korean collection",
        )
        audit = session.get(AuditLog, done.audit_id)
        assert audit is not None and audit.result.startswith("registered char-ko")
    outcome = request_run(admin_ws.db, trigger_source="manual", trace_id="t", candidate_model_version="char-ko")
    assert outcome.status is RunStatus.RUNNING and outcome.run_id is not None
    run = get_run(admin_ws.db, outcome.run_id)
    assert (run.dataset_version, run.baseline_model_version, run.candidate_index_name) == (
        None,
        "tiny-base",
        "idx-char-ko",
    )
    report = train_candidate(admin_ws, run.id, TrainingParams())
    assert report.delivered["source"] == f"file://{char_model_dir}" and not report.selection
    assert report.delivered["embedding dimension"] == 48
    # A fine-tune's candidate is not "delivered"; a precision change's is not either.
    assert actions.preview_propose_model(admin_ws, "x", "char-ko").blocker is not None


@pytest.mark.slow
def test_a_delivered_model_is_evaluated_released_served_then_fine_tuned_and_rolled_back(
    admin_ws: Workspace, char_model_dir: Path
) -> None:
    ws = admin_ws
    loop_ready(ws)
    register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved")
    done = actions.propose_model(ws, str(char_model_dir), "char-ko", confirm="char-ko", reason="reads Hangul")
    report = Worker(ws, name="w").run_once()
    assert report.messages[0][0] == done.message_id
    ((run_id, _status),) = report.runs.items()
    run = get_run(ws.db, run_id)
    with ws.db.read() as session:
        stages = [(e.stage, e.status) for e in session.query(StageExecution).filter_by(run_id=run_id)]
        html30 = Path(session.query(StageExecution).filter_by(stage="30_train_candidate").one().output_html).read_text()
        release = current_release(session)
        indexed = session.query(VectorIndexEntry).filter_by(index_name="idx-char-ko").count()
    assert stages[:2] == [
        ("30_train_candidate", ExecutionStatus.SUCCEEDED),
        ("40_evaluate_candidate", ExecutionStatus.SUCCEEDED),
    ]
    assert "DELIVERED" in html30 and "reads Hangul" in html30
    assert run.evaluation_id is not None and run.dataset_version is None
    assert report.released == {run_id: "cut over: now serving"}, (run.status, run.failure_reason, report.released)
    assert (release.active_model_version, release.active_index_name) == ("char-ko", "idx-char-ko")
    assert indexed > 0  # its own index, of 48-dimensional vectors beside the base's 32-dimensional one
    response = search(ws, "how do I go about parsing dates", user_id="u", project_id="mini-alpha")
    assert (response.active_model_version, response.active_index_name) == ("char-ko", "idx-char-ko")
    assert ws.embeddings.load("char-ko").dimension == 48

    # Item 2: the next fine-tune starts from what serves — the delivered model.
    fine = request_run(ws.db, trigger_source="manual", trace_id="fine-tune")
    assert fine.run_id is not None
    fine_run = get_run(ws.db, fine.run_id)
    assert fine_run.baseline_model_version == "char-ko" and fine_run.dataset_version is not None
    trained = train_candidate(
        ws,
        fine.run_id,
        TrainingParams(epochs=1, batch_size=8, learning_rates=(5e-5,), max_seq_length=32, refit=False),
        progress=False,
    )
    manifest = read_manifest(ws, trained.candidate_model_version)
    assert manifest.base_model_version == "char-ko" and trained.selection["training_base_model_version"] == "char-ko"
    assert ws.embeddings.load(trained.candidate_model_version).dimension == 48  # the delivered model's shape
    # (the fine-tune's run is left RUNNING; the rollback below does not depend on it)

    back = actions.request_rollback(ws, confirm="char-ko", reason="compare with the old model")
    Worker(ws, name="w").run_once()
    with ws.db.read() as session:
        release = current_release(session)
    assert back.message_id is not None
    assert (release.active_model_version, release.active_index_name) == ("tiny-base", "idx-tiny-base")
    # Search follows the release back: the old model and its index serve again.
    response = search(ws, "how do I go about parsing dates", user_id="u", project_id="mini-alpha")
    assert (response.active_model_version, response.active_index_name) == ("tiny-base", "idx-tiny-base")
    assert response.chunks  # the base's 32-dimensional index still answers


def test_a_pinned_base_is_what_the_fine_tune_starts_from(admin_ws: Workspace, char_model_dir: Path) -> None:
    ws = admin_ws
    loop_ready(ws)
    actions.propose_model(ws, str(char_model_dir), "char-ko", confirm="char-ko", reason="pin it")
    outcome = request_run(ws.db, trigger_source="manual", trace_id="pinned")
    assert outcome.run_id is not None
    run = get_run(ws.db, outcome.run_id)
    assert run.baseline_model_version == "tiny-base"  # still judged against what serves
    with pytest.raises(TrainingError, match="base_model_version 'nope-1': not registered"):
        train_candidate(ws, run.id, TrainingParams(base_model_version="nope-1"))
    params = TrainingParams(
        epochs=1, batch_size=8, learning_rates=(5e-5,), max_seq_length=32, refit=False, base_model_version="char-ko"
    )
    trained = train_candidate(ws, run.id, params, progress=False)
    assert read_manifest(ws, trained.candidate_model_version).base_model_version == "char-ko"
    assert ws.embeddings.load(trained.candidate_model_version).dimension == 48
    # The 30 report's epoch 0 is the pinned base; the serving baseline keeps its own row.
    from opslib.lifecycle.training.summary import epoch_frame, selection_frame

    selection = trained.selection
    assert selection["base_validation"] and selection["base_validation"] != selection["baseline_validation"]
    assert "base char-ko (no training; where training starts)" in selection_frame(selection).index
    assert epoch_frame(selection, "ndcg_at_5").iloc[0, 0] == selection["base_validation"]["ndcg_at_5"]


def test_the_dashboard_form_and_the_command_line_deliver_a_model(
    admin_ws: Workspace, char_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from opslib.ops.cli import main
    from opslib.ops.dashboard import Dashboard, shown_html

    # The dashboard's form: blocked until a source and version are given, then done, audited.
    dashboard = Dashboard(admin_ws, background=False)
    dashboard.refresh()
    assert dashboard.propose.button.disabled or "source" in shown_html(dashboard.propose.preview)
    dashboard.model_source.value = str(char_model_dir)
    dashboard.model_version.value = "char-dash"
    assert dashboard.propose.confirm.placeholder == "type char-dash"
    dashboard.propose.reason.value = "the collection is Korean"
    dashboard.propose.confirm.value = "char-dash"
    dashboard.propose.button.click()
    assert "done" in shown_html(dashboard.propose.result), shown_html(dashboard.propose.result)
    with admin_ws.db.read() as session:
        row = session.get(ModelVersion, "char-dash")
        assert row is not None and row.delivered_by == "ops-kim" and row.source == str(char_model_dir)
        assert session.query(OpsMessage).count() == 1

    # The command line: the same action; a version that exists is refused (exit 3), nothing added.
    for key, value in admin_ws.settings.as_env().items():
        monkeypatch.setenv(key, value)
    argv = ["propose-model", str(char_model_dir), "--version", "char-cli", "--reason", "cli", "--confirm", "char-cli"]
    assert main(argv) == 0
    assert "registered char-cli" in capsys.readouterr().out
    assert main([*argv[:3], "char-dash", "--reason", "again", "--confirm", "char-dash"]) == 3
    assert "already registered" in capsys.readouterr().err
    with admin_ws.db.read() as session:
        assert {v.model_version for v in session.query(ModelVersion)} >= {"char-dash", "char-cli"}
        assert session.query(OpsMessage).count() == 2
