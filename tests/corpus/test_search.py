from typing import Any

import pytest
from sqlalchemy import update

from opslib.corpus import search as search_module
from opslib.corpus.ingest import ChunkIn, IngestError, VideoIn, ingest_videos
from opslib.corpus.search import (
    KEYWORD_K,
    TOP_K,
    VECTOR_K,
    SearchError,
    keyword_search,
    reciprocal_rank_fusion,
    search,
)
from opslib.db.models import (
    Chunk,
    ModelRelease,
    SearchResponseSnapshot,
    ServingState,
    Video,
    VideoStatus,
)
from opslib.infra.embedding import Purpose
from opslib.infra.keyword_index import query_words
from opslib.infra.vector_store import VectorHit
from opslib.infra.workspace import Workspace

TEXTS = {
    "cooking": [
        "how to boil pasta in salted water",
        "slicing onions without tears",
        "baking sourdough bread at home",
        "a sharp knife makes slicing safer",
        "roasting vegetables in the oven",
    ],
    "coding": [
        "sorting a python list with sorted",
        "reading files line by line in python",
        "writing unit tests with pytest",
        "profiling slow python code",
        "packaging a python project",
    ],
}


def _load(ws: Workspace) -> None:
    videos = [
        VideoIn(
            video_id=f"{project}-v{i}",
            user_id="owner",
            project_id=project,
            title=f"{project} {i}",
            chunks=[ChunkIn(text=text, start_ms=0, end_ms=1000)],
        )
        for project, texts in TEXTS.items()
        for i, text in enumerate(texts)
    ]
    ingest_videos(ws, videos)


def test_rrf_scores_and_order() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert [d for d, _ in fused] == ["a", "c", "b"]
    assert reciprocal_rank_fusion([["y", "x"], ["x", "y"]]) == [("x", 1 / 61 + 1 / 62), ("y", 1 / 61 + 1 / 62)]


def test_search_returns_top5_of_the_project_and_stores_a_snapshot(ws: Workspace) -> None:
    _load(ws)
    response = search(
        ws, "python list sorting", project_id="coding", user_id="u1", choose_used=lambda hits: [hits[0].ref]
    )
    assert 1 <= len(response.chunks) <= 5
    assert all(c.ref.startswith("coding") for c in response.chunks)
    assert response.chunks[0].ref == "coding-v0#0000"  # keyword and vector both rank it first
    assert response.used_ids == ["coding-v0#0000"] and response.chunks[0].used
    assert (response.active_model_version, response.active_index_name) == ("tiny-base", "idx-tiny-base")
    with ws.db.read() as session:
        snap = session.get(SearchResponseSnapshot, response.req_id)
        assert snap is not None
        assert snap.topk_ids == response.refs and snap.used_ids == ["coding-v0#0000"]
        assert (snap.active_model_version, snap.active_index_name) == ("tiny-base", "idx-tiny-base")
        assert (snap.expires_at - snap.created_at).days == ws.settings.snapshot_ttl_days


def test_sot_gate_hides_excluded_unready_and_deleted(ws: Workspace) -> None:
    _load(ws)
    with ws.db.transaction() as session:
        session.execute(
            update(Video).where(Video.id == "coding-v0").values(search_serving_state=ServingState.ROLLBACK_EXCLUDED)
        )
        session.execute(update(Video).where(Video.id == "coding-v1").values(status=VideoStatus.DELETING))
        session.delete(session.get(Chunk, "coding-v2#0000"))
    for query in ("sorting a python list", "reading files line by line", "writing unit tests with pytest"):
        refs = search(ws, query, project_id="coding", user_id="u").refs
        assert not {"coding-v0#0000", "coding-v1#0000", "coding-v2#0000"} & set(refs)
        assert refs  # the rest is still served


def test_used_must_be_among_the_results(ws: Workspace) -> None:
    _load(ws)
    with pytest.raises(SearchError, match="used_ids"):
        search(ws, "pasta", project_id="cooking", user_id="u", choose_used=lambda hits: ["coding-v0#0000"])
    with ws.db.read() as session:
        assert session.query(SearchResponseSnapshot).count() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query_text": " "}, "query_text"),
        ({"project_id": ""}, "project_id"),
        ({"user_id": ""}, "user_id"),
        ({"query_text": "x" * 2001}, "query_text"),
    ],
)
def test_bad_requests_are_refused(ws: Workspace, kwargs: dict, field: str) -> None:
    args = {"query_text": "pasta", "project_id": "cooking", "user_id": "u", **kwargs}
    query = args.pop("query_text")
    with pytest.raises(SearchError, match=field):
        search(ws, query, **args)


def test_search_follows_the_release_row(ws: Workspace) -> None:
    _load(ws)
    with ws.db.transaction() as session:
        release = session.query(ModelRelease).one()
        release.active_index_name = "idx-not-there"
    with pytest.raises(Exception, match="idx-not-there"):
        search(ws, "pasta", project_id="cooking", user_id="u")


def test_korean_words_are_found_inside_longer_eojeol(ws: Workspace) -> None:
    ingest_videos(
        ws,
        [
            VideoIn(
                video_id="ko-v1",
                user_id="owner",
                project_id="ko",
                title="검색 강의",
                chunks=[
                    ChunkIn(text="오늘은 검색엔진에서 색인을 만드는 방법을 배웁니다", start_ms=0, end_ms=1000),
                    ChunkIn(text="데이터베이스의 트랜잭션은 원자적입니다", start_ms=1000, end_ms=2000),
                    ChunkIn(text="임베딩모델을 미세조정하면 품질이 좋아집니다", start_ms=2000, end_ms=3000),
                ],
            ),
        ],
    )
    with ws.db.read() as session:
        assert keyword_search(session, "검색", "ko") == ["ko-v1#0000"]  # 2 syllables inside 검색엔진에서
        assert keyword_search(session, "엔진", "ko") == ["ko-v1#0000"]  # in the middle of the eojeol
        assert keyword_search(session, "트랜잭션", "ko") == ["ko-v1#0001"]  # before the particle 은
        assert keyword_search(session, "미세조정", "ko") == ["ko-v1#0002"]
        assert keyword_search(session, "검색", "other-project") == []
    assert search(ws, "미세조정", project_id="ko", user_id="u").refs[0] == "ko-v1#0002"


def test_keyword_search_ranks_and_limits(ws: Workspace) -> None:
    _load(ws)
    with ws.db.read() as session:
        assert keyword_search(session, "python", "coding")[:1] != []
        assert set(keyword_search(session, "python", "coding")) == {
            "coding-v0#0000",
            "coding-v1#0000",
            "coding-v3#0000",
            "coding-v4#0000",
        }
        assert keyword_search(session, "!!! ??", "coding") == []
        assert len(keyword_search(session, "a e i o u python", "coding")) <= KEYWORD_K
    assert query_words("Sort a LIST, sort it!") == ["sort", "list", "it"]


def test_ingest_refuses_bad_videos_and_keeps_nothing(ws: Workspace) -> None:
    good = VideoIn(
        video_id="v-ok", user_id="u", project_id="p", title="t", chunks=[ChunkIn(text="fine", start_ms=0, end_ms=10)]
    )
    bad_cases = [
        (VideoIn(video_id="bad id!", user_id="u", project_id="p", title="t", chunks=good.chunks), "video_id"),
        (VideoIn(video_id="v2", user_id="u", project_id="p", title="t", chunks=[]), "no chunks"),
        (
            VideoIn(
                video_id="v2", user_id="u", project_id="p", title="t", chunks=[ChunkIn(text="x", start_ms=10, end_ms=5)]
            ),
            "start_ms",
        ),
        (
            VideoIn(
                video_id="v2", user_id="u", project_id="p", title="t", chunks=[ChunkIn(text="  ", start_ms=0, end_ms=5)]
            ),
            "text",
        ),
        (VideoIn(video_id="v2", user_id="u", project_id="p", title=" ", chunks=good.chunks), "title"),
    ]
    for video, message in bad_cases:
        with pytest.raises(IngestError, match=message):
            ingest_videos(ws, [good, video])
    with ws.db.read() as session:
        assert session.query(Video).count() == 0 and session.query(Chunk).count() == 0
    ingest_videos(ws, [good])
    with pytest.raises(IngestError, match="already exists"):
        ingest_videos(ws, [good])


def test_failed_indexing_leaves_the_video_failed_not_ready(ws: Workspace, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("embedding endpoint down")

    monkeypatch.setattr(ws.embeddings, "embed", broken)
    with pytest.raises(RuntimeError, match="endpoint down"):
        ingest_videos(
            ws,
            [
                VideoIn(
                    video_id="v-f",
                    user_id="u",
                    project_id="p",
                    title="t",
                    chunks=[ChunkIn(text="words", start_ms=0, end_ms=10)],
                )
            ],
        )
    with ws.db.read() as session:
        video = session.get(Video, "v-f")
        assert video.status is VideoStatus.FAILED and video.failed_stage == "INDEXING"


# Limits on a project with many more matches than the candidate lists hold ----------------------
BIG_CHUNKS = 60
TOPICS = ["gears", "springs", "levers", "pulleys", "bolts", "hinges"]


def _big(i: int) -> str:
    return f"big-v{i:02d}#0000"


def _load_big(ws: Workspace) -> None:
    """60 one-chunk videos of project ``big``, every chunk containing the word "widget"."""
    ingest_videos(
        ws,
        [
            VideoIn(
                video_id=f"big-v{i:02d}",
                user_id="owner",
                project_id="big",
                title=f"part {i}",
                chunks=[
                    ChunkIn(
                        text=f"{' '.join(['widget'] * (1 + i % 3))} with {TOPICS[i % len(TOPICS)]}, note {i}",
                        start_ms=0,
                        end_ms=1000,
                    )
                ],
            )
            for i in range(BIG_CHUNKS)
        ],
    )


class _Spy:
    """What ``search`` passed between its steps: the keyword and vector candidate lists (and the
    ``n_results`` asked of the vector store) and the fused ranking before the SOT gate."""

    def __init__(self, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keyword: list[str] = []
        self.vector: list[str] = []
        self.vector_k: int | None = None
        self.fused: list[tuple[str, float]] = []
        real_keyword, real_query, real_fusion = (
            search_module.keyword_search,
            ws.vectors.query_within,
            reciprocal_rank_fusion,
        )

        def keyword(*args: Any, **kwargs: Any) -> list[str]:
            self.keyword = real_keyword(*args, **kwargs)
            return self.keyword

        def query(index_name: str, embedding: Any, n_results: int, key: str, value: str) -> list[VectorHit]:
            hits = real_query(index_name, embedding, n_results, key, value)
            self.vector, self.vector_k = [h.chunk_id for h in hits], n_results
            return hits

        def fusion(*args: Any, **kwargs: Any) -> list[tuple[str, float]]:
            self.fused = real_fusion(*args, **kwargs)
            return self.fused

        monkeypatch.setattr(search_module, "keyword_search", keyword)
        monkeypatch.setattr(ws.vectors, "query_within", query)
        monkeypatch.setattr(search_module, "reciprocal_rank_fusion", fusion)


def test_candidate_lists_are_capped_at_20_and_the_response_at_5(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_big(ws)
    # Without the caps there would be 60 of each: every chunk matches the word and the project.
    with ws.db.read() as session:
        assert len(keyword_search(session, "widget", "big", k=100)) == BIG_CHUNKS
    vector = ws.embeddings.embed(["widget"], "tiny-base", Purpose.SEARCH)[0]
    assert len(ws.vectors.query("idx-tiny-base", vector, 100, where={"project_id": "big"})) == BIG_CHUNKS
    spy = _Spy(ws, monkeypatch)
    response = search(ws, "widget", project_id="big", user_id="u")
    assert len(spy.keyword) == KEYWORD_K == 20
    assert spy.vector_k == VECTOR_K == 20 and len(spy.vector) == 20
    assert len(response.chunks) == TOP_K == 5
    # The fused list is RRF (k=60) over exactly those two capped lists, and the response its head.
    expected = {
        doc: sum(1 / (60 + ranking.index(doc) + 1) for ranking in (spy.keyword, spy.vector) if doc in ranking)
        for doc in set(spy.keyword) | set(spy.vector)
    }
    assert dict(spy.fused) == pytest.approx(expected)
    assert response.refs == [doc for doc, _ in spy.fused[:5]]
    assert [c.score for c in response.chunks] == pytest.approx([expected[r] for r in response.refs])
    with ws.db.read() as session:
        assert session.get(SearchResponseSnapshot, response.req_id).topk_ids == response.refs


def test_rrf_with_k_60_orders_a_hand_checked_case(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """keyword [A B C D E F], vector [G D C H] (A..H = chunks 1..8):
    D = 1/64 + 1/62 = 0.031754 > C = 2/63 = 0.031746 > A = G = 1/61 (tie: by id, A first)
    > B = 1/62 > H = 1/64 > E > F. (With k=0, A and G — first in one list only — would lead.)"""
    _load_big(ws)
    a, b, c, d, e, f, g, h = (_big(i) for i in range(1, 9))
    monkeypatch.setattr(search_module, "keyword_search", lambda *args, **kwargs: [a, b, c, d, e, f])
    monkeypatch.setattr(ws.vectors, "query_within", lambda *args, **kwargs: [VectorHit(x, 0.1) for x in (g, d, c, h)])
    response = search(ws, "widget", project_id="big", user_id="u")
    assert response.refs == [d, c, a, g, b]
    assert [hit.score for hit in response.chunks] == pytest.approx([1 / 64 + 1 / 62, 2 / 63, 1 / 61, 1 / 61, 1 / 62])
    assert 1 / 64 + 1 / 62 > 2 / 63  # D before C is real, not a tie


def test_the_sot_gate_runs_before_the_top5_cut(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/architecture.md, "SOT gate before the top-5 cut": chunks of a ROLLBACK_EXCLUDED or a
    not-READY video ranked inside the top 5 are dropped, and the 6th and 7th candidates move up."""
    _load_big(ws)
    spy = _Spy(ws, monkeypatch)
    before = search(ws, "widget", project_id="big", user_id="u").refs
    fused = [doc for doc, _ in spy.fused]
    assert before == fused[:5]
    excluded, unready = fused[1], fused[3]  # both inside the top 5 before the gate
    with ws.db.transaction() as session:
        session.execute(
            update(Video)
            .where(Video.id == excluded.split("#")[0])
            .values(search_serving_state=ServingState.ROLLBACK_EXCLUDED)
        )
        session.execute(update(Video).where(Video.id == unready.split("#")[0]).values(status=VideoStatus.PROCESSING))
    response = search(ws, "widget", project_id="big", user_id="u")
    assert [doc for doc, _ in spy.fused] == fused  # the same candidates, ranked the same
    assert response.refs == [fused[0], fused[2], fused[4], fused[5], fused[6]]
    assert len(response.chunks) == 5
    with ws.db.read() as session:
        assert session.get(SearchResponseSnapshot, response.req_id).topk_ids == response.refs
