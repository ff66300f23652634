"""The in-memory keyword index (opslib/infra/keyword_index.py): its ranking is exactly BM25 with
substring matching as documented, computed here a second, naive way over the database's current
chunks; and it follows every way the chunks change — other connections, deletes by cascade,
re-texting, many small writes, PostgreSQL transactions committing out of order, a re-created
database."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, delete, text, update
from sqlalchemy.orm import Session

from opslib.db.engine import Database, database_for, forget_database
from opslib.db.migrate import upgrade
from opslib.db.models import Chunk, Video, VideoStatus
from opslib.infra import keyword_index as kw
from opslib.infra.keyword_index import KeywordIndex, keyword_index_for, query_words
from opslib.infra.workspace import Workspace

WORDS = ["검색엔진에서", "검색", "색인", "python", "pythonic", "sorted", "sort", "list", "lists", "a", "on", "onion"]
WORDS += [f"w{i}" for i in range(40)]


@pytest.fixture
def db(empty_ws: Workspace) -> Iterator[Database]:
    upgrade(empty_ws.db)
    yield empty_ws.db


def _add(db: Database, video: str, project: str, texts: list[str]) -> None:
    with db.transaction() as session:
        session.add(Video(id=video, user_id="u", project_id=project, title=video, status=VideoStatus.READY))
        session.flush()
        for i, body in enumerate(texts):
            session.add(
                Chunk(
                    id=f"{video}#{i:04d}",
                    video_id=video,
                    start_ms=i,
                    end_ms=i + 1,
                    text=body,
                    enriched_text=body,
                    chunking_version="t",
                )
            )


def _reference(session: Session, query: str, project: str, k: int) -> list[tuple[str, float]]:
    """BM25 as docs/serving.md words it, the slow way: every chunk, every word."""
    rows = session.execute(
        text("SELECT c.id, c.enriched_text, v.project_id FROM chunks c JOIN videos v ON v.id = c.video_id")
    ).all()
    words = {r.id: [w.lower() for w in kw.WORD.findall(r.enriched_text)] for r in rows}
    n = len(rows)
    average = sum(len(w) for w in words.values()) / n
    scores = dict.fromkeys(words, 0.0)
    for q in query_words(query):
        tf = {c: sum(1 for w in ws if q in w and len(w) >= 2) for c, ws in words.items()}
        df = sum(1 for v in tf.values() if v)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for c, f in tf.items():
            if f:
                scores[c] += idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len(words[c]) / average))
    projects = {r.id: r.project_id for r in rows}
    ranked = sorted(
        ((c, s) for c, s in scores.items() if s > 0 and projects[c] == project), key=lambda x: (-x[1], x[0])
    )
    return ranked[:k]


def _assert_exact(db: Database, query: str, project: str, k: int = 20, index: KeywordIndex | None = None) -> list[str]:
    with db.read() as session:
        got = (index or keyword_index_for(session)).search(session, query, project, k)
        expected = _reference(session, query, project, k)
        everything = dict(_reference(session, query, project, 10_000))
    assert len(got) == len(expected), (query, got, expected)
    for position, (chunk_id, score) in enumerate(expected):
        # the same chunk, or one with the same score (float rounding may order exact ties differently)
        assert got[position] == chunk_id or everything.get(got[position]) == pytest.approx(score, rel=1e-6), (
            query,
            position,
            got,
            expected,
        )
    return got


def _random_texts(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(count)]


def test_the_ranking_is_exactly_bm25_over_substring_matches_as_the_index_follows_writes(db: Database) -> None:
    rng = random.Random(14)
    for v in range(6):
        _add(db, f"v{v}", "p" if v % 3 else "q", _random_texts(rng, 15))
    queries = ["검색", "색인 python", "sort", "on list", "w1", "w3 w7 onion", "pythonic lists", "zzz", "a"]
    for query in queries:
        _assert_exact(db, query, "p")
    # many small writes (new segments, merges), deletes by cascade, a re-texted chunk
    for v in range(6, 20):
        _add(db, f"v{v}", "p", _random_texts(rng, rng.randint(1, 3)))
    with db.transaction() as session:
        session.execute(delete(Video).where(Video.id.in_(["v1", "v7"])))
        session.execute(update(Chunk).where(Chunk.id == "v2#0003").values(enriched_text="검색 검색 색인 w39"))
    for query in queries:
        _assert_exact(db, query, "p")
    with db.read() as session:
        assert "v2#0003" in keyword_index_for(session).search(session, "검색 w39", "p", 100)
        assert not any(
            c.startswith(("v1#", "v7#")) for c in keyword_index_for(session).search(session, "w1 w2", "p", 500)
        )


def test_words_are_found_inside_longer_words_and_short_or_empty_queries_find_nothing(db: Database) -> None:
    _add(db, "ko", "ko", ["오늘은 검색엔진에서 색인을 만듭니다", "트랜잭션은 원자적입니다"])
    with db.read() as session:
        index = keyword_index_for(session)
        assert index.search(session, "검색", "ko", 20) == ["ko#0000"]
        assert index.search(session, "엔진", "ko", 20) == ["ko#0000"]
        assert index.search(session, "트랜잭션", "ko", 20) == ["ko#0001"]
        assert index.search(session, "!!! ? a", "ko", 20) == []  # no word of two characters or more
        assert index.search(session, "검색", "other", 20) == []


def test_writes_through_another_connection_are_seen_by_the_next_search(db: Database) -> None:
    _add(db, "v0", "p", ["alpha beta"])
    with db.read() as session:
        assert keyword_index_for(session).search(session, "gamma", "p", 20) == []
    other = Database(db.url)  # its own engine and pool, as another process would have
    try:
        _add(other, "v1", "p", ["gamma delta"])
    finally:
        other.dispose()
    with db.read() as session:
        assert keyword_index_for(session).search(session, "gamma", "p", 20) == ["v1#0000"]


def test_a_recreated_database_is_indexed_anew(db: Database, empty_ws: Workspace) -> None:
    _add(db, "v0", "p", ["old words here"])
    with db.read() as session:
        assert keyword_index_for(session).search(session, "old", "p", 20) == ["v0#0000"]
    with db.transaction() as session:  # same URL, a new database: new identity, a log started anew
        session.execute(text("DELETE FROM chunks"))
        session.execute(text("DELETE FROM chunk_changes"))
        session.execute(text("UPDATE database_identity SET identity = 'another'"))
    _add(db, "v9", "p", ["new words here"])
    with db.read() as session:
        assert keyword_index_for(session).search(session, "words", "p", 20) == ["v9#0000"]


def test_postgresql_writes_committing_out_of_order_are_not_missed(db: Database) -> None:
    """Writer A takes the lower sequence number but commits after writer B; a search in between
    applies B's row. A's row must still be applied once A commits (a reader that only followed
    sequence numbers would have skipped it)."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite serialises writers: sequence numbers commit in order")
    _add(db, "va", "p", [])
    _add(db, "vb", "p", [])
    engine = create_engine(db.engine.url)
    try:
        with engine.connect() as a, engine.connect() as b:
            insert = "INSERT INTO chunks (id, video_id, start_ms, end_ms, text, enriched_text, chunking_version, created_at) "
            a.execute(text(insert + "VALUES ('va#0', 'va', 0, 1, 'x', 'late writer', 't', now())"))
            b.execute(text(insert + "VALUES ('vb#0', 'vb', 0, 1, 'x', 'early writer', 't', now())"))
            b.commit()
            with db.read() as session:
                assert keyword_index_for(session).search(session, "writer", "p", 20) == ["vb#0"]
            a.commit()
        with db.read() as session:
            assert sorted(keyword_index_for(session).search(session, "writer", "p", 20)) == ["va#0", "vb#0"]
    finally:
        engine.dispose()


def test_segments_are_merged_and_the_ranking_does_not_change(db: Database) -> None:
    rng = random.Random(3)
    _add(db, "base", "p", _random_texts(rng, 40))
    with db.read() as session:
        index = keyword_index_for(session)
        index.search(session, "sort", "p", 20)
    for v in range(kw.MERGE_SEGMENTS + 3):  # one small segment per write
        _add(db, f"s{v}", "p", _random_texts(rng, 1))
        _assert_exact(db, "sort list w5", "p")
    assert len(index.segments) <= kw.MERGE_SEGMENTS + 1
    _assert_exact(db, "python on", "p", k=100)


def test_one_index_per_database_per_process(db: Database) -> None:
    _add(db, "v0", "p", ["alpha beta"])
    with db.read() as first, db.read() as second:
        index = keyword_index_for(first)
        assert index is keyword_index_for(second)
        assert index.search(first, "alpha", "p", 20) == ["v0#0000"]
    forget_database(db.url)  # a fresh engine for the same URL finds the same index (caught up by identity)
    with database_for(db.url).read() as session:
        assert keyword_index_for(session) is index
        assert index.search(session, "alpha", "p", 20) == ["v0#0000"]


def test_an_index_built_in_batches_ranks_as_one_built_at_once(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    for v in range(4):
        _add(db, f"v{v}", "p", _random_texts(rng, 10))
    monkeypatch.setattr(kw, "REBUILD_BATCH", 7)  # 40 chunks: six batches, merged into one segment
    fresh = KeywordIndex()
    for query in ("검색 sort", "w2 onion", "list"):
        _assert_exact(db, query, "p", index=fresh)
    assert len(fresh.segments) == 1
