"""Video ingest: videos and their transcript chunks enter the Metadata DB and the serving index.

A video is PROCESSING while its chunks are embedded and becomes READY only once every chunk is
in each index the release currently writes to (the active one; also the candidate while the
release is CANDIDATE_REINDEXING — dual-write). A failure leaves it FAILED, never READY.
Every status change goes through ``opslib.control.serving`` and its transition tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opslib.control.release import current_release
from opslib.control.serving import mark_failed, mark_ready, new_video
from opslib.corpus.indexing import index_chunks
from opslib.db.models import (
    Chunk,
    ModelRelease,
    ReleaseStatus,
    VectorIndexEntry,
    Video,
)
from opslib.errors import Invalid
from opslib.infra.embedding import Purpose
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#@/-]{0,127}$")


class IngestError(Invalid, ValueError):
    pass


@dataclass(frozen=True)
class ChunkIn:
    text: str
    start_ms: int
    end_ms: int
    enriched_text: str | None = None
    chunk_id: str | None = None


@dataclass(frozen=True)
class VideoIn:
    video_id: str
    user_id: str
    project_id: str
    title: str
    chunks: Sequence[ChunkIn]
    category: str | None = None


@dataclass
class IngestReport:
    videos: int = 0
    chunks: int = 0
    indexes: list[str] = field(default_factory=list)


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not _ID.match(value):
        raise IngestError(
            f"{name} {value!r}: 1-128 characters of letters, digits and ._:#@/- starting with a letter or digit"
        )


def validate_video(video: VideoIn) -> None:
    _check_id("video_id", video.video_id)
    _check_id("user_id", video.user_id)
    _check_id("project_id", video.project_id)
    if not video.title or not video.title.strip():
        raise IngestError(f"video {video.video_id}: title must not be empty")
    if len(video.title) > 512:
        raise IngestError(f"video {video.video_id}: title is {len(video.title)} characters (at most 512)")
    if not video.chunks:
        raise IngestError(f"video {video.video_id}: has no chunks")
    for i, chunk in enumerate(video.chunks):
        where = f"video {video.video_id} chunk {i}"
        if not isinstance(chunk.text, str) or not chunk.text.strip():
            raise IngestError(f"{where}: text must not be empty")
        if not (isinstance(chunk.start_ms, int) and isinstance(chunk.end_ms, int)):
            raise IngestError(f"{where}: start_ms and end_ms must be integers")
        if chunk.start_ms < 0 or chunk.end_ms <= chunk.start_ms:
            raise IngestError(f"{where}: needs 0 <= start_ms < end_ms, got {chunk.start_ms}..{chunk.end_ms}")
        if chunk.chunk_id is not None:
            _check_id(f"{where} chunk_id", chunk.chunk_id)


def chunk_id_for(video_id: str, position: int) -> str:
    return f"{video_id}#{position:04d}"


@dataclass(frozen=True)
class WriteTarget:
    index_name: str
    model_version: str
    candidate: bool  # dual-write: only while the release is still reindexing this candidate


def _targets_of(release: ModelRelease) -> list[WriteTarget]:
    targets = [WriteTarget(release.active_index_name, release.active_model_version, False)]
    if release.release_status is ReleaseStatus.CANDIDATE_REINDEXING and release.candidate_index_name:
        targets.append(WriteTarget(release.candidate_index_name, release.candidate_model_version or "", True))
    return targets


def write_targets(ws: Workspace) -> list[WriteTarget]:
    """The indexes new READY chunks must be written to, per the SOT: the active index, and the
    candidate's while the release is CANDIDATE_REINDEXING (dual-write)."""
    with ws.db.read() as session:
        release = current_release(session)
        if release is None:
            raise IngestError("no ModelRelease yet: bootstrap the workspace (`opsbench init`)")
        return _targets_of(release)


def still_reindexing(index_name: str) -> Callable[[Session], bool]:
    """Guard for a candidate write: asked inside the transaction that records the entries."""

    def guard(session: Session) -> bool:
        release = current_release(session)
        return bool(
            release is not None
            and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING
            and release.candidate_index_name == index_name
        )

    return guard


def ingest_videos(
    ws: Workspace, videos: Sequence[VideoIn], *, chunking_version: str = "import-v1", progress: bool = False
) -> IngestReport:
    """Add ``videos`` (all or nothing in the DB), index their chunks, then mark them READY."""
    for video in videos:
        validate_video(video)
    video_ids = [v.video_id for v in videos]
    if len(set(video_ids)) != len(video_ids):
        raise IngestError("videos: the same video_id appears twice")
    targets = write_targets(ws)
    chunk_ids: list[str] = []
    with ws.db.transaction() as session:
        existing = set(session.scalars(select(Video.id).where(Video.id.in_(video_ids))))
        if existing:
            raise IngestError(f"video_id {sorted(existing)[0]!r}: already exists")
        for video in videos:
            session.add(
                new_video(
                    id=video.video_id,
                    user_id=video.user_id,
                    project_id=video.project_id,
                    title=video.title,
                    category=video.category,
                )
            )
        session.flush()  # videos before their chunks (the FK needs them)
        for video in videos:
            for position, chunk in enumerate(video.chunks):
                cid = chunk.chunk_id or chunk_id_for(video.video_id, position)
                chunk_ids.append(cid)
                session.add(
                    Chunk(
                        id=cid,
                        video_id=video.video_id,
                        start_ms=chunk.start_ms,
                        end_ms=chunk.end_ms,
                        text=chunk.text,
                        enriched_text=chunk.enriched_text or chunk.text,
                        chunking_version=chunking_version,
                        embedding_model_version=targets[0].model_version,
                    )
                )
    written: set[str] = set()
    try:
        for _attempt in range(5):
            for target in targets:
                if target.index_name in written:
                    continue
                index_chunks(
                    ws,
                    chunk_ids,
                    index_name=target.index_name,
                    model_version=target.model_version,
                    purpose=Purpose.INGEST,
                    progress=progress,
                    guard=still_reindexing(target.index_name) if target.candidate else None,
                )
                written.add(target.index_name)
            # READY only if the targets did not change meanwhile (a cutover or a candidate opened):
            # otherwise write to the new ones first — a READY chunk is always in the active index.
            if _mark_ready_if_targets(ws, video_ids, {t.index_name for t in targets if not t.candidate}):
                break
            targets = write_targets(ws)
        else:
            raise IngestError("the serving combination kept changing while indexing; retry the ingest")
    except Exception:
        with ws.db.transaction() as session:
            mark_failed(session, video_ids, stage="INDEXING")
        raise
    log.info("videos ingested", extra={"videos": len(videos), "chunks": len(chunk_ids)})
    return IngestReport(videos=len(videos), chunks=len(chunk_ids), indexes=sorted(written))


def _mark_ready_if_targets(ws: Workspace, video_ids: list[str], written_active: set[str]) -> bool:
    with ws.db.transaction() as session:
        # Shared lock: no release transition can commit between this check and the READY below,
        # which is what lets the cutover's switch transaction skip re-scanning the corpus.
        release = current_release(session, for_share=True)
        assert release is not None
        if release.active_index_name not in written_active:
            return False
        if release.release_status is ReleaseStatus.CANDIDATE_REINDEXING and release.candidate_index_name:
            # The candidate opened after we read the targets: its build may have missed these
            # PROCESSING chunks, so they must be written to it too before they count as READY.
            candidate_written = session.scalar(
                select(func.count())
                .select_from(VectorIndexEntry)
                .where(
                    VectorIndexEntry.index_name == release.candidate_index_name,
                    VectorIndexEntry.chunk_id.in_(select(Chunk.id).where(Chunk.video_id.in_(video_ids))),
                )
            )
            total = session.scalar(select(func.count()).select_from(Chunk).where(Chunk.video_id.in_(video_ids)))
            if candidate_written != total:
                return False
        mark_ready(session, video_ids)
        return True
