"""Video ingest: videos and their transcript chunks enter the Metadata DB and the serving index.

A video is PROCESSING while its chunks are embedded and becomes READY only once every chunk is
in each index the release currently writes to (the active one; also the candidate while the
release is CANDIDATE_REINDEXING — dual-write, DESIGN §5). A failure leaves it FAILED, never READY.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, update

from opslib.db.models import Chunk, ReleaseStatus, ServingState, Video, VideoStatus, utcnow
from opslib.embedding import Purpose
from opslib.indexing import index_chunks
from opslib.logs import get_logger
from opslib.release import current_release
from opslib.workspace import Workspace

log = get_logger(__name__)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#@/-]{0,127}$")


class IngestError(ValueError):
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


def write_targets(ws: Workspace) -> list[tuple[str, str]]:
    """(index_name, model_version) pairs new READY chunks must be written to, per the SOT."""
    with ws.db.read() as session:
        release = current_release(session)
        if release is None:
            raise IngestError("no ModelRelease yet: bootstrap the workspace (`opsbench init`)")
        targets = [(release.active_index_name, release.active_model_version)]
        if release.release_status is ReleaseStatus.CANDIDATE_REINDEXING and release.candidate_index_name:
            targets.append((release.candidate_index_name, release.candidate_model_version or ""))
    return targets


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
                Video(
                    id=video.video_id, user_id=video.user_id, project_id=video.project_id,
                    title=video.title, category=video.category, status=VideoStatus.PROCESSING,
                    search_serving_state=ServingState.SERVABLE,
                )
            )
        session.flush()  # videos before their chunks (the FK needs them)
        for video in videos:
            for position, chunk in enumerate(video.chunks):
                cid = chunk.chunk_id or chunk_id_for(video.video_id, position)
                chunk_ids.append(cid)
                session.add(
                    Chunk(
                        id=cid, video_id=video.video_id, start_ms=chunk.start_ms, end_ms=chunk.end_ms,
                        text=chunk.text, enriched_text=chunk.enriched_text or chunk.text,
                        chunking_version=chunking_version, embedding_model_version=targets[0][1],
                    )
                )
    try:
        for index_name, model_version in targets:
            index_chunks(ws, chunk_ids, index_name=index_name, model_version=model_version,
                         purpose=Purpose.INGEST, progress=progress)
    except Exception:
        _mark(ws, video_ids, VideoStatus.FAILED, failed_stage="INDEXING")
        raise
    _mark(ws, video_ids, VideoStatus.READY)
    log.info("videos ingested", extra={"videos": len(videos), "chunks": len(chunk_ids)})
    return IngestReport(videos=len(videos), chunks=len(chunk_ids), indexes=[t[0] for t in targets])


def _mark(ws: Workspace, video_ids: list[str], status: VideoStatus, failed_stage: str | None = None) -> None:
    with ws.db.transaction() as session:
        session.execute(
            update(Video)
            .where(Video.id.in_(video_ids))
            .values(status=status, failed_stage=failed_stage, updated_at=utcnow())
        )
