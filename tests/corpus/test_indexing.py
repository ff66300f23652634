"""Vector index on Chroma, SOT entries in the Metadata DB — on a local PersistentClient and on a
real Chroma server (``chroma run``) started on loopback."""

import http.client
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from opslib.corpus.indexing import (
    build_index,
    content_hash,
    index_chunks,
    indexed_chunk_ids,
    remove_chunks,
)
from opslib.corpus.ingest import ChunkIn, VideoIn, ingest_videos
from opslib.db.models import VectorIndexEntry
from opslib.infra.embedding import Purpose
from opslib.infra.vector_store import (
    VectorStoreError,
    index_name_for,
    validate_index_name,
)
from opslib.infra.workspace import Workspace
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings

# Chroma 1.x serves its API under /api/v2 (/api/v1 answers 410 Gone); the heartbeat is Chroma's own.
CHROMA_HEARTBEAT = "/api/v2/heartbeat"


def _listening_port(pid: int, host: str) -> int | None:
    """The TCP port process ``pid`` (or a child of it) listens on at ``host``; None if none yet."""
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip == host:
                    return int(conn.laddr.port)
    except psutil.NoSuchProcess:  # it exited: the caller finds out from poll()
        pass
    return None


def _answers_chroma_heartbeat(host: str, port: int) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with direct.open(f"http://{host}:{port}{CHROMA_HEARTBEAT}", timeout=5) as response:
            return response.status == 200 and isinstance(json.load(response).get("nanosecond heartbeat"), int)
    except (OSError, ValueError, http.client.HTTPException):  # refused, not HTTP, not Chroma's JSON
        return False


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``chroma run`` on loopback, port 0: the server binds a free port itself, so no other process
    can take it between a pick and the bind. Its port is read from the server process's own
    listening socket (Chroma logs ``127.0.0.1:0``), and it is ready once Chroma's heartbeat answers
    there — another program listening on some port can neither be mistaken for it nor pass."""
    host = "127.0.0.1"
    root = tmp_path_factory.mktemp("chroma-server")
    log_path = root / "chroma.log"
    chroma = Path(sys.executable).parent / "chroma"
    command = [str(chroma), "run", "--path", str(root / "data"), "--host", host, "--port", "0"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        port: int | None = None
        deadline = time.monotonic() + 60
        while port is None or not _answers_chroma_heartbeat(host, port):
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"chroma server not ready in 60 s (port {port}): {log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.2)
            port = port or _listening_port(proc.pid, host)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(params=["persistent", "server"])
def iws(request: pytest.FixtureRequest, tmp_path: Path, db_url: str, tiny_model_dir: Path) -> Workspace:
    extra: dict[str, object] = {}
    if request.param == "server":
        host, port = request.getfixturevalue("chroma_server")
        extra = {"chroma_host": host, "chroma_port": port}
    # A fresh model version per test: collections on the shared server must not collide.
    version = f"tiny-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        workspace=tmp_path / "ws",
        runs_dir=tmp_path / "runs",
        db_url=db_url,
        base_model_path=tiny_model_dir,
        base_model_version=version,
        log_level="WARNING",
        **extra,
    )
    workspace = Workspace(settings)
    init_workspace(workspace)
    return workspace


def _videos(n_videos: int = 3, per_video: int = 4, project: str = "proj-a") -> list[VideoIn]:
    return [
        VideoIn(
            video_id=f"{project}-v{v}",
            user_id="owner",
            project_id=project,
            title=f"video {v}",
            chunks=[
                ChunkIn(
                    text=f"{project} video {v} segment {c} talks about topic {v * 10 + c}",
                    start_ms=c * 1000,
                    end_ms=(c + 1) * 1000,
                )
                for c in range(per_video)
            ],
        )
        for v in range(n_videos)
    ]


def _active(ws: Workspace) -> tuple[str, str]:
    version = ws.settings.base_model_version
    return index_name_for(version), version


def test_index_name_is_a_valid_chroma_name() -> None:
    assert index_name_for("all-minilm-l6-v2-base") == "idx-all-minilm-l6-v2-base"
    with pytest.raises(VectorStoreError):
        validate_index_name("ab")
    with pytest.raises(VectorStoreError):
        validate_index_name("x" * 64)


def test_entries_match_the_collection_and_carry_metadata(iws: Workspace) -> None:
    ingest_videos(iws, _videos() + _videos(project="proj-b"))
    index, version = _active(iws)
    entries = indexed_chunk_ids(iws, index)
    assert len(entries) == 24
    got = iws.vectors.collection(index).get(include=["metadatas"])
    assert set(got["ids"]) == entries
    meta = dict(zip(got["ids"], got["metadatas"], strict=True))["proj-b-v1#0002"]
    assert meta == {"chunk_id": "proj-b-v1#0002", "video_id": "proj-b-v1", "user_id": "owner", "project_id": "proj-b"}
    with iws.db.read() as session:
        entry = session.query(VectorIndexEntry).filter_by(index_name=index, chunk_id="proj-b-v1#0002").one()
        assert entry.embedding_model_version == version
        assert entry.content_hash == content_hash("proj-b video 1 segment 2 talks about topic 12")


def test_query_is_scoped_to_the_project(iws: Workspace) -> None:
    ingest_videos(iws, _videos() + _videos(project="proj-b"))
    index, version = _active(iws)
    vector = iws.embeddings.embed(["proj-a video 1 segment 2"], version, Purpose.SEARCH)[0]
    hits = iws.vectors.query(index, vector, 20, where={"project_id": "proj-a"})
    assert len(hits) == 12 and all(h.chunk_id.startswith("proj-a") for h in hits)
    assert hits == sorted(hits, key=lambda h: h.distance)


def test_unchanged_chunks_are_not_recomputed_and_same_content_is_reused(iws: Workspace, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ingest_videos(iws, _videos())
    index, version = _active(iws)
    calls: list[int] = []
    original = iws.embeddings.embed

    def counting(texts, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(iws.embeddings, "embed", counting)
    ids = sorted(indexed_chunk_ids(iws, index))
    again = index_chunks(iws, ids, index_name=index, model_version=version)
    assert (again.unchanged, again.embedded, again.reused, calls) == (12, 0, 0, [])
    # A second index of the same model copies vectors by content hash instead of embedding.
    other = "idx-copy-" + uuid.uuid4().hex[:8]
    copy = index_chunks(iws, ids, index_name=other, model_version=version, purpose=Purpose.REINDEX)
    assert (copy.reused, copy.embedded, calls) == (12, 0, [])
    a = iws.vectors.get_embeddings(index, ids)
    b = iws.vectors.get_embeddings(other, ids)
    assert all(np.allclose(a[i], b[i]) for i in ids)


def test_changed_content_is_re_embedded(iws: Workspace) -> None:
    from opslib.db.models import Chunk

    ingest_videos(iws, _videos(1, 2))
    index, version = _active(iws)
    with iws.db.transaction() as session:
        session.get(Chunk, "proj-a-v0#0000").enriched_text = "entirely new words here"
    report = index_chunks(
        iws, ["proj-a-v0#0000", "proj-a-v0#0001", "ghost#0000"], index_name=index, model_version=version
    )
    assert (report.embedded, report.unchanged, report.missing) == (1, 1, ["ghost#0000"])
    with iws.db.read() as session:
        entries = session.query(VectorIndexEntry).filter_by(index_name=index, chunk_id="proj-a-v0#0000").all()
        assert len(entries) == 1 and entries[0].content_hash == content_hash("entirely new words here")


def test_remove_chunks_keeps_sot_and_collection_in_step(iws: Workspace) -> None:
    ingest_videos(iws, _videos(1, 3))
    index, _ = _active(iws)
    assert remove_chunks(iws, ["proj-a-v0#0001"], index_name=index) == 1
    assert indexed_chunk_ids(iws, index) == {"proj-a-v0#0000", "proj-a-v0#0002"}
    assert set(iws.vectors.collection(index).get()["ids"]) == {"proj-a-v0#0000", "proj-a-v0#0002"}


def test_build_index_covers_every_ready_chunk_and_resumes(iws: Workspace) -> None:
    ingest_videos(iws, _videos())
    _, version = _active(iws)
    target = "idx-build-" + uuid.uuid4().hex[:8]
    partial = index_chunks(
        iws, ["proj-a-v0#0000", "proj-a-v0#0001"], index_name=target, model_version=version, purpose=Purpose.REINDEX
    )
    assert partial.written == 2
    report = build_index(iws, index_name=target, model_version=version, purpose=Purpose.REINDEX)
    assert (report.unchanged, report.written) == (2, 10)
    assert len(indexed_chunk_ids(iws, target)) == 12 == iws.vectors.count(target)


def test_index_chunks_refuses_a_bad_index_name(iws: Workspace) -> None:
    from opslib.infra.model_artifacts import ModelArtifactError
    from opslib.infra.vector_store import VectorStoreError

    with pytest.raises(VectorStoreError, match="Bad Index!"):
        index_chunks(iws, ["x"], index_name="Bad Index!", model_version="tiny-base")
    with pytest.raises(ModelArtifactError, match="model_version"):
        index_chunks(iws, ["x"], index_name="idx-ok", model_version="Bad Version!")


def test_vector_store_rejects_mismatched_input(iws: Workspace) -> None:
    index, _ = _active(iws)
    with pytest.raises(VectorStoreError, match="same length"):
        iws.vectors.upsert(index, ["a", "b"], np.zeros((1, 32), dtype=np.float32), [{}])
    with pytest.raises(VectorStoreError, match="no such collection"):
        iws.vectors.query("idx-missing-one", np.zeros(32), 5)
    with pytest.raises(VectorStoreError, match="n_results"):
        iws.vectors.query(index, np.zeros(32), 0)
