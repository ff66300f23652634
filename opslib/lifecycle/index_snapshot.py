"""Index snapshot files: a vector index exported to Object Storage so a rollback can rebuild it.

``index_snapshots/<index_name>/<tag>.npz`` holds ids, vectors (float32), per-vector metadata
and content hashes; ``<tag>.json`` beside it records the model version, the counts, the file's
sha256 and a checksum of its vectors (sha256 over ids and vector bytes in id order). A live
collection "fails its checksum" when its ids differ from the snapshot's or a vector differs by
more than a small tolerance.

Every read of a snapshot is verified: the manifest against its recorded sha256, the file against
its own and the manifest's ``file_sha256`` — a changed or missing one raises ``ChecksumMismatch``
/ ``ObjectMissing`` (``opslib.errors.IntegrityFailure``) naming its key, before a vector is used.

``rebuild_index`` is the other way back: an index rebuilt from the source of truth (the READY
chunks of the Metadata DB) when there is no good snapshot — ``opsbench reindex-active``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from opslib.corpus.indexing import IndexReport, build_index
from opslib.db.models import Chunk, VectorIndexEntry, utcnow
from opslib.errors import OpsError
from opslib.infra.embedding import Purpose
from opslib.infra.logs import get_logger
from opslib.infra.storage import sha256_bytes
from opslib.infra.workspace import Workspace

log = get_logger(__name__)
PREFIX = "index_snapshots"
_BATCH = 2000


class SnapshotError(OpsError):
    pass


@dataclass(frozen=True)
class SnapshotManifest:
    key: str
    index_name: str
    model_version: str
    count: int
    dimension: int
    file_sha256: str
    vectors_checksum: str
    created_at: str
    encode_precision: str = "fp32"  # snapshots from before precisions were recorded are fp32

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


def vectors_checksum(ids: list[str], vectors: np.ndarray) -> str:
    digest = hashlib.sha256()
    for i in np.argsort(np.asarray(ids, dtype=object), kind="stable"):
        digest.update(ids[i].encode())
        digest.update(np.asarray(vectors[i], dtype=np.float32).tobytes())
    return digest.hexdigest()


def _entries(ws: Workspace, index_name: str) -> tuple[dict[str, str], str]:
    """The index's chunk → content hash, and its precision (one per index)."""
    with ws.db.read() as session:
        rows = session.execute(
            select(VectorIndexEntry.chunk_id, VectorIndexEntry.content_hash, VectorIndexEntry.encode_precision).where(
                VectorIndexEntry.index_name == index_name
            )
        ).all()
    precisions = {precision for _, _, precision in rows}
    if len(precisions) > 1:
        raise SnapshotError(f"index {index_name}: entries at several precisions {sorted(precisions)}")
    return {chunk: digest for chunk, digest, _ in rows}, precisions.pop() if precisions else "fp32"


def _collection_contents(
    ws: Workspace, index_name: str, ids: list[str]
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    collection = ws.vectors.collection(index_name)
    got_ids: list[str] = []
    vectors: list[np.ndarray] = []
    metadatas: list[dict[str, Any]] = []
    for start in range(0, len(ids), _BATCH):
        got = collection.get(ids=ids[start : start + _BATCH], include=["embeddings", "metadatas"])
        embeddings, metas = got["embeddings"], got["metadatas"]
        assert embeddings is not None and metas is not None  # included above; Chroma types them optional
        got_ids.extend(got["ids"])
        vectors.extend(np.asarray(v, dtype=np.float32) for v in embeddings)
        metadatas.extend(dict(m or {}) for m in metas)
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    return got_ids, matrix, metadatas


def export_index(ws: Workspace, index_name: str, model_version: str, tag: str) -> SnapshotManifest:
    """Write the index (as the SOT lists it) to a snapshot file; idempotent per ``tag``."""
    manifest_key = f"{PREFIX}/{index_name}/{tag}.json"
    if ws.objects.exists(manifest_key):  # a resumed cutover: the export is already there
        return read_snapshot_manifest(ws, manifest_key)
    entries, precision = _entries(ws, index_name)
    ids, vectors, metadatas = _collection_contents(ws, index_name, sorted(entries))
    if len(ids) != len(entries):
        missing = sorted(set(entries) - set(ids))[:3]
        raise SnapshotError(
            f"index {index_name}: {len(entries) - len(ids)} SOT entries have no vector (e.g. {missing})"
        )
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(ids, dtype=str),
        vectors=vectors,
        metadata=np.asarray([json.dumps(m, sort_keys=True) for m in metadatas], dtype=str),
        content_hashes=np.asarray([entries[i] for i in ids], dtype=str),
    )
    data = buffer.getvalue()
    file_key = f"{PREFIX}/{index_name}/{tag}.npz"
    if not ws.objects.exists(file_key):
        ws.objects.put_bytes(file_key, data)
    elif ws.objects.recorded_sha256(file_key) != sha256_bytes(data):
        data = ws.objects.read_verified(file_key)  # an earlier attempt's export of the same index stands
    manifest = SnapshotManifest(
        key=file_key,
        index_name=index_name,
        model_version=model_version,
        count=len(ids),
        dimension=int(vectors.shape[1]) if len(ids) else 0,
        file_sha256=sha256_bytes(data),
        vectors_checksum=_file_checksum(data),
        created_at=utcnow().isoformat(),
        encode_precision=precision,
    )
    ws.objects.put_text(manifest_key, manifest.to_json())
    log.info("index exported", extra={"index_name": index_name, "count": manifest.count, "key": file_key})
    return manifest


def _load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _file_checksum(data: bytes) -> str:
    arrays = _load(data)
    return vectors_checksum([str(i) for i in arrays["ids"]], arrays["vectors"])


def read_snapshot_manifest(ws: Workspace, key: str) -> SnapshotManifest:
    """A snapshot's manifest, verified against its recorded sha256."""
    return SnapshotManifest(**json.loads(ws.objects.read_verified(key)))


def _snapshot_arrays(ws: Workspace, manifest: SnapshotManifest) -> dict[str, np.ndarray]:
    """The snapshot file's arrays, verified against its recorded sha256 and the manifest's."""
    return _load(ws.objects.read_verified(manifest.key, manifest.file_sha256, recorded_by="the snapshot manifest"))


def latest_snapshot(ws: Workspace, index_name: str) -> SnapshotManifest | None:
    manifests = [k for k in ws.objects.list(f"{PREFIX}/{index_name}") if k.endswith(".json")]
    if not manifests:
        return None
    return read_snapshot_manifest(ws, sorted(manifests)[-1])


def collection_matches(ws: Workspace, manifest: SnapshotManifest, tolerance: float = 1e-5) -> bool:
    """True iff the live collection holds every one of the snapshot's ids with the same vector.

    More vectors than the snapshot is fine: chunks ingested between the export and the switch
    were dual-written into this index after the file was made. Vectors are compared within
    ``tolerance``, not bit for bit: the store may renormalise a vector on the way in (cosine
    space), which can move its last bits."""
    if not ws.vectors.exists(manifest.index_name):
        return False
    if ws.vectors.count(manifest.index_name) < manifest.count:
        return False
    arrays = _snapshot_arrays(ws, manifest)
    ids = [str(i) for i in arrays["ids"]]
    got_ids, vectors, _ = _collection_contents(ws, manifest.index_name, ids)
    if sorted(got_ids) != sorted(ids):
        return False
    position = {chunk_id: i for i, chunk_id in enumerate(got_ids)}
    live = vectors[[position[i] for i in ids]] if ids else vectors
    return bool(np.allclose(live, arrays["vectors"], atol=tolerance, rtol=0))


def restore_index(ws: Workspace, manifest: SnapshotManifest) -> int:
    """Rebuild the collection and its SOT entries from the snapshot file; returns vectors restored.

    Chunks deleted since the export are left out (and their entries dropped). A snapshot file that
    fails its checksum is never restored from (``IntegrityFailure`` naming its key)."""
    arrays = _snapshot_arrays(ws, manifest)
    ids = [str(i) for i in arrays["ids"]]
    with ws.db.read() as session:
        alive = set(session.scalars(select(Chunk.id).where(Chunk.id.in_(ids)))) if ids else set()
    keep = [i for i, chunk_id in enumerate(ids) if chunk_id in alive]
    ws.vectors.drop(manifest.index_name)
    ws.vectors.collection(manifest.index_name)
    for start in range(0, len(keep), _BATCH):
        part = keep[start : start + _BATCH]
        ws.vectors.upsert(
            manifest.index_name,
            [ids[i] for i in part],
            arrays["vectors"][part],
            [json.loads(str(arrays["metadata"][i])) for i in part],
        )
    with ws.db.transaction() as session:
        session.execute(delete(VectorIndexEntry).where(VectorIndexEntry.index_name == manifest.index_name))
        session.add_all(
            VectorIndexEntry(
                index_name=manifest.index_name,
                chunk_id=ids[i],
                embedding_model_version=manifest.model_version,
                content_hash=str(arrays["content_hashes"][i]),
                encode_precision=manifest.encode_precision,
            )
            for i in keep
        )
    log.warning("index restored from snapshot", extra={"index_name": manifest.index_name, "vectors": len(keep)})
    return len(keep)


def forget_entries(session: Session, index_name: str) -> int:
    """Delete every ``VectorIndexEntry`` of ``index_name`` in the caller's transaction (the first
    step of ``rebuild_index``: the SOT stops listing vectors before they are dropped)."""
    result = cast(  # DML: Session.execute is typed Result, returns a CursorResult
        CursorResult[Any], session.execute(delete(VectorIndexEntry).where(VectorIndexEntry.index_name == index_name))
    )
    return int(result.rowcount or 0)


def rebuild_index(
    ws: Workspace,
    index_name: str,
    model_version: str,
    *,
    guard: Callable[[Session], bool] | None = None,
    progress: bool = False,
) -> IndexReport:
    """Rebuild ``index_name`` from the source of truth: its collection is dropped and created
    again, and every READY chunk of the Metadata DB is embedded by ``model_version`` (a vector the
    same model already computed for the same content in another index is reused).

    The entries go first (``forget_entries``, by the caller, in the transaction that decides the
    rebuild — and again here, after the drop, for any a concurrent write recorded in between):
    the SOT never lists a vector the store does not hold. ``guard`` is asked before each batch's
    entries are recorded (``opslib.corpus.indexing.index_chunks``)."""
    ws.vectors.drop(index_name)
    with ws.db.transaction() as session:
        forget_entries(session, index_name)
    report = build_index(
        ws, index_name=index_name, model_version=model_version, purpose=Purpose.REINDEX, progress=progress, guard=guard
    )
    log.info(
        "index rebuilt from the Metadata DB",
        extra={"index_name": index_name, "embedded": report.embedded, "reused": report.reused},
    )
    return report
