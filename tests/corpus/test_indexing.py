"""Vector index on Chroma, SOT entries in the Metadata DB — on a local PersistentClient and on a
real Chroma server (``chroma run``) started on loopback."""

import uuid
from pathlib import Path

import numpy as np
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


def test_query_within_equals_the_filtered_query(iws: Workspace) -> None:
    """Over-fetch then filter, falling back to Chroma's filter: the same hits as the filtered query,
    for a project that fills the index and for one that is a sliver of it."""
    rng = np.random.default_rng(3)
    ids = [f"c{i:04d}" for i in range(400)]
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metadatas = [{"project_id": "big" if i % 50 else "small"} for i in range(400)]  # 8 "small" ones
    iws.vectors.upsert("idx-within", ids, vectors, metadatas)
    for query in rng.standard_normal((5, 16)).astype(np.float32):
        for project in ("big", "small"):
            within = iws.vectors.query_within("idx-within", query, 5, "project_id", project)
            filtered = iws.vectors.query("idx-within", query, 5, where={"project_id": project})
            assert [h.chunk_id for h in within] == [h.chunk_id for h in filtered]
    with pytest.raises(VectorStoreError, match="no such collection"):
        iws.vectors.query_within("idx-missing", vectors[0], 5, "project_id", "big")
