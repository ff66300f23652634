"""Verified reads in the lifecycle: datasets, evaluation sets, model artifacts and index snapshots
are checked against their recorded sha256 when read; a dataset that fails is marked unusable and
never picked again."""

import json
import os

import pytest
from helpers import dataset_row, loop_ready, mini_corpus_spec

from opslib.control.datasets import (
    DatasetNotRegistered,
    check_dataset,
    latest_eligible_dataset,
    mark_dataset_unusable,
)
from opslib.control.messages import new_training_request
from opslib.control.queue import publish
from opslib.control.runs import fail_run, get_run, request_run, start_next_pending
from opslib.corpus.loader import load_corpus
from opslib.db.models import (
    FailureType,
    MessageOutcome,
    ModelVersion,
    OpsMessage,
    RunStage,
    RunStatus,
    TrainingDataset,
)
from opslib.errors import IntegrityFailure
from opslib.execution.worker import Worker
from opslib.infra.model_artifacts import MANIFEST, local_model_dir, read_manifest
from opslib.infra.storage import SHA_SUFFIX, ObjectMissing, sha256_bytes
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.control import register_shuffled_control
from opslib.lifecycle.evaluation.sets import read_evaluation_set, records_from_corpus, register_evaluation_set
from opslib.lifecycle.index_snapshot import collection_matches, export_index, latest_snapshot, restore_index
from opslib.lifecycle.training import TrainingParams, train_candidate


def _train_key(version: str) -> str:
    return f"datasets/{version}/train.jsonl"


def _dataset(ws: Workspace, version: str) -> TrainingDataset:
    with ws.db.read() as session:
        row = session.get(TrainingDataset, version)
        assert row is not None
        return row


def _latest(ws: Workspace) -> str | None:
    with ws.db.read() as session:
        latest = latest_eligible_dataset(session)
        return latest.dataset_version if latest else None


def test_a_hand_edited_dataset_is_refused_by_training_naming_the_key(ws: Workspace) -> None:
    version = loop_ready(ws)
    run_id = request_run(ws.db, trigger_source="manual", trace_id="tampered").run_id
    key = _train_key(version)
    path = ws.objects.local_path(key)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))  # one group removed by hand
    assert not ws.objects.verify(key)  # the finding: verify() knew, and training read it anyway
    params = TrainingParams(epochs=1, batch_size=8, learning_rates=(5e-4,), max_seq_length=32, refit=False)
    with pytest.raises(IntegrityFailure, match=rf"key '{key}': content fails its recorded sha256"):
        train_candidate(ws, run_id, params, progress=False)
    with ws.db.read() as session:
        assert session.get(ModelVersion, get_run(ws.db, run_id).candidate_model_version) is None  # nothing trained
    row = _dataset(ws, version)
    assert row.unusable_at is not None and key in (row.unusable_reason or "")
    assert _latest(ws) is None  # never "latest eligible" again


def test_a_deleted_dataset_is_marked_unusable_and_the_next_eligible_one_is_used(ws: Workspace) -> None:
    """Through the worker, as a TRAINING_REQUEST is handled (no evaluation set is registered, so
    each run fails at once after its dataset is fixed: what is checked is the dataset it got)."""
    older = loop_ready(ws)
    newer = register_shuffled_control(ws, older, seed=1)
    assert check_dataset(ws.objects, newer)  # a control dataset verifies against its own manifest
    assert _latest(ws) == newer
    os.unlink(ws.objects.local_path(_train_key(newer)))  # deleted by hand
    publish(ws.db, new_training_request(trace_id="after-delete"))
    report = Worker(ws, name="w1").run_once()
    (run_id,) = report.runs
    assert get_run(ws.db, run_id).dataset_version == older  # not the deleted one
    row = _dataset(ws, newer)
    assert row.unusable_at is not None and f"key '{_train_key(newer)}': gone from" in (row.unusable_reason or "")
    assert _latest(ws) == older

    os.unlink(ws.objects.local_path(_train_key(older)))  # now the last eligible one goes too
    message_id = publish(ws.db, new_training_request(trace_id="none-left"))
    report = Worker(ws, name="w1").run_once()
    assert report.runs == {}  # refused: no run started on a dataset that is not there
    with ws.db.read() as session:
        message = session.get(OpsMessage, message_id)
        assert message is not None and message.outcome is MessageOutcome.REFUSED
        reason = message.outcome_reason or ""
    assert reason.startswith("no usable eligible training dataset: no run started")
    assert f"{older}: key '{_train_key(older)}': gone from" in reason
    assert _dataset(ws, older).unusable_at is not None and _latest(ws) is None


def test_a_pending_run_waits_while_no_dataset_is_usable_and_starts_on_the_next_one(ws: Workspace) -> None:
    first = dataset_row(ws, "20261201-aaaaaaaaaaaa", hours_ago=2, artifact=b'{"query_text": "q"}\n')
    running = request_run(ws.db, trigger_source="manual", trace_id="a", objects=ws.objects)
    pending = request_run(ws.db, trigger_source="manual", trace_id="b", objects=ws.objects)
    assert (running.status, pending.status) == (RunStatus.RUNNING, RunStatus.PENDING)
    assert get_run(ws.db, running.run_id).dataset_version == first
    fail_run(ws.db, running.run_id, stage=RunStage.TRAINING, failure_type=FailureType.ERROR, reason="stopped")
    os.unlink(ws.objects.local_path(_train_key(first)))
    assert start_next_pending(ws.db, ws.objects) is None  # waits: nothing usable to start on
    assert get_run(ws.db, pending.run_id).status is RunStatus.PENDING
    assert _dataset(ws, first).unusable_at is not None
    second = dataset_row(ws, "20261202-bbbbbbbbbbbb", hours_ago=1, artifact=b'{"query_text": "q"}\n')
    assert start_next_pending(ws.db, ws.objects) == pending.run_id
    assert get_run(ws.db, pending.run_id).dataset_version == second


def test_marking_a_dataset_unusable_is_one_guarded_transaction(ws: Workspace) -> None:
    version = dataset_row(ws)
    assert mark_dataset_unusable(ws.db, version, "train.jsonl gone")
    first = _dataset(ws, version)
    assert not mark_dataset_unusable(ws.db, version, "another reason")  # the first reason and time stand
    again = _dataset(ws, version)
    assert (again.unusable_reason, again.unusable_at) == ("train.jsonl gone", first.unusable_at)
    with pytest.raises(ValueError, match="needs the reason"):
        mark_dataset_unusable(ws.db, version, "  ")
    with pytest.raises(DatasetNotRegistered, match="not registered"):
        mark_dataset_unusable(ws.db, "20260101-nothing", "x")
    assert request_run(ws.db, trigger_source="manual", trace_id="t").reason.startswith("no eligible training dataset")


def test_a_rewritten_model_manifest_is_refused_even_with_its_checksum_rewritten(ws: Workspace) -> None:
    key = f"tiny-base/{MANIFEST}"
    path = ws.models.local_path(key)
    manifest = json.loads(path.read_text())
    manifest["training_parameters"] = {"forged": True}
    forged = json.dumps(manifest).encode()
    path.write_bytes(forged)
    path.with_name(MANIFEST + SHA_SUFFIX).write_text(sha256_bytes(forged))  # consistent beside the object
    with pytest.raises(IntegrityFailure, match=rf"key '{key}': content does not match the sha256 its ModelVersion row"):
        read_manifest(ws, "tiny-base")


def test_a_missing_model_file_names_its_key(ws: Workspace) -> None:
    os.unlink(ws.models.local_path("tiny-base/config.json"))
    with pytest.raises(ObjectMissing, match=r"key 'tiny-base/config\.json': gone from"):
        local_model_dir(ws, "tiny-base")


def test_a_changed_evaluation_set_is_refused_naming_the_key(ws: Workspace) -> None:
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    ref = register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved").evaluation_dataset_ref
    assert list(read_evaluation_set(ws, ref))
    key = f"evaluation_sets/{ref}.jsonl"
    path = ws.objects.local_path(key)
    path.write_bytes(path.read_bytes().replace(b'"query_text": "', b'"query_text": "edited ', 1))
    with pytest.raises(IntegrityFailure, match=rf"key '{key}': content fails its recorded sha256"):
        read_evaluation_set(ws, ref)


def test_a_changed_index_snapshot_is_never_restored_from(ws: Workspace) -> None:
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    manifest = export_index(ws, "idx-tiny-base", "tiny-base", tag="verified")
    manifest_path = ws.objects.local_path("index_snapshots/idx-tiny-base/verified.json")
    original = manifest_path.read_bytes()
    manifest_path.write_bytes(original.replace(b'"count"', b'"count" ', 1))
    with pytest.raises(IntegrityFailure, match=r"key 'index_snapshots/idx-tiny-base/verified\.json'"):
        latest_snapshot(ws, "idx-tiny-base")
    manifest_path.write_bytes(original)
    data_path = ws.objects.local_path(manifest.key)
    data = bytearray(data_path.read_bytes())
    data[-100] ^= 0xFF
    data_path.write_bytes(bytes(data))
    with pytest.raises(IntegrityFailure, match=rf"key '{manifest.key}'"):
        collection_matches(ws, manifest)  # the rollback's check reads the file verified too
    ws.vectors.drop("idx-tiny-base")
    with pytest.raises(IntegrityFailure, match=rf"key '{manifest.key}': content fails its recorded sha256"):
        restore_index(ws, manifest)
    assert not ws.vectors.exists("idx-tiny-base")  # nothing was restored from it
