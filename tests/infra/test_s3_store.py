"""Object Storage and Model Artifact Files on ``s3://``, against a real S3-compatible server
(``moto_server`` on loopback, tests/s3_server.py) through fsspec's s3fs.

The write-once store contract runs on a local folder and on S3 alike; then model artifacts on an
S3 model store, and a workspace with both stores on S3 from bootstrap to an eligible dataset built
by the stage notebook in its own kernel (which finds the bucket through the inherited AWS
variables, as a deployment's kernels do)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import mini_corpus_spec
from s3_server import S3Bucket
from sqlalchemy import select

from opslib.corpus.loader import load_corpus
from opslib.db.models import ModelVersion, TrainingDataset, utcnow
from opslib.errors import IntegrityFailure
from opslib.execution.runner import run_stage
from opslib.infra.embedding import Purpose
from opslib.infra.model_artifacts import MANIFEST, local_model_dir, register_model
from opslib.infra.storage import (
    SHA_SUFFIX,
    ChecksumMismatch,
    InvalidKeyError,
    ObjectExistsError,
    ObjectMissing,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
    sha256_bytes,
)
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.simulate import simulate_traffic
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings

KEY = "datasets/v1/train.jsonl"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return ObjectStore(str(tmp_path / "objects"))
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return ObjectStore(bucket.object_store_url)


def _overwrite(store: ObjectStore, key: str, data: bytes) -> None:
    """A hand edit behind the store's back (the store itself never overwrites)."""
    store.fs.pipe_file(f"{store.root}/{key}", data)


def _publish_from_another_process(store: ObjectStore, key: str, text: str) -> None:
    """``put_text`` in a separate Python process (another worker, a notebook kernel): it finds the
    store through the same URL and the inherited environment."""
    code = "import sys\nfrom opslib.infra.storage import ObjectStore\nObjectStore(sys.argv[1]).put_text(sys.argv[2], sys.argv[3])"
    subprocess.run([sys.executable, "-c", code, store.url, key, text], check=True, timeout=120)


# The write-once contract, on a local folder and on S3 ---------------------------------------------
def test_put_get_and_the_recorded_sha256(store: ObjectStore) -> None:
    stored = store.put_bytes(KEY, b'{"a": 1}\n')
    assert stored.sha256 == sha256_bytes(b'{"a": 1}\n') and stored.size == 9
    assert store.exists(KEY) and store.get_bytes(KEY) == b'{"a": 1}\n' and store.get_text(KEY) == '{"a": 1}\n'
    assert store.recorded_sha256(KEY) == stored.sha256
    assert store.verify(KEY)


def test_the_bucket_holds_the_object_and_its_checksum(s3_bucket: S3Bucket) -> None:
    store = ObjectStore(s3_bucket.object_store_url)
    stored = store.put_text("raw_logs/a.jsonl", "line\n")
    assert store.uri("raw_logs/a.jsonl") == f"s3://{s3_bucket.name}/objects/raw_logs/a.jsonl"
    assert s3_bucket.keys() == ["objects/raw_logs/a.jsonl", "objects/raw_logs/a.jsonl" + SHA_SUFFIX]
    checksum = s3_bucket.client().get_object(Bucket=s3_bucket.name, Key="objects/raw_logs/a.jsonl" + SHA_SUFFIX)
    assert checksum["Body"].read().decode() == stored.sha256
    with pytest.raises(StorageError, match="not a local folder"):
        store.local_path("raw_logs/a.jsonl")


def test_write_once_refuses_and_keeps_the_first(store: ObjectStore, tmp_path: Path) -> None:
    store.put_text("raw_logs/a.jsonl", "first")
    with pytest.raises(ObjectExistsError, match=r"raw_logs/a\.jsonl.*already exists"):
        store.put_text("raw_logs/a.jsonl", "second")
    source = tmp_path / "other.bin"
    source.write_bytes(b"third")
    with pytest.raises(ObjectExistsError, match=r"raw_logs/a\.jsonl"):
        store.put_file("raw_logs/a.jsonl", source)
    assert store.get_text("raw_logs/a.jsonl") == "first" and store.verify("raw_logs/a.jsonl")


def test_put_file_streams_a_large_file_and_is_write_once(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"0123456789" * 300_000)
    stored = store.put_file("datasets/v/train.jsonl", source)
    assert stored.size == 3_000_000 and stored.sha256 == sha256_bytes(source.read_bytes())
    assert store.get_bytes("datasets/v/train.jsonl") == source.read_bytes() and store.verify("datasets/v/train.jsonl")
    with pytest.raises(ObjectExistsError):
        store.put_file("datasets/v/train.jsonl", source)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../escape", "a//b", "s3://bucket/x", "a/b.sha256", "with space"])
def test_bad_keys_are_refused_before_anything_is_written(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="key"):
        store.put_bytes(key, b"x")
    assert store.list() == []


def test_list_hides_checksums_and_sorts(store: ObjectStore) -> None:
    for key in ("b/2.jsonl", "a/1.jsonl", "b/1.jsonl"):
        store.put_text(key, key)
    assert store.list() == ["a/1.jsonl", "b/1.jsonl", "b/2.jsonl"]
    assert store.list("b") == ["b/1.jsonl", "b/2.jsonl"] and store.list("b/") == ["b/1.jsonl", "b/2.jsonl"]
    assert store.list("missing") == []


def test_iter_lines_streams_lines(store: ObjectStore) -> None:
    store.put_bytes("raw_logs/f.jsonl", b"one\ntwo\nthree")
    assert list(store.iter_lines("raw_logs/f.jsonl")) == [b"one\n", b"two\n", b"three"]


def test_missing_objects_are_clear_errors(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"key 'nope\.txt': not found"):
        store.get_bytes("nope.txt")
    with pytest.raises(ObjectNotFoundError, match=r"nope\.txt"):
        store.open("nope.txt")
    with pytest.raises(ObjectNotFoundError, match="no recorded checksum"):
        store.recorded_sha256("nope.txt")
    assert not store.exists("nope.txt")


def test_verified_reads_return_exactly_what_was_written(store: ObjectStore) -> None:
    data = b"".join(b'{"group": %d}\n' % i for i in range(1000))
    stored = store.put_bytes(KEY, data)
    assert store.check(KEY, stored.sha256, recorded_by="the manifest") == stored.sha256
    assert store.read_verified(KEY) == data
    with store.open_verified(KEY, spool_bytes=1024) as handle:
        assert b"".join(handle) == data


@pytest.mark.parametrize("read", ["check", "read_verified", "open_verified"])
def test_a_hand_edited_object_is_refused_naming_the_key(store: ObjectStore, read: str) -> None:
    store.put_bytes(KEY, b'{"positives": ["a"]}\n')
    _overwrite(store, KEY, b'{"positives": ["b"]}\n')
    assert not store.verify(KEY)
    with pytest.raises(ChecksumMismatch, match=r"key 'datasets/v1/train\.jsonl': content fails its recorded sha256"):
        getattr(store, read)(KEY)


def test_a_deleted_object_is_missing_not_unknown(store: ObjectStore) -> None:
    store.put_bytes(KEY, b"x\n")
    store.fs.rm_file(f"{store.root}/{KEY}")
    with pytest.raises(ObjectMissing, match=r"key 'datasets/v1/train\.jsonl': gone from") as caught:
        store.read_verified(KEY)
    assert isinstance(caught.value, IntegrityFailure)


def test_an_object_another_process_published_is_seen_at_once(store: ObjectStore) -> None:
    """Workers, kernels and the endpoint each publish into the one store. s3fs caches directory
    listings per process: once this process had listed ``raw_logs/``, an object another process
    published there stayed invisible to it (``exists`` False, missing from ``list``), so a crashed
    build's check "already published?" said no, and the listing readers skipped files."""
    store.put_text("raw_logs/a.jsonl", "a\n")
    assert store.list("raw_logs") == ["raw_logs/a.jsonl"] and not store.exists("raw_logs/b.jsonl")
    _publish_from_another_process(store, "raw_logs/b.jsonl", "b\n")
    assert store.exists("raw_logs/b.jsonl")
    assert store.list("raw_logs") == ["raw_logs/a.jsonl", "raw_logs/b.jsonl"]
    assert store.recorded_sha256("raw_logs/b.jsonl") == sha256_bytes(b"b\n")
    with pytest.raises(ObjectExistsError):
        store.put_text("raw_logs/b.jsonl", "mine")
    assert store.get_text("raw_logs/b.jsonl") == "b\n"


# Racing writers and a crash between an object and its checksum, on S3 -----------------------------
WRITERS, ROUNDS = 4, 5


@pytest.fixture
def versioned_bucket(s3_bucket: S3Bucket) -> Iterator[S3Bucket]:
    """``s3_bucket`` with versioning on: every PUT that landed stays countable on the server, so a
    test sees an overwrite (or a sidecar write) even when a later one hid it. Emptied afterwards."""
    client = s3_bucket.client()
    client.put_bucket_versioning(Bucket=s3_bucket.name, VersioningConfiguration={"Status": "Enabled"})
    yield s3_bucket
    for page in client.get_paginator("list_object_versions").paginate(Bucket=s3_bucket.name):
        for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            client.delete_object(Bucket=s3_bucket.name, Key=item["Key"], VersionId=item["VersionId"])


def _versions(bucket: S3Bucket, key: str) -> int:
    """How many PUTs of exactly ``key`` the server accepted."""
    listing = bucket.client().list_object_versions(Bucket=bucket.name, Prefix=key)
    return sum(1 for version in listing.get("Versions", []) if version["Key"] == key)


Put = Callable[[ObjectStore, str, bytes], object]


def _put_bytes(store: ObjectStore, key: str, data: bytes) -> object:
    return store.put_bytes(key, data)


def _put_file_from(folder: Path) -> Put:
    def put(store: ObjectStore, key: str, data: bytes) -> object:
        source = folder / f"{sha256_bytes(data)}.bin"
        source.write_bytes(data)
        return store.put_file(key, source)

    return put


def _race(url: str, key: str, payloads: list[bytes], put: Put) -> list[int]:
    """Every payload published under ``key`` at once, each by its own store (another worker, a
    kernel), released together by a barrier; the indexes of the writers that succeeded."""
    barrier = threading.Barrier(len(payloads))

    def write(index: int) -> int | None:
        store = ObjectStore(url)
        barrier.wait()
        try:
            put(store, key, payloads[index])
        except ObjectExistsError as refused:
            assert f"key {key!r}: already exists" in str(refused)
            return None
        return index

    with ThreadPoolExecutor(len(payloads)) as pool:
        return [index for index in pool.map(write, range(len(payloads))) if index is not None]


@pytest.mark.parametrize("put_name", ["put_bytes", "put_file"])
def test_racing_writers_of_one_key_on_s3_exactly_one_wins(
    versioned_bucket: S3Bucket, tmp_path: Path, put_name: str
) -> None:
    """A check-then-put let every racer pass the check: all "succeeded", the last PUT won, and the
    sidecar could be another writer's. The conditional PUT lets exactly one through."""
    put = _put_bytes if put_name == "put_bytes" else _put_file_from(tmp_path)
    store = ObjectStore(versioned_bucket.object_store_url)
    for round_ in range(ROUNDS):
        key = f"datasets/race-{round_}/train.jsonl"
        payloads = [f"writer {writer} of round {round_}\n".encode() * (writer + 1) for writer in range(WRITERS)]
        winners = _race(store.url, key, payloads, put)
        assert len(winners) == 1, f"round {round_}: {len(winners)} writers succeeded"
        won = payloads[winners[0]]
        assert store.get_bytes(key) == won and store.recorded_sha256(key) == sha256_bytes(won)
        assert store.read_verified(key, sha256_bytes(won)) == won
        assert _versions(versioned_bucket, f"objects/{key}") == 1  # never overwritten, not even for a moment


def test_the_sidecar_is_written_only_by_the_writer_that_published(versioned_bucket: S3Bucket) -> None:
    """The sidecar used to be written before the data: every racer wrote its own checksum."""
    store = ObjectStore(versioned_bucket.object_store_url)
    for round_ in range(ROUNDS):
        key = f"raw_logs/race-{round_}.jsonl"
        (winner,) = _race(store.url, key, [f"{round_}/{writer}\n".encode() for writer in range(WRITERS)], _put_bytes)
        assert _versions(versioned_bucket, f"objects/{key}{SHA_SUFFIX}") == 1, f"round {round_}: losers wrote it"
        assert store.recorded_sha256(key) == sha256_bytes(f"{round_}/{winner}\n".encode())
    with pytest.raises(ObjectExistsError):
        store.put_text("raw_logs/race-0.jsonl", "refused")
    assert _versions(versioned_bucket, f"objects/raw_logs/race-0.jsonl{SHA_SUFFIX}") == 1


@pytest.mark.parametrize("read", ["recorded_sha256", "check", "read_verified", "open_verified"])
def test_a_crash_between_an_s3_object_and_its_sidecar_is_recovered_from_the_objects_metadata(
    s3_bucket: S3Bucket, read: str
) -> None:
    store = ObjectStore(s3_bucket.object_store_url)
    data = b'{"group": 1}\n'
    stored = store.put_bytes(KEY, data)
    client, object_key = s3_bucket.client(), f"objects/{KEY}"
    assert client.head_object(Bucket=s3_bucket.name, Key=object_key)["Metadata"] == {"sha256": stored.sha256}
    client.delete_object(Bucket=s3_bucket.name, Key=object_key + SHA_SUFFIX)  # the crash: data in, sidecar not

    result = getattr(store, read)(KEY)
    if read == "open_verified":
        with result as handle:
            assert handle.read() == data
    else:
        assert result == (data if read == "read_verified" else stored.sha256)
    assert s3_bucket.keys(object_key) == [object_key, object_key + SHA_SUFFIX]  # recorded again
    assert store.verify(KEY)

    _overwrite(store, KEY, b'{"group": 2}\n')  # tampered behind the store's back (no metadata)
    with pytest.raises(ChecksumMismatch, match=r"key 'datasets/v1/train\.jsonl': content fails its recorded sha256"):
        store.check(KEY)
    client.delete_object(Bucket=s3_bucket.name, Key=object_key + SHA_SUFFIX)  # and its sidecar lost too
    with pytest.raises(ChecksumMismatch, match=r"key 'datasets/v1/train\.jsonl': no recorded sha256"):
        store.read_verified(KEY)
    with pytest.raises(ObjectNotFoundError, match="no recorded checksum"):
        store.recorded_sha256(KEY)


def test_an_s3_sidecar_that_disagrees_with_the_objects_metadata_is_a_mismatch(s3_bucket: S3Bucket) -> None:
    store = ObjectStore(s3_bucket.object_store_url)
    store.put_bytes(KEY, b"x\n")
    _overwrite(store, KEY + SHA_SUFFIX, sha256_bytes(b"y\n").encode())
    for read in (store.recorded_sha256, store.check, store.read_verified):
        with pytest.raises(
            ChecksumMismatch, match=r"key 'datasets/v1/train\.jsonl': its \.sha256 sidecar .* disagree"
        ) as caught:
            read(KEY)
        assert caught.value.key == KEY


def test_an_s3_object_written_before_its_sha256_was_in_its_metadata_still_verifies(s3_bucket: S3Bucket) -> None:
    """Buckets written by earlier versions hold the sidecar only."""
    store = ObjectStore(s3_bucket.object_store_url)
    _overwrite(store, KEY, b"old\n")
    _overwrite(store, KEY + SHA_SUFFIX, sha256_bytes(b"old\n").encode())
    assert store.read_verified(KEY) == b"old\n" and store.recorded_sha256(KEY) == sha256_bytes(b"old\n")


# Model Artifact Files on S3 ------------------------------------------------------------------------
def _on_s3(settings: Settings, bucket: S3Bucket) -> Settings:
    """``settings`` with Object Storage and Model Artifact Files both in ``bucket``."""
    return settings.model_copy(
        update={"object_store_url": bucket.object_store_url, "model_store_url": bucket.model_store_url}
    )


def test_a_model_registered_to_s3_loads_through_the_cache_and_encodes(
    settings: Settings, s3_bucket: S3Bucket, tiny_model_dir: Path
) -> None:
    ws = Workspace(_on_s3(settings, s3_bucket))
    init_workspace(ws)  # registers the base model into the bucket
    row = register_model(ws, "tiny-on-s3", tiny_model_dir, base_model_version="tiny-base")
    assert row.artifact_path == f"s3://{s3_bucket.name}/models/tiny-on-s3"
    in_bucket = s3_bucket.keys("models/tiny-on-s3/")
    files = [p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file()]
    assert {f"models/tiny-on-s3/{f}" for f in [*files, MANIFEST]} <= set(in_bucket)
    assert all(f"{key}{SHA_SUFFIX}" in in_bucket for key in in_bucket if not key.endswith(SHA_SUFFIX))
    with ws.db.read() as session:
        assert session.scalars(select(ModelVersion.artifact_path)).all() == [
            f"s3://{s3_bucket.name}/models/tiny-base",
            f"s3://{s3_bucket.name}/models/tiny-on-s3",
        ]

    directory = local_model_dir(ws, "tiny-on-s3")
    assert directory == ws.settings.resolved_model_cache_dir / "tiny-on-s3" and (directory / "modules.json").is_file()
    # A candidate is encoded for evaluation (search serves the active model only).
    vectors = ws.embeddings.embed(["sorting lists", "reading files"], "tiny-on-s3", Purpose.EVALUATION)
    base = ws.embeddings.embed(["sorting lists", "reading files"], "tiny-base", Purpose.SEARCH)
    assert vectors.shape == (2, 32) and abs(vectors - base).max() < 1e-5  # the same weights, read back whole


def test_a_model_file_changed_in_the_bucket_is_refused_naming_its_key(
    settings: Settings, s3_bucket: S3Bucket, tiny_model_dir: Path
) -> None:
    ws = Workspace(_on_s3(settings, s3_bucket))
    init_workspace(ws)
    register_model(ws, "tiny-tampered", tiny_model_dir, base_model_version="tiny-base")
    s3_bucket.client().put_object(
        Bucket=s3_bucket.name, Key="models/tiny-tampered/config.json", Body=json.dumps({"evil": True}).encode()
    )
    with pytest.raises(IntegrityFailure, match=r"key 'tiny-tampered/config\.json'"):
        local_model_dir(ws, "tiny-tampered")
    assert not (ws.settings.resolved_model_cache_dir / "tiny-tampered").exists()  # nothing half-copied is used


# A workspace on S3, end to end ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_workspace_on_s3_bootstraps_imports_and_builds_an_eligible_dataset_in_a_kernel(
    settings: Settings, s3_bucket: S3Bucket
) -> None:
    ws = Workspace(_on_s3(settings, s3_bucket))
    report = init_workspace(ws)
    assert report.created
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    simulate_traffic(ws, "mini", requests=80, seed=4, noise=0.0, start=utcnow() - timedelta(days=1))
    assert s3_bucket.keys("objects/raw_logs/"), "the feedback went somewhere else"

    result = run_stage(ws, "20_build_dataset")  # in a notebook kernel: it finds the bucket by itself
    assert result.ok, result.error

    with ws.db.read() as session:
        (dataset,) = session.scalars(select(TrainingDataset)).all()
    assert dataset.eligible, dataset.ineligible_reasons
    prefix = f"datasets/{dataset.dataset_version}"
    assert dataset.storage_path == f"s3://{s3_bucket.name}/objects/{prefix}"
    assert {f"objects/{prefix}/{name}" for name in ("train.jsonl", "manifest.json")} <= set(s3_bucket.keys())
    manifest = json.loads(ws.objects.read_verified(f"{prefix}/manifest.json"))
    assert (
        ws.objects.check(f"{prefix}/train.jsonl", manifest["lineage"]["train_sha256"])
        == (manifest["lineage"]["train_sha256"])
    )
    assert manifest["counts"]["trainable_groups"] == dataset.counts["trainable_groups"] > 0
    assert not (Path(ws.settings.workspace) / "objects").exists()  # nothing fell back to the local default
