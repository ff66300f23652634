"""Training: rows from groups, determinism for a seed, never overwriting a version."""

import pytest
from helpers import dataset_row, loop_ready

from opslib.control.runs import RunError, fail_run, get_run, request_run
from opslib.db.models import FailureType, ModelVersion, RunStage
from opslib.infra.model_artifacts import read_manifest
from opslib.infra.precision import training_mixed_precision
from opslib.infra.storage import sha256_file
from opslib.infra.workspace import Workspace
from opslib.lifecycle.training import TrainingParams, train_candidate, training_rows
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings


def test_rows_take_negatives_round_robin_over_sources_hardest_kind_first() -> None:
    group = {
        "query_text": "q",
        "positives": [{"text": "p1", "confidence": 0.8}, {"text": "p2", "confidence": 0.8}],
        "negatives": [
            {"text": "r1", "confidence": 0.2, "source": "random_same_project"},
            {"text": "e1", "confidence": 0.4, "source": "exposed_unused"},
            {"text": "e2", "confidence": 0.4, "source": "exposed_unused"},
        ],
    }
    mined = [{"text": "m1", "confidence": 0.5, "source": "mined_baseline"}]
    empty = {"query_text": "q2", "positives": [{"text": "x"}], "negatives": []}
    rows, report = training_rows([group, empty], [mined, []], negatives_per_row=2)
    assert rows == [
        {"anchor": "q", "positive": "p1", "negative_1": "m1", "negative_2": "e1"},
        {"anchor": "q", "positive": "p2", "negative_1": "m1", "negative_2": "e2"},
    ]
    assert (report.groups_used, report.groups_without_negatives) == (1, 1)
    assert report.as_record()["negatives_in_rows_by_source"] == {"exposed_unused": 2, "mined_baseline": 2}
    assert report.as_record()["negatives_available_by_source"] == {
        "exposed_unused": 2,
        "mined_baseline": 1,
        "random_same_project": 1,
    }
    # one negative per row: the hardest kind first, cycling
    rows, _ = training_rows([group], None, negatives_per_row=1)
    assert [r["negative_1"] for r in rows] == ["e1", "e2"]
    # fewer distinct negatives than columns: repeated, the group is kept
    single = {**group, "negatives": group["negatives"][:1]}
    rows, _ = training_rows([single], None, negatives_per_row=2)
    assert rows[0]["negative_1"] == rows[0]["negative_2"] == "r1"
    # what users disliked for the question (dataset rule v2) comes before what the baseline mined
    disliked = {"text": "d1", "confidence": 0.6, "source": "disliked_response_used_chunk"}
    rows, _ = training_rows([{**group, "negatives": [*group["negatives"], disliked]}], [mined], negatives_per_row=2)
    assert [(r["negative_1"], r["negative_2"]) for r in rows] == [("d1", "m1"), ("d1", "m1")]


@pytest.mark.sqlite_only(
    reason="determinism is the model's property; the run and model rows training writes are checked on "
    "PostgreSQL by tests/execution/test_worker.py"
)
@pytest.mark.slow
@pytest.mark.parametrize("encode_precision", ["fp32", "bf16"])
def test_training_is_deterministic_and_writes_a_manifest(settings: Settings, encode_precision: str) -> None:
    """Per device and precision: the same seed gives the same weights, and the manifest says how."""
    ws = Workspace(settings.model_copy(update={"encode_precision": encode_precision}))
    init_workspace(ws)
    dataset = loop_ready(ws)
    expected_mixed = training_mixed_precision(encode_precision, "cpu")  # bf16 only on a CPU that has it
    params = TrainingParams(epochs=2, batch_size=8, learning_rates=(5e-4,), max_seq_length=32, seed=3)
    hashes = []
    for attempt in range(2):
        run_id = request_run(ws.db, trigger_source="manual", trace_id=f"t{attempt}").run_id
        report = train_candidate(ws, run_id, params, progress=False)
        assert report.steps > 0 and report.rows > 0 and report.loss_history
        run = get_run(ws.db, run_id)
        manifest = read_manifest(ws, run.candidate_model_version)
        assert (manifest.base_model_version, manifest.dataset_version, manifest.run_id) == (
            "tiny-base",
            dataset,
            run_id,
        )
        assert (
            manifest.training_parameters["seed"] == 3
            and manifest.training_parameters["loss"] == "MultipleNegativesRankingLoss"
            and manifest.training_parameters["selected_epoch"] in (1, 2)
        )
        assert (manifest.training_parameters["device"], manifest.training_parameters["mixed_precision"]) == (
            "cpu",
            expected_mixed,
        )
        assert manifest.encode_precision == encode_precision  # an explicit setting stands
        hashes.append(manifest.files["model.safetensors"])
        # A trained version is never trained again: a resumed run keeps it.
        assert train_candidate(ws, run_id, params, progress=False).already_trained
        assert sha256_file(ws.models.local_path(f"{run.candidate_model_version}/model.safetensors")) == hashes[-1]
        fail_run(ws.db, run_id, stage=RunStage.EVALUATION, failure_type=FailureType.ERROR, reason="next attempt")
    assert hashes[0] == hashes[1]  # same dataset, baseline and seed → the same weights
    with ws.db.read() as session:
        base = session.get(ModelVersion, "tiny-base")
        assert base is not None
    assert hashes[0] != read_manifest(ws, "tiny-base").files["model.safetensors"]  # it did learn something


def test_training_needs_a_running_run(ws: Workspace) -> None:
    dataset_row(ws)  # run control only reads the row; training is refused before reading the data
    run_id = request_run(ws.db, trigger_source="manual", trace_id="t").run_id
    fail_run(ws.db, run_id, stage=RunStage.TRAINING, failure_type=FailureType.ERROR, reason="stopped")
    with pytest.raises(RunError, match="needs a RUNNING run"):
        train_candidate(ws, run_id, TrainingParams())
