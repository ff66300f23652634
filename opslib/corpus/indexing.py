"""Writing chunks into a vector index while keeping ``VectorIndexEntry`` (the SOT) consistent.

Order of writes: vectors go to Chroma first, then the entries are committed. A crash in between
leaves vectors Chroma holds but the SOT does not list; the next write of those chunks simply
upserts them again. Entries are never committed for vectors Chroma does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, Select, delete, func, insert, select
from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from opslib.db.models import Chunk, ModelVersion, VectorIndexEntry, Video, VideoStatus, utcnow
from opslib.infra.embedding import Purpose
from opslib.infra.logs import get_logger
from opslib.infra.model_artifacts import ModelNotRegistered, validate_model_version
from opslib.infra.vector_store import validate_index_name
from opslib.infra.workspace import Workspace

log = get_logger(__name__)


def content_hash(enriched_text: str) -> str:
    return hashlib.sha256(enriched_text.encode("utf-8")).hexdigest()


@dataclass
class IndexReport:
    index_name: str
    model_version: str
    requested: int = 0
    embedded: int = 0  # computed by the model
    reused: int = 0  # copied from another index of the same model with the same content hash
    unchanged: int = 0  # already in this index with the same content hash
    missing: list[str] = field(default_factory=list)  # chunk ids that no longer exist
    refused: int = 0  # not recorded: the guard said this index may no longer be written

    @property
    def stopped(self) -> bool:
        return self.refused > 0

    @property
    def written(self) -> int:
        return self.embedded + self.reused


@dataclass(frozen=True)
class _ChunkRow:
    chunk_id: str
    text: str
    hash: str
    metadata: dict[str, str]


def _load_chunks(ws: Workspace, chunk_ids: Sequence[str]) -> list[_ChunkRow]:
    with ws.db.read() as session:
        rows = session.execute(
            select(Chunk.id, Chunk.enriched_text, Video.id, Video.user_id, Video.project_id)
            .join(Video, Video.id == Chunk.video_id)
            .where(Chunk.id.in_(list(chunk_ids)))
        ).all()
    return [
        _ChunkRow(
            chunk_id=cid,
            text=text,
            hash=content_hash(text),
            metadata={"chunk_id": cid, "video_id": vid, "user_id": uid, "project_id": pid},
        )
        for cid, text, vid, uid, pid in rows
    ]


def index_chunks(
    ws: Workspace,
    chunk_ids: Sequence[str],
    *,
    index_name: str,
    model_version: str,
    purpose: Purpose = Purpose.INGEST,
    batch_size: int = 128,
    progress: bool = False,
    guard: Callable[[Session], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Put ``chunk_ids`` into ``index_name`` embedded by ``model_version``.

    Chunks already in the index with the same content hash are left alone; chunks whose content
    the same model already embedded elsewhere reuse that vector instead of recomputing it.
    ``guard`` is asked inside each batch's entry-writing transaction whether the index may still
    be written (dual-write stops the moment the release leaves CANDIDATE_REINDEXING); once it
    says no, nothing more is recorded. ``on_batch`` is called after each recorded batch.
    """
    validate_index_name(index_name)  # refused up front, even when there is nothing to write
    validate_model_version(model_version)
    report = IndexReport(index_name=index_name, model_version=model_version, requested=len(chunk_ids))
    ids = list(dict.fromkeys(chunk_ids))
    bar = tqdm(total=len(ids), desc=f"index {index_name}", unit="chunk", disable=not progress)
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start : start + batch_size]
        rows = _load_chunks(ws, batch_ids)
        found = {r.chunk_id for r in rows}
        report.missing.extend(i for i in batch_ids if i not in found)
        _index_batch(ws, rows, index_name, model_version, purpose, report, guard)
        bar.update(len(batch_ids))
        if report.stopped:
            break
        if on_batch is not None:
            on_batch(start + len(batch_ids))
    bar.close()
    log.info(
        "indexed chunks",
        extra={
            "index_name": index_name,
            "embedded": report.embedded,
            "reused": report.reused,
            "unchanged": report.unchanged,
            "missing": len(report.missing),
        },
    )
    return report


def _index_batch(
    ws: Workspace,
    rows: list[_ChunkRow],
    index_name: str,
    model_version: str,
    purpose: Purpose,
    report: IndexReport,
    guard: Callable[[Session], bool] | None = None,
) -> None:
    if not rows:
        return
    with ws.db.read() as session:
        present = {
            (e.chunk_id, e.content_hash, e.embedding_model_version)
            for e in session.scalars(
                select(VectorIndexEntry).where(
                    VectorIndexEntry.index_name == index_name,
                    VectorIndexEntry.chunk_id.in_([r.chunk_id for r in rows]),
                )
            )
        }
        todo = [r for r in rows if (r.chunk_id, r.hash, model_version) not in present]
        report.unchanged += len(rows) - len(todo)
        precision = session.scalar(
            select(ModelVersion.encode_precision).where(ModelVersion.model_version == model_version)
        )
        if precision is None:
            raise ModelNotRegistered(f"model_version {model_version!r}: not registered")
        # A vector is reused only from the same model at the same precision (one precision per index).
        donors = session.execute(
            select(VectorIndexEntry.content_hash, VectorIndexEntry.index_name, VectorIndexEntry.chunk_id).where(
                VectorIndexEntry.embedding_model_version == model_version,
                VectorIndexEntry.encode_precision == precision,
                VectorIndexEntry.content_hash.in_({r.hash for r in todo}),
            )
        ).all()
    if not todo:
        return

    vectors = _donor_vectors(ws, donors)
    reused = {r.chunk_id for r in todo if r.hash in vectors}
    fresh = [r for r in todo if r.hash not in vectors]
    if fresh:
        unique_texts = list(dict.fromkeys(r.text for r in fresh))
        embedded = ws.embeddings.embed(unique_texts, model_version, purpose)
        by_text = dict(zip(unique_texts, embedded, strict=True))  # embed returns one row per text
        for r in fresh:
            vectors[r.hash] = by_text[r.text]

    ws.vectors.upsert(
        index_name,
        ids=[r.chunk_id for r in todo],
        embeddings=np.stack([vectors[r.hash] for r in todo]),
        metadatas=[r.metadata for r in todo],
    )
    with ws.db.transaction() as session:
        if guard is not None and not guard(session):
            report.refused += len(todo)
            return
        session.execute(
            delete(VectorIndexEntry).where(
                VectorIndexEntry.index_name == index_name,
                VectorIndexEntry.chunk_id.in_([r.chunk_id for r in todo]),
            )
        )
        now = utcnow()
        session.execute(
            insert(VectorIndexEntry),
            [  # one executemany, not an ORM unit of work
                {
                    "index_name": index_name,
                    "chunk_id": r.chunk_id,
                    "embedding_model_version": model_version,
                    "content_hash": r.hash,
                    "encode_precision": precision,
                    "created_at": now,
                }
                for r in todo
            ],
        )
    report.reused += len(reused)
    report.embedded += len(todo) - len(reused)


def _donor_vectors(ws: Workspace, donors: Iterable[tuple[str, str, str]]) -> dict[str, np.ndarray]:
    """One vector per content hash from (content hash, index, chunk) donors: one read per index."""
    wanted: dict[str, dict[str, str]] = {}  # index -> chunk id -> content hash
    for content, donor_index, donor_chunk in donors:
        wanted.setdefault(donor_index, {}).setdefault(donor_chunk, content)
    vectors: dict[str, np.ndarray] = {}
    for donor_index, by_chunk in wanted.items():
        todo = [c for c, content in by_chunk.items() if content not in vectors]
        if not todo:
            continue
        for chunk_id, vector in ws.vectors.get_embeddings(donor_index, todo).items():
            vectors.setdefault(by_chunk[chunk_id], vector)
    return vectors


def stored_vectors(ws: Workspace, model_version: str, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Vectors ``model_version`` already computed (at its precision) for these chunks' current
    content, from any index."""
    ids = list(chunk_ids)
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        with ws.db.read() as session:
            current = dict(session.execute(select(Chunk.id, Chunk.enriched_text).where(Chunk.id.in_(part))).all())
            entries = session.execute(
                select(VectorIndexEntry.index_name, VectorIndexEntry.chunk_id, VectorIndexEntry.content_hash).where(
                    VectorIndexEntry.embedding_model_version == model_version,
                    VectorIndexEntry.encode_precision
                    == select(ModelVersion.encode_precision)
                    .where(ModelVersion.model_version == model_version)
                    .scalar_subquery(),
                    VectorIndexEntry.chunk_id.in_(part),
                )
            ).all()
        by_index: dict[str, list[str]] = {}
        for index_name, chunk_id, digest in entries:
            if chunk_id in current and digest == content_hash(current[chunk_id]) and chunk_id not in found:
                by_index.setdefault(index_name, []).append(chunk_id)
        for index_name, wanted in by_index.items():
            found.update(ws.vectors.get_embeddings(index_name, wanted))
    return found


def remove_chunks(ws: Workspace, chunk_ids: Iterable[str], *, index_name: str) -> int:
    """Take chunks out of an index: the SOT entry goes first, so search never trusts a stale one."""
    ids = list(chunk_ids)
    with ws.db.transaction() as session:
        removed = cast(  # DML: Session.execute is typed Result, returns a CursorResult
            CursorResult[Any],
            session.execute(
                delete(VectorIndexEntry).where(
                    VectorIndexEntry.index_name == index_name, VectorIndexEntry.chunk_id.in_(ids)
                )
            ),
        ).rowcount
    ws.vectors.delete(index_name, ids)
    return int(removed or 0)


def servable_chunk_ids(ws: Workspace, *, by_length: bool = False) -> list[str]:
    """Every chunk of a READY video, in a stable order: what a complete index must hold.

    ``by_length`` orders them by text length (then id), so each batch an index build embeds
    holds texts of similar length and pads little — what ``SentenceTransformer.encode`` does
    by sorting its whole input."""
    order = (func.length(Chunk.enriched_text), Chunk.id) if by_length else (Chunk.id,)
    with ws.db.read() as session:
        return list(
            session.scalars(
                select(Chunk.id)
                .join(Video, Video.id == Chunk.video_id)
                .where(Video.status == VideoStatus.READY)
                .order_by(*order)
            )
        )


def indexed_chunk_ids(ws: Workspace, index_name: str) -> set[str]:
    with ws.db.read() as session:
        return set(session.scalars(select(VectorIndexEntry.chunk_id).where(VectorIndexEntry.index_name == index_name)))


def build_index(
    ws: Workspace,
    *,
    index_name: str,
    model_version: str,
    purpose: Purpose,
    progress: bool = False,
    batch_size: int = 128,
    guard: Callable[[Session], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Index every chunk of every READY video (resumable: finished entries are not recomputed)."""
    ws.vectors.collection(index_name)  # an empty corpus still gets its (empty) index
    return index_chunks(
        ws,
        servable_chunk_ids(ws, by_length=True),
        index_name=index_name,
        model_version=model_version,
        purpose=purpose,
        progress=progress,
        batch_size=batch_size,
        guard=guard,
        on_batch=on_batch,
    )


def missing_chunks_query(index_name: str, ready_before: datetime | None = None) -> Select[str]:
    """READY chunks (created before ``ready_before``) without an entry in ``index_name``."""
    query = (
        select(Chunk.id)
        .join(Video, Video.id == Chunk.video_id)
        .where(Video.status == VideoStatus.READY)
        .where(~Chunk.id.in_(select(VectorIndexEntry.chunk_id).where(VectorIndexEntry.index_name == index_name)))
    )
    if ready_before is not None:
        query = query.where(Chunk.created_at <= ready_before)
    return query


def missing_from_index(ws: Workspace, index_name: str, ready_before: datetime | None = None) -> list[str]:
    """The completeness check, answered from the SOT (an id-set difference, not a vector-store scan)."""
    with ws.db.read() as session:
        return list(session.scalars(missing_chunks_query(index_name, ready_before).order_by(Chunk.id)))
