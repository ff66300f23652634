"""Verified reads: what is read is what was written, or one typed error naming the key."""

import os
import uuid
from pathlib import Path

import pytest

from opslib.errors import IntegrityFailure, NotFound, Refused
from opslib.infra.storage import (
    SHA_SUFFIX,
    ChecksumMismatch,
    ObjectMissing,
    ObjectStore,
    sha256_bytes,
)

KEY = "datasets/v1/train.jsonl"


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return ObjectStore(str(tmp_path / "objects"))
    return ObjectStore(f"memory://verified-{uuid.uuid4().hex}")


def _overwrite(store: ObjectStore, key: str, data: bytes) -> None:
    """A hand edit behind the store's back (it never overwrites)."""
    store.fs.pipe_file(f"{store.root}/{key}", data)


def test_a_verified_read_returns_exactly_what_was_written(store: ObjectStore) -> None:
    data = b"".join(b'{"group": %d}\n' % i for i in range(1000))
    stored = store.put_bytes(KEY, data)
    assert store.check(KEY) == stored.sha256
    assert store.check(KEY, stored.sha256, recorded_by="the manifest") == stored.sha256
    assert store.read_verified(KEY) == data
    with store.open_verified(KEY, spool_bytes=1024) as handle:  # spilled to a temporary file: the same bytes
        assert b"".join(handle) == data


@pytest.mark.parametrize("read", ["check", "read_verified", "open_verified"])
def test_a_hand_edited_object_is_refused_naming_the_key(store: ObjectStore, read: str) -> None:
    store.put_bytes(KEY, b'{"positives": ["a"]}\n')
    _overwrite(store, KEY, b'{"positives": ["b"]}\n')
    assert not store.verify(KEY)  # the finding: verify() said so, and the reader read it anyway
    with pytest.raises(ChecksumMismatch, match=r"key 'datasets/v1/train\.jsonl': content fails its recorded sha256"):
        getattr(store, read)(KEY)


def test_a_consistent_rewrite_is_caught_by_the_callers_own_record(store: ObjectStore) -> None:
    original = store.put_bytes(KEY, b"original\n")
    _overwrite(store, KEY, b"forged\n")
    _overwrite(store, KEY + SHA_SUFFIX, sha256_bytes(b"forged\n").encode())  # the sidecar rewritten too
    assert store.verify(KEY)
    with pytest.raises(ChecksumMismatch, match="does not match the sha256 the dataset manifest records") as caught:
        store.read_verified(KEY, original.sha256, recorded_by="the dataset manifest")
    assert caught.value.key == KEY


def test_a_missing_object_is_an_integrity_failure_not_a_not_found(store: ObjectStore) -> None:
    store.put_bytes(KEY, b"x\n")
    store.fs.rm_file(f"{store.root}/{KEY}")
    with pytest.raises(ObjectMissing, match=r"key 'datasets/v1/train\.jsonl': gone from") as caught:
        store.open_verified(KEY)
    failure = caught.value
    assert isinstance(failure, IntegrityFailure) and failure.key == KEY
    assert not isinstance(failure, NotFound | Refused)  # a system error (exit 1, ERROR), not a refusal


def test_a_lost_checksum_is_recorded_only_for_content_the_callers_record_vouches_for(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "objects"))
    good = store.put_bytes(KEY, b"good\n")
    sidecar = store.local_path(KEY).with_name("train.jsonl" + SHA_SUFFIX)
    os.unlink(sidecar)  # a crash between publishing the object and recording its checksum
    assert store.read_verified(KEY, good.sha256) == b"good\n"
    assert sidecar.read_text() == good.sha256  # recovered
    os.unlink(sidecar)
    store.local_path(KEY).write_bytes(b"bad\n")
    with pytest.raises(ChecksumMismatch, match="does not match"):
        store.read_verified(KEY, good.sha256)
    assert not sidecar.exists()  # a changed object's checksum is never recorded as if it were whole


def test_a_remote_object_without_a_recorded_checksum_cannot_be_verified() -> None:
    store = ObjectStore(f"memory://verified-{uuid.uuid4().hex}")
    store.put_bytes(KEY, b"x\n")
    store.fs.rm_file(f"{store.root}/{KEY}{SHA_SUFFIX}")
    with pytest.raises(ChecksumMismatch, match="no recorded sha256"):
        store.check(KEY)
