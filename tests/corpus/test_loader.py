from pathlib import Path

import pytest
from helpers import write_beir

from opslib.corpus.beir import read_beir
from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.indexing import indexed_chunk_ids
from opslib.corpus.loader import CorpusError, is_reserved, load_corpus, read_queries
from opslib.db.models import Chunk, CorpusImport, Video, VideoStatus
from opslib.infra.workspace import Workspace


def test_beir_import_groups_deterministically_and_splits_queries(ws: Workspace, tmp_path: Path) -> None:
    spec = read_beir(write_beir(tmp_path / "mini"), "mini")
    report = load_corpus(ws, spec, reserve_fraction=0.3, seed=1)
    assert (report.chunks, report.projects, report.dropped_queries) == (24, 2, 1)
    assert report.project_ids == ["mini-alpha", "mini-beta"]
    with ws.db.read() as session:
        videos = {v.id: v for v in session.query(Video)}
        assert set(videos) == {
            "mini:alpha/alpha-part0",
            "mini:alpha/alpha-part1",
            "mini:alpha/alpha-part2",
            "mini:beta/beta-part0",
            "mini:beta/beta-part1",
            "mini:beta/beta-part2",
        }
        assert all(v.status is VideoStatus.READY for v in videos.values())
        chunk = session.get(Chunk, "mini:q05-a1")
        assert chunk.video_id == "mini:beta/beta-part1" and chunk.text == "answer 1 to topic 5 explained"
        assert session.get(CorpusImport, "mini").reserved_query_count == report.reserved_queries
    assert len(indexed_chunk_ids(ws, "idx-tiny-base")) == 24
    traffic = list(read_queries(ws, "mini", "traffic"))
    reserved = list(read_queries(ws, "mini", "reserved"))
    assert len(traffic) + len(reserved) == 12
    assert not {q.query_id for q in traffic} & {q.query_id for q in reserved}
    assert all(is_reserved(q.query_id, 1, 0.3) for q in reserved)
    q = next(r for r in traffic + reserved if r.query_id == "q05")
    assert (q.project_id, q.expected_results) == ("mini-beta", ("mini:q05-a0", "mini:q05-a1"))


def test_the_split_does_not_depend_on_order_or_corpus() -> None:
    ids = [f"q{i}" for i in range(2000)]
    reserved = [i for i in ids if is_reserved(i, 0, 0.3)]
    assert 0.25 < len(reserved) / len(ids) < 0.35
    assert reserved == [i for i in reversed(ids) if is_reserved(i, 0, 0.3)][::-1]
    assert reserved != [i for i in ids if is_reserved(i, 1, 0.3)]


def test_korean_keys_keep_videos_and_projects_apart(ws: Workspace, tmp_path: Path) -> None:
    from opslib.corpus.loader import CorpusSpec, Document

    docs = [
        Document("d1", "검색 품질 개선 방법", project_key="강의", video_key="첫 번째 영상"),
        Document("d2", "피드백으로 모델 학습", project_key="강의", video_key="두 번째 영상"),
        Document("d3", "다른 프로젝트의 자막", project_key="세미나", video_key="첫 번째 영상"),
    ]
    report = load_corpus(ws, CorpusSpec(name="kor", source="tests", documents=docs, queries=[]))
    assert report.videos == 3 and report.projects == 2
    with ws.db.read() as session:
        titles = {v.title for v in session.query(Video)}
    assert titles == {"첫 번째 영상", "두 번째 영상"}  # titles are kept as written


def test_a_bad_video_late_in_the_corpus_writes_nothing(ws: Workspace) -> None:
    from opslib.corpus.ingest import IngestError
    from opslib.corpus.loader import CorpusSpec, Document

    docs = [Document(f"d{i}", f"passage {i}", project_key="p", video_key=f"v{i}") for i in range(60)]
    docs.append(Document("late", "passage", project_key="p", video_key="x" * 600))  # title too long
    with pytest.raises(IngestError, match="title is 600 characters"):
        load_corpus(ws, CorpusSpec(name="bad", source="tests", documents=docs, queries=[]), batch_videos=5)
    with ws.db.read() as session:
        assert session.query(Video).count() == 0 and session.query(Chunk).count() == 0
    assert indexed_chunk_ids(ws, "idx-tiny-base") == set()


def test_bad_arguments_are_named(ws: Workspace, tmp_path: Path) -> None:
    spec = read_beir(write_beir(tmp_path / "mini"), "mini")
    with pytest.raises(CorpusError, match=r"reserve_fraction 1\.5: must be in"):
        load_corpus(ws, spec, reserve_fraction=1.5)
    with pytest.raises(CorpusError, match="kind 'all': must be 'traffic' or 'reserved'"):
        list(read_queries(ws, "mini", "all"))
    with pytest.raises(CorpusError, match="corpus 'nope': not imported"):
        list(read_queries(ws, "nope", "traffic"))


def test_importing_twice_is_refused(ws: Workspace, tmp_path: Path) -> None:
    spec = read_beir(write_beir(tmp_path / "mini"), "mini")
    load_corpus(ws, spec)
    with pytest.raises(CorpusError, match="already imported"):
        load_corpus(ws, spec)


def test_an_interrupted_import_resumes(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import opslib.corpus.loader as corpus_module

    spec = read_beir(write_beir(tmp_path / "mini"), "mini")
    real = corpus_module.ingest_videos
    calls = {"n": 0}

    def flaky(ws_, batch, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-import")
        return real(ws_, batch, **kwargs)

    monkeypatch.setattr(corpus_module, "ingest_videos", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        load_corpus(ws, spec, batch_videos=2)
    monkeypatch.setattr(corpus_module, "ingest_videos", real)
    report = load_corpus(ws, spec, batch_videos=2)
    assert report.skipped_videos == 2 and report.chunks == 24
    with ws.db.read() as session:
        assert session.query(Chunk).count() == 24
        assert {v.status for v in session.query(Video)} == {VideoStatus.READY}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "qrels.tsv").unlink(), "qrels.tsv: missing"),
        (
            lambda d: (d / "corpus.jsonl").write_text('{"_id": "x", "text": "ok"}\nnot json\n'),
            "corpus.jsonl:2: not JSON",
        ),
        (lambda d: (d / "corpus.jsonl").write_text('{"text": "no id"}\n'), "needs a string '_id'"),
        (lambda d: (d / "qrels.tsv").write_text("q\tc\n"), "expected query-id, corpus-id, score"),
        (lambda d: (d / "qrels.tsv").write_text("q\tc\thigh\n"), "is not a number"),
    ],
)
def test_bad_beir_folders_are_clear_errors(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = write_beir(tmp_path / "bad")
    mutate(folder)
    with pytest.raises(CorpusError, match=message):
        read_beir(folder, "bad")


def test_bad_corpus_names_are_refused(ws: Workspace, tmp_path: Path) -> None:
    spec = read_beir(write_beir(tmp_path / "mini"), "Bad Name")
    with pytest.raises(CorpusError, match="name"):
        load_corpus(ws, spec)
    with ws.db.read() as session:
        assert session.query(Video).count() == 0


def test_builtin_corpus_is_honest() -> None:
    spec = build_demo_corpus()
    assert len(spec.queries) > 300 and len(spec.documents) > 500
    text_of = {d.doc_id: d.text for d in spec.documents}
    for query in spec.queries:
        assert query.relevant_doc_ids
        # The query is the docstring's first sentence; its passages are the *rest*.
        assert all(query.text not in text_of[d] for d in query.relevant_doc_ids)
    assert {d.project_key for d in spec.documents} == {"text", "data", "system", "web"}
    assert build_demo_corpus().documents == spec.documents  # deterministic
