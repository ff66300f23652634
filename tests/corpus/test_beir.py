"""Writing a corpus as a BEIR folder: read back, it imports as the same corpus."""

from pathlib import Path

import pytest
from helpers import mini_corpus_spec

from opslib.corpus.beir import export_beir, read_beir
from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.loader import CorpusError, CorpusSpec, build_query_records, build_videos


def _as_imported(spec: CorpusSpec) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """What an import of ``spec`` stores: each chunk with its text, video and project; each query
    with its project and expected chunks (chunk order inside a video aside)."""
    chunks = {
        (chunk.chunk_id, chunk.text, chunk.enriched_text, video.video_id, video.project_id, video.title)
        for video in build_videos(spec)
        for chunk in video.chunks
    }
    records, _dropped = build_query_records(spec)
    queries = {(r.query_id, r.query_text, r.project_id, *sorted(r.expected_results)) for r in records}
    return chunks, queries


@pytest.mark.parametrize("make", [mini_corpus_spec, lambda: build_demo_corpus(max_per_module=3)])
def test_an_exported_corpus_reads_back_as_the_same_corpus(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = make()
    export = export_beir(spec, tmp_path / "bench")
    assert (export.documents, export.queries) == (len(spec.documents), len(spec.queries))
    assert export.judgments == sum(len(q.relevant_doc_ids) for q in spec.queries)
    back = read_beir(tmp_path / "bench", spec.name)
    assert _as_imported(back) == _as_imported(spec)
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["corpus.jsonl", "qrels.tsv", "queries.jsonl"]


def test_export_refuses_a_folder_that_already_holds_a_benchmark(tmp_path: Path) -> None:
    export_beir(mini_corpus_spec(), tmp_path / "bench")
    before = (tmp_path / "bench" / "corpus.jsonl").read_bytes()
    with pytest.raises(CorpusError, match=r"already holds corpus\.jsonl, queries\.jsonl, qrels\.tsv"):
        export_beir(build_demo_corpus(max_per_module=1), tmp_path / "bench")
    assert (tmp_path / "bench" / "corpus.jsonl").read_bytes() == before
