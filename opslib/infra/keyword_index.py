"""The keyword index of the serving path: BM25 over the chunks' words, held in memory by every
process that searches, and kept in step with the Metadata DB through its chunk change log.

Why not the databases' own full-text search: SQLite FTS5 and PostgreSQL rank *every* chunk a
query word matches before they can cut to the top 20 (≈ 2 µs per match on FTS5, far more on
PostgreSQL), and a common word matches most of the corpus — 0.2 s per search on SQLite and 2 s on
PostgreSQL at 100,000 chunks. Here a match costs a few nanoseconds (numpy over postings arrays),
and both Metadata DBs rank identically.

Ranking (exact, no approximation): a query word matches a chunk's word when it is a substring of
it, so a Korean noun is found inside an eojeol with its particles (``검색`` in ``검색엔진에서``);
its frequency in a chunk is the number of the chunk's words containing it, its document
frequency the number of chunks with at least one. Okapi BM25 (k1 = 1.2, b = 0.75, the
non-negative idf ``ln(1 + (N − df + 0.5) / (df + 0.5))``) summed over the query's words; ties by
chunk id. Statistics are over every chunk in the database; the ranking is then cut to the project.

Following the database: triggers (migration 0012) append one ``chunk_changes`` row per chunk
inserted, deleted or re-texted, in the writer's own transaction. Before every query the index
reads the rows it has not applied yet and re-reads those chunks (their current state, so applying
a change twice is harmless); new and changed chunks go to a small segment, old versions are marked
dead, and segments are merged as they accumulate. On SQLite writers are serialised, so "rows after
the last sequence number seen" is exact. On PostgreSQL sequence numbers can commit out of order,
so each row carries its writer's transaction id and the index re-reads every row whose transaction
was not yet known to be finished (``pg_snapshot_xmin``) at the previous read. A different
``database_identity`` (a database re-created or replaced) or a log that went backwards rebuilds
the index from the chunks table.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

WORD = re.compile(r"\w+", re.UNICODE)
K1 = 1.2
B = 0.75
MIN_QUERY_WORD = 2  # shorter query words are ignored (they would match almost every chunk)
MERGE_SEGMENTS = 8  # more small segments than this are merged into one
MERGE_FRACTION = 0.1  # small segments holding more than this share of all chunks: merge everything
REBUILD_BATCH = 5000  # chunks tokenised at a time when the index is built from the chunks table
_SEPARATOR = "\x00"  # never inside a \w+ word


def query_words(query_text: str) -> list[str]:
    """Distinct lower-cased words (any script) of at least two characters, in query order."""
    return list(dict.fromkeys(w.lower() for w in WORD.findall(query_text) if len(w) >= MIN_QUERY_WORD))


def chunk_words(enriched_text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(enriched_text)]


@dataclass(frozen=True)
class ChunkDoc:
    chunk_id: str
    project_id: str
    enriched_text: str


class Vocabulary:
    """Every distinct word seen, with a substring lookup: which words contain a query word."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._joined = ""
        self._starts = np.zeros(0, dtype=np.int64)
        self._joined_words = 0

    def __len__(self) -> int:
        return len(self.ids)

    def id_of(self, word: str) -> int:
        known = self.ids.get(word)
        if known is None:
            known = self.ids[word] = len(self.ids)
            self._pieces.append(word)
        return known

    def containing(self, part: str) -> np.ndarray:
        """Ids of the words that contain ``part`` (one scan of all words joined, in C)."""
        if self._joined_words != len(self._pieces):  # words added since: join again
            self._joined = _SEPARATOR + _SEPARATOR.join(self._pieces) + _SEPARATOR
            lengths = np.fromiter((len(p) + 1 for p in self._pieces), dtype=np.int64, count=len(self._pieces))
            self._starts = np.concatenate(([1], 1 + np.cumsum(lengths)[:-1])) if len(lengths) else lengths
            self._joined_words = len(self._pieces)
        positions = [m.start() for m in re.finditer(re.escape(part), self._joined)]
        if not positions:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.searchsorted(self._starts, np.asarray(positions), side="right") - 1)


class Segment:
    """Postings of a set of chunks, grouped by word: ``docs[ptr[w]:ptr[w + 1]]`` are the chunks
    (positions in this segment) holding word ``w``, ``counts`` how often. Chunks removed later are
    only marked dead (``live``); merging drops them."""

    def __init__(
        self,
        chunk_ids: list[str],
        projects: np.ndarray,
        lengths: np.ndarray,
        ptr: np.ndarray,
        docs: np.ndarray,
        counts: np.ndarray,
    ) -> None:
        self.chunk_ids = chunk_ids
        self.projects = projects  # project code per chunk
        self.lengths = lengths  # words per chunk
        self.ptr = ptr
        self.docs = docs
        self.counts = counts
        self.live = np.ones(len(chunk_ids), dtype=bool)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @classmethod
    def build(cls, chunks: Sequence[tuple[str, int, list[str]]], vocabulary: Vocabulary) -> Segment:
        """From (chunk id, project code, words) triples."""
        word_ids: list[np.ndarray] = []
        doc_ids: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        lengths = np.zeros(len(chunks), dtype=np.int32)
        for position, (_chunk_id, _project, words) in enumerate(chunks):
            lengths[position] = len(words)
            frequencies = Counter(w for w in words if len(w) >= MIN_QUERY_WORD)
            if not frequencies:
                continue
            word_ids.append(np.fromiter((vocabulary.id_of(w) for w in frequencies), dtype=np.int64))
            counts.append(np.fromiter(frequencies.values(), dtype=np.float32))
            doc_ids.append(np.full(len(frequencies), position, dtype=np.int32))
        projects = np.fromiter((p for _, p, _ in chunks), dtype=np.int32, count=len(chunks))
        return cls._from_postings(
            [c for c, _, _ in chunks],
            projects,
            lengths,
            _concat(word_ids, np.int64),
            _concat(doc_ids, np.int32),
            _concat(counts, np.float32),
            len(vocabulary),
        )

    @classmethod
    def _from_postings(
        cls,
        chunk_ids: list[str],
        projects: np.ndarray,
        lengths: np.ndarray,
        word_ids: np.ndarray,
        docs: np.ndarray,
        counts: np.ndarray,
        vocabulary_size: int,
    ) -> Segment:
        order = np.argsort(word_ids, kind="stable")
        ptr = np.zeros(vocabulary_size + 1, dtype=np.int64)
        np.cumsum(np.bincount(word_ids, minlength=vocabulary_size), out=ptr[1:])
        return cls(chunk_ids, projects, lengths, ptr, docs[order], counts[order])

    def postings_of(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word id, doc, count) of every posting."""
        words = np.repeat(np.arange(len(self.ptr) - 1, dtype=np.int64), np.diff(self.ptr))
        return words, self.docs, self.counts

    def frequencies(self, word_ids: np.ndarray) -> np.ndarray:
        """Per chunk of this segment: how many of its words are among ``word_ids`` (dead: 0)."""
        known = word_ids[word_ids < len(self.ptr) - 1]
        frequency = np.zeros(len(self), dtype=np.float32)
        if len(known):
            starts, ends = self.ptr[known], self.ptr[known + 1]
            sizes = ends - starts
            total = int(sizes.sum())
            if total:
                # the positions starts[i] .. ends[i]-1 of every word, without a Python loop
                offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes)
                positions = offsets + np.arange(total)
                frequency = np.bincount(
                    self.docs[positions], weights=self.counts[positions], minlength=len(self)
                ).astype(np.float32)
        frequency[~self.live] = 0.0
        return frequency


def merge(segments: Sequence[Segment], vocabulary_size: int) -> Segment:
    """One segment holding the live chunks of ``segments``."""
    chunk_ids: list[str] = []
    projects, lengths, words, docs, counts = [], [], [], [], []
    offset = 0
    for segment in segments:
        keep = segment.live
        new_position = np.cumsum(keep) - 1 + offset
        segment_words, segment_docs, segment_counts = segment.postings_of()
        alive = keep[segment_docs]
        words.append(segment_words[alive])
        docs.append(new_position[segment_docs[alive]].astype(np.int32))
        counts.append(segment_counts[alive])
        chunk_ids.extend(c for c, k in zip(segment.chunk_ids, keep, strict=True) if k)
        projects.append(segment.projects[keep])
        lengths.append(segment.lengths[keep])
        offset += int(keep.sum())
    return Segment._from_postings(
        chunk_ids,
        _concat(projects, np.int32),
        _concat(lengths, np.int32),
        _concat(words, np.int64),
        _concat(docs, np.int32),
        _concat(counts, np.float32),
        vocabulary_size,
    )


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


class KeywordIndex:
    """The in-memory index of one Metadata DB. ``search`` catches up with the database first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset(identity=None)

    def _reset(self, identity: str | None) -> None:
        self.identity = identity
        self.vocabulary = Vocabulary()
        self.segments: list[Segment] = []
        self.located: dict[str, tuple[Segment, int]] = {}  # chunk id → where its live version is
        self.projects: dict[str, int] = {}
        self.live_chunks = 0
        self.live_words = 0
        self.last_seq = 0  # SQLite: the newest change applied
        self.unfinished_from: int | None = None  # PostgreSQL: oldest transaction possibly unseen
        self.seen: set[int] = set()  # PostgreSQL: rows applied whose writers may not all be finished

    # Following the database ------------------------------------------------------------------
    def refresh(self, session: Session) -> None:
        """Catch up now (an endpoint does this before it takes requests, then in the background, so
        searches find little left to apply)."""
        with self._lock:
            self.catch_up(session)

    def catch_up(self, session: Session) -> None:
        postgres = _dialect(session) == "postgresql"
        identity = session.execute(text("SELECT identity FROM database_identity")).scalar()
        if identity is None or identity != self.identity:
            self._rebuild(session, str(identity), postgres)
            return
        if postgres:
            horizon = int(
                session.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).scalar_one()
            )
            rows = session.execute(
                text("SELECT seq, txid, chunk_id FROM chunk_changes WHERE txid >= :since"),
                {"since": self.unfinished_from},
            ).all()
            # Rows seen before are read again until their writer is known to have finished (a
            # long transaction elsewhere holds the horizon back), but applied only once.
            self._apply(session, {r.chunk_id for r in rows if r.seq not in self.seen})
            self.seen = {r.seq for r in rows if r.txid >= horizon}
            self.unfinished_from = horizon
        else:
            newest = session.execute(text("SELECT max(seq) FROM chunk_changes")).scalar() or 0
            if newest < self.last_seq:  # the log went backwards: another database behind the same name
                self._rebuild(session, str(identity), postgres)
                return
            if newest > self.last_seq:
                changed = session.execute(
                    text("SELECT chunk_id FROM chunk_changes WHERE seq > :seq AND seq <= :newest"),
                    {"seq": self.last_seq, "newest": newest},
                ).scalars()
                self._apply(session, set(changed))
                self.last_seq = newest

    def _rebuild(self, session: Session, identity: str, postgres: bool) -> None:
        self._reset(identity)
        # Where to follow from is read before the chunks, so a write in between is applied again
        # (harmlessly) rather than missed.
        if postgres:
            self.unfinished_from = int(
                session.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).scalar_one()
            )
        else:
            self.last_seq = session.execute(text("SELECT max(seq) FROM chunk_changes")).scalar() or 0
        # In batches, merged at the end: a whole corpus's words as Python strings at once would
        # cost ≈ 5 KB per chunk at peak.
        batch: list[ChunkDoc] = []
        for doc in _all_chunks(session):
            batch.append(doc)
            if len(batch) == REBUILD_BATCH:
                self._add(batch)
                batch = []
        if batch:
            self._add(batch)
        if len(self.segments) > 1:
            self._merge(self.segments)

    def _apply(self, session: Session, changed: set[str]) -> None:
        if not changed:
            return
        current = _read_chunks(session, changed)
        for chunk_id in changed:
            self._remove(chunk_id)
        if current:
            self._add(current)
        self._maybe_merge()

    def _add(self, docs: list[ChunkDoc]) -> None:
        prepared = []
        for doc in docs:
            code = self.projects.setdefault(doc.project_id, len(self.projects))
            prepared.append((doc.chunk_id, code, chunk_words(doc.enriched_text)))
        segment = Segment.build(prepared, self.vocabulary)
        self.segments.append(segment)
        for position, chunk_id in enumerate(segment.chunk_ids):
            self._remove(chunk_id)  # a chunk listed twice in one batch keeps its last version
            self.located[chunk_id] = (segment, position)
        self.live_chunks += len(segment)
        self.live_words += int(segment.lengths.sum())

    def _remove(self, chunk_id: str) -> None:
        where = self.located.pop(chunk_id, None)
        if where is None:
            return
        segment, position = where
        if segment.live[position]:
            segment.live[position] = False
            self.live_chunks -= 1
            self.live_words -= int(segment.lengths[position])

    def _maybe_merge(self) -> None:
        small = self.segments[1:]
        held = sum(len(s) for s in self.segments)  # live and dead
        # Everything when the small segments or the dead chunks have grown to a tenth of the
        # index (a merge costs about one pass over the postings); only the small ones when many.
        everything = sum(len(s) for s in small) + (held - self.live_chunks) > MERGE_FRACTION * max(held, 1)
        if everything or len(small) > MERGE_SEGMENTS:
            self._merge(self.segments if everything else small)

    def _merge(self, parts: list[Segment]) -> None:
        merged = merge(parts, len(self.vocabulary))
        self.segments = [s for s in self.segments if all(s is not p for p in parts)]
        self.segments.append(merged)
        for position, chunk_id in enumerate(merged.chunk_ids):
            self.located[chunk_id] = (merged, position)

    # Ranking -------------------------------------------------------------------------------
    def search(self, session: Session, query_text: str, project_id: str, k: int) -> list[str]:
        words = query_words(query_text)
        with self._lock:
            self.catch_up(session)
            if not words or project_id not in self.projects or not self.live_chunks:
                return []
            return self._rank(words, self.projects[project_id], k)

    def _rank(self, words: Iterable[str], project: int, k: int) -> list[str]:
        total = self.live_chunks
        average_length = self.live_words / total if total else 0.0
        scores = [np.zeros(len(s), dtype=np.float64) for s in self.segments]
        norms = [K1 * (1 - B + B * s.lengths / max(average_length, 1e-9)) for s in self.segments]
        for word in words:
            word_ids = self.vocabulary.containing(word)
            if not len(word_ids):
                continue
            frequencies = [s.frequencies(word_ids) for s in self.segments]
            df = sum(int(np.count_nonzero(f)) for f in frequencies)
            if not df:
                continue
            idf = math.log(1.0 + (total - df + 0.5) / (df + 0.5))
            for score, frequency, norm in zip(scores, frequencies, norms, strict=True):
                score += idf * frequency * (K1 + 1) / (frequency + norm)
        candidates: list[tuple[float, str]] = []
        for segment, score in zip(self.segments, scores, strict=True):
            score[segment.projects != project] = 0.0
            matched = np.flatnonzero(score > 0)
            if len(matched) > k:  # all that tie with the k-th best stay, for the id tie-break
                kth = np.partition(score[matched], len(matched) - k)[len(matched) - k]
                matched = matched[score[matched] >= kth]
            candidates.extend((float(score[i]), segment.chunk_ids[i]) for i in matched)
        candidates.sort(key=lambda c: (-c[0], c[1]))
        return [chunk_id for _, chunk_id in candidates[:k]]


def _dialect(session: Session) -> str:
    bind = session.get_bind()
    return bind.dialect.name


_CHUNKS = "SELECT c.id, c.enriched_text, v.project_id FROM chunks c JOIN videos v ON v.id = c.video_id"


def _all_chunks(session: Session) -> Iterator[ChunkDoc]:
    rows = session.execute(text(_CHUNKS), execution_options={"yield_per": REBUILD_BATCH})
    for r in rows:
        yield ChunkDoc(r.id, r.project_id, r.enriched_text)


def _read_chunks(session: Session, chunk_ids: set[str]) -> list[ChunkDoc]:
    """Those of ``chunk_ids`` that still exist, with their project."""
    sql = _CHUNKS
    found: list[ChunkDoc] = []
    ordered = sorted(chunk_ids)
    for start in range(0, len(ordered), 500):
        batch = ordered[start : start + 500]
        params = {f"c{i}": c for i, c in enumerate(batch)}
        where = " WHERE c.id IN (" + ", ".join(f":c{i}" for i in range(len(batch))) + ")"
        found.extend(ChunkDoc(r.id, r.project_id, r.enriched_text) for r in session.execute(text(sql + where), params))
    return found


# One index per Metadata DB per process ------------------------------------------------------
_indexes: OrderedDict[str, KeywordIndex] = OrderedDict()
_indexes_lock = threading.Lock()
_KEEP = 8  # databases a process keeps an index for (tests open many)


def keyword_index_for(session: Session) -> KeywordIndex:
    url = session.get_bind().engine.url.render_as_string(hide_password=False)
    with _indexes_lock:
        index = _indexes.pop(url, None) or KeywordIndex()
        _indexes[url] = index
        while len(_indexes) > _KEEP:
            _indexes.popitem(last=False)
        return index
