"""Loading a retrieval corpus (documents + queries + relevance) into projects, videos and chunks.

Documents become chunks of videos of projects (deterministic grouping given by the reader); the
queries are mapped to chunk ids and split once — by a seeded hash of the query id — into
*traffic* queries (the simulator may send them) and *reserved* queries (kept for evaluation,
never sent as traffic). Both lists are stored in Object Storage under ``corpora/<name>/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from tqdm.auto import tqdm

from opslib.control.release import current_release
from opslib.corpus.indexing import remove_chunks
from opslib.corpus.ingest import ChunkIn, VideoIn, ingest_videos, validate_video
from opslib.db.models import Chunk, CorpusImport, Video, VideoStatus
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)
CHUNK_MS = 30_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$")
_NAME_MAX = 32
_SLUG_MAX = 64


class CorpusError(Invalid, ValueError):
    pass


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    project_key: str
    video_key: str
    title: str = ""
    # Set when the passage was re-chunked (``opslib.corpus.chunking``): which piece of the
    # passage ``doc_id`` this is. Judgments name passages; a piece inherits its passage's.
    piece: int | None = None


@dataclass(frozen=True)
class Query:
    query_id: str
    text: str
    relevant_doc_ids: tuple[str, ...]


@dataclass
class CorpusSpec:
    name: str
    source: str
    documents: list[Document]
    queries: list[Query]
    # What every chunk records as its ``chunking_version``; None: whole passages, one chunk each.
    chunking_version: str | None = None

    @property
    def chunking(self) -> str:
        return self.chunking_version or f"corpus-{self.name}-v1"


@dataclass(frozen=True)
class QueryRecord:
    """A query as the simulator and evaluation use it: text, project and expected chunk ids."""

    query_id: str
    query_text: str
    project_id: str
    expected_results: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "query_id": self.query_id,
                "query_text": self.query_text,
                "project_id": self.project_id,
                "expected_results": list(self.expected_results),
            },
            ensure_ascii=False,
            sort_keys=True,
        )


@dataclass
class CorpusReport:
    name: str
    projects: int = 0
    videos: int = 0
    chunks: int = 0
    traffic_queries: int = 0
    reserved_queries: int = 0
    dropped_queries: int = 0
    skipped_videos: int = 0
    project_ids: list[str] = field(default_factory=list)


def _slug(value: str) -> str:
    """An id-safe form of ``value``. Lossy forms (non-ASCII such as Korean titles, spaces, very
    long keys) get a short hash of the original, so two different keys never share an id."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-._")
    if slug == value and len(slug) <= _SLUG_MAX:
        return slug
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:10]
    slug = slug[:_SLUG_MAX].rstrip("-._")
    return f"{slug}-{digest}" if slug else f"u{digest}"


def default_corpus_name(folder: str, prefix: str = "beir") -> str:
    """A corpus name derived from a folder's name that always satisfies the name rule: the lowered
    name when it does; else ``<prefix>-<its a-z0-9 form>``, ending in a short hash of the folder's
    name when that form lost characters or length (so two folders do not share a name)."""
    lowered = folder.lower()
    if _NAME.match(lowered):
        return lowered
    slug = re.sub(r"[^a-z0-9]+", "-", lowered).strip("-")
    room = _NAME_MAX - len(prefix) - 1
    if slug == lowered and len(slug) <= room:  # only too short: "ko" becomes "beir-ko"
        return f"{prefix}-{slug}"
    digest = hashlib.sha256(folder.encode("utf-8")).hexdigest()[:8]
    kept = slug[: room - len(digest) - 1].strip("-")
    return "-".join(part for part in (prefix, kept, digest) if part)


def imported_corpora(ws: Workspace) -> list[str]:
    with ws.db.read() as session:
        return list(session.scalars(select(CorpusImport.name).order_by(CorpusImport.name)))


def imported_corpora_text(ws: Workspace) -> str:
    """The imported corpora, for an error that needs one named."""
    names = imported_corpora(ws)
    if not names:
        return "no corpus is imported yet (`opsbench import-builtin` or `opsbench import-beir FOLDER`)"
    return f"imported corpora: {', '.join(names)}"


def project_id_for(corpus: str, project_key: str) -> str:
    return f"{corpus}-{_slug(project_key)}"


def video_id_for(corpus: str, project_key: str, video_key: str) -> str:
    # Within its project: two projects may well both have a video called "introduction".
    return f"{corpus}:{_slug(project_key)}/{_slug(video_key)}"


def chunk_id_for(corpus: str, doc_id: str, piece: int | None = None) -> str:
    """A passage's chunk id; a piece of a re-chunked passage adds ``#<piece>`` — a character no
    slug has, so a piece's id never equals another passage's."""
    base = f"{corpus}:{_slug(doc_id)}"
    return base if piece is None else f"{base}#{piece:04d}"


def document_chunk_id(corpus: str, doc: Document) -> str:
    return chunk_id_for(corpus, doc.doc_id, doc.piece)


def is_reserved(query_id: str, seed: int, fraction: float) -> bool:
    """Deterministic split: a query is reserved for evaluation iff its seeded hash falls below."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_videos(spec: CorpusSpec) -> list[VideoIn]:
    grouped: dict[tuple[str, str], list[Document]] = defaultdict(list)
    for doc in spec.documents:
        grouped[(doc.project_key, doc.video_key)].append(doc)
    videos = []
    for (project_key, video_key), docs in sorted(grouped.items()):
        chunks = [
            ChunkIn(
                text=doc.text,
                enriched_text=f"{doc.title}\n{doc.text}" if doc.title else doc.text,
                start_ms=i * CHUNK_MS,
                end_ms=(i + 1) * CHUNK_MS,
                chunk_id=document_chunk_id(spec.name, doc),
            )
            for i, doc in enumerate(docs)
        ]
        videos.append(
            VideoIn(
                video_id=video_id_for(spec.name, project_key, video_key),
                user_id=f"owner-{_slug(project_key)}",
                project_id=project_id_for(spec.name, project_key),
                title=video_key,
                category=spec.name,
                chunks=chunks,
            )
        )
    return videos


def build_query_records(spec: CorpusSpec) -> tuple[list[QueryRecord], int]:
    """Queries mapped onto chunk ids; a query is scoped to the project most of its answers are in.
    A passage judged relevant maps to all its chunks: each piece of a re-chunked one."""
    project_of = {d.doc_id: project_id_for(spec.name, d.project_key) for d in spec.documents}
    chunks_of: dict[str, list[str]] = defaultdict(list)
    for doc in spec.documents:
        chunks_of[doc.doc_id].append(document_chunk_id(spec.name, doc))
    records, dropped = [], 0
    for query in spec.queries:
        relevant = [d for d in query.relevant_doc_ids if d in project_of]
        if not relevant or not query.text.strip():
            dropped += 1
            continue
        project = Counter(project_of[d] for d in relevant).most_common(1)[0][0]
        expected = tuple(cid for d in relevant if project_of[d] == project for cid in chunks_of[d])
        records.append(QueryRecord(query.query_id, query.text.strip(), project, expected))
    return records, dropped


def validate_spec(spec: CorpusSpec) -> None:
    if not _NAME.match(spec.name):
        raise CorpusError(f"name {spec.name!r}: 3-32 characters of a-z, 0-9 and '-'")
    if not spec.documents:
        raise CorpusError(f"corpus {spec.name!r}: has no documents")
    seen: set[str] = set()
    for doc in spec.documents:
        cid = document_chunk_id(spec.name, doc)
        if cid in seen:
            which = doc.doc_id if doc.piece is None else f"{doc.doc_id} piece {doc.piece}"
            raise CorpusError(f"corpus {spec.name!r}: document id {which!r} is not unique")
        seen.add(cid)
        if not doc.text.strip():
            raise CorpusError(f"corpus {spec.name!r}: document {doc.doc_id!r} has no text")


def load_corpus(
    ws: Workspace,
    spec: CorpusSpec,
    *,
    reserve_fraction: float = 0.3,
    seed: int = 0,
    batch_videos: int = 25,
    progress: bool = False,
) -> CorpusReport:
    """Import ``spec``: videos/chunks into the DB and the active index, queries into storage.

    Resumable: videos already READY are kept, half-ingested ones are removed and redone.
    """
    validate_spec(spec)
    if not 0.0 <= reserve_fraction < 1.0:
        raise CorpusError(f"reserve_fraction {reserve_fraction}: must be in [0, 1)")
    with ws.db.read() as session:
        if session.get(CorpusImport, spec.name) is not None:
            # Not re-chunked in place: its chunk ids are in feedback, datasets and evaluation sets.
            raise CorpusError(
                f"corpus {spec.name!r}: already imported (to import it chunked another way, give it a new name)"
            )
        if current_release(session) is None:
            raise CorpusError("no ModelRelease yet: bootstrap the workspace (`opsbench init`)")
    videos = build_videos(spec)
    # Every video is checked before the first batch is written: bad input must not leave half
    # an import searchable behind it.
    for video in videos:
        validate_video(video)
    records, dropped = build_query_records(spec)
    report = CorpusReport(name=spec.name, dropped_queries=dropped)

    todo = _resume(ws, videos, report)
    bar = tqdm(total=sum(len(v.chunks) for v in todo), desc=f"import {spec.name}", unit="chunk", disable=not progress)
    for start in range(0, len(todo), batch_videos):
        batch = todo[start : start + batch_videos]
        ingest_videos(ws, batch, chunking_version=spec.chunking)
        bar.update(sum(len(v.chunks) for v in batch))
    bar.close()

    traffic = [r for r in records if not is_reserved(r.query_id, seed, reserve_fraction)]
    reserved = [r for r in records if is_reserved(r.query_id, seed, reserve_fraction)]
    keys = {}
    for kind, rows in (("traffic", traffic), ("reserved", reserved)):
        key = f"corpora/{spec.name}/{kind}_queries.jsonl"
        if not ws.objects.exists(key):  # a resumed import wrote it already (same seed, same rows)
            ws.objects.put_text(key, "".join(r.to_json() + "\n" for r in rows))
        keys[kind] = key
    report.project_ids = sorted({v.project_id for v in videos})
    report.projects = len(report.project_ids)
    report.videos = len(videos)
    report.chunks = sum(len(v.chunks) for v in videos)
    report.traffic_queries, report.reserved_queries = len(traffic), len(reserved)
    with ws.db.transaction() as session:
        session.add(
            CorpusImport(
                name=spec.name,
                source=spec.source,
                project_count=report.projects,
                video_count=report.videos,
                chunk_count=report.chunks,
                traffic_query_count=len(traffic),
                reserved_query_count=len(reserved),
                traffic_queries_key=keys["traffic"],
                reserved_queries_key=keys["reserved"],
            )
        )
    log.info(
        "corpus imported",
        extra={
            "corpus": spec.name,
            "chunks": report.chunks,
            "traffic_queries": len(traffic),
            "reserved_queries": len(reserved),
        },
    )
    return report


def _resume(ws: Workspace, videos: list[VideoIn], report: CorpusReport) -> list[VideoIn]:
    ids = [v.video_id for v in videos]
    with ws.db.read() as session:
        existing = dict(session.execute(select(Video.id, Video.status).where(Video.id.in_(ids))).all())
        unfinished = [vid for vid, status in existing.items() if status is not VideoStatus.READY]
        stale_chunks = list(session.scalars(select(Chunk.id).where(Chunk.video_id.in_(unfinished))))
        release = current_release(session)
        assert release is not None
        active_index = release.active_index_name
    if unfinished:
        remove_chunks(ws, stale_chunks, index_name=active_index)
        with ws.db.transaction() as session:
            session.execute(delete(Chunk).where(Chunk.video_id.in_(unfinished)))
            session.execute(delete(Video).where(Video.id.in_(unfinished)))
    report.skipped_videos = sum(1 for status in existing.values() if status is VideoStatus.READY)
    return [v for v in videos if existing.get(v.video_id) is not VideoStatus.READY]


def read_queries(ws: Workspace, corpus: str, kind: str) -> Iterator[QueryRecord]:
    """The stored ``traffic`` or ``reserved`` queries of an imported corpus."""
    if kind not in ("traffic", "reserved"):
        raise CorpusError(f"kind {kind!r}: must be 'traffic' or 'reserved'")
    with ws.db.read() as session:
        row = session.get(CorpusImport, corpus)
    if row is None:  # outside the session: listing the imported ones opens its own
        raise CorpusError(f"corpus {corpus!r}: not imported; {imported_corpora_text(ws)}")
    key = row.traffic_queries_key if kind == "traffic" else row.reserved_queries_key
    for line in ws.objects.iter_lines(key):
        data = json.loads(line)
        yield QueryRecord(data["query_id"], data["query_text"], data["project_id"], tuple(data["expected_results"]))
