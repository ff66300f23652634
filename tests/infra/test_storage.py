import threading
import uuid
from pathlib import Path

import pytest

from opslib.infra.storage import (
    InvalidKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    sha256_bytes,
)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return ObjectStore(str(tmp_path / "objects"))
    return ObjectStore(f"memory://test-{uuid.uuid4().hex}")


def test_put_get_and_recorded_sha256(store: ObjectStore) -> None:
    stored = store.put_bytes("datasets/v1/train.jsonl", b'{"a": 1}\n')
    assert stored.sha256 == sha256_bytes(b'{"a": 1}\n') and stored.size == 9
    assert store.get_bytes("datasets/v1/train.jsonl") == b'{"a": 1}\n'
    assert store.recorded_sha256("datasets/v1/train.jsonl") == stored.sha256
    assert store.verify("datasets/v1/train.jsonl")


def test_write_once(store: ObjectStore) -> None:
    store.put_text("raw_logs/a.jsonl", "first")
    with pytest.raises(ObjectExistsError, match=r"raw_logs/a\.jsonl"):
        store.put_text("raw_logs/a.jsonl", "second")
    assert store.get_text("raw_logs/a.jsonl") == "first"
    assert store.verify("raw_logs/a.jsonl")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "./a",
        "a/.",
        "C:/x",
        "s3://bucket/x",
        "a\\b",
        "a/b.sha256",
        ".hidden",
        "with space",
        "a/\u00e9",
    ],
)
def test_bad_keys_are_refused_before_anything_is_written(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="key"):
        store.put_bytes(key, b"x")
    assert store.list() == []


def test_list_hides_checksums_and_sorts(store: ObjectStore) -> None:
    for key in ("b/2.jsonl", "a/1.jsonl", "b/1.jsonl"):
        store.put_text(key, key)
    assert store.list() == ["a/1.jsonl", "b/1.jsonl", "b/2.jsonl"]
    assert store.list("b") == ["b/1.jsonl", "b/2.jsonl"]
    assert store.list("missing") == []


def test_tampering_is_detected(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    store.put_text("models/m/model.bin", "weights")
    store.local_path("models/m/model.bin").write_text("evil")
    assert not store.verify("models/m/model.bin")


def test_a_crash_before_the_checksum_was_written_is_repaired_on_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(str(tmp_path))
    monkeypatch.setattr(store, "_write_checksum", lambda final, digest: None)  # "killed" after the link
    store.put_text("raw_logs/batch.jsonl", "line\n")
    monkeypatch.undo()
    # Readers (e.g. dataset lineage) still get the object's checksum, and it is recorded from now on.
    assert store.recorded_sha256("raw_logs/batch.jsonl") == sha256_bytes(b"line\n")
    assert (tmp_path / "raw_logs/batch.jsonl.sha256").read_text() == sha256_bytes(b"line\n")
    assert store.verify("raw_logs/batch.jsonl")


def test_missing_objects_are_clear_errors(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"nope\.txt"):
        store.get_bytes("nope.txt")
    with pytest.raises(ObjectNotFoundError):
        store.open("nope.txt")
    with pytest.raises(ObjectNotFoundError, match="no recorded checksum"):
        store.recorded_sha256("nope.txt")


def test_a_failed_write_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObjectStore(str(tmp_path))

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("opslib.infra.storage.os.link", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put_bytes("datasets/x.jsonl", b"half")
    monkeypatch.undo()
    assert not store.exists("datasets/x.jsonl")
    assert store.list() == []
    store.put_bytes("datasets/x.jsonl", b"whole")  # the key is still free
    assert store.get_bytes("datasets/x.jsonl") == b"whole"


def test_racing_writers_exactly_one_wins(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def write(n: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("contested.bin", f"writer-{n}".encode() * 10000)
            wins.append(n)
        except ObjectExistsError:
            losses.append(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert store.get_bytes("contested.bin") == f"writer-{wins[0]}".encode() * 10000
    assert store.verify("contested.bin")


def test_stream_lines(store: ObjectStore) -> None:
    store.put_bytes("raw_logs/f.jsonl", b"one\ntwo\nthree")
    assert list(store.iter_lines("raw_logs/f.jsonl")) == [b"one\n", b"two\n", b"three"]


def test_uri_names_the_scheme_for_remote_stores() -> None:
    store = ObjectStore("memory://bucket-x")
    assert store.uri("a/b.txt").startswith("memory://")


def test_put_file_streams_and_is_write_once(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"0123456789" * 100_000)
    stored = store.put_file("datasets/v/train.jsonl", source)
    assert stored.size == 1_000_000 and stored.sha256 == sha256_bytes(source.read_bytes())
    assert store.get_bytes("datasets/v/train.jsonl") == source.read_bytes()
    assert store.verify("datasets/v/train.jsonl")
    with pytest.raises(ObjectExistsError):
        store.put_file("datasets/v/train.jsonl", source)
