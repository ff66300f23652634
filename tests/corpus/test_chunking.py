"""Re-chunking to a model's token budget: no text lost or repeated, no piece over the budget
(English, Hangul with and without spaces, CJK), judgments follow the pieces, every chunk records
its chunking_version, and bad budgets are refused naming the option."""

import itertools
from pathlib import Path
from typing import Any

import pytest
from helpers import mini_corpus_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from opslib.corpus.beir import export_beir
from opslib.corpus.chunking import (
    MIN_PIECE_TOKENS,
    ChunkingError,
    Piece,
    TokenBudget,
    chunking_version_for,
    model_budget,
    rechunk,
    split_passage,
    token_budget,
)
from opslib.corpus.loader import (
    CorpusError,
    CorpusSpec,
    Document,
    Query,
    build_query_records,
    load_corpus,
    read_queries,
)
from opslib.db.models import Chunk
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import read_evaluation_set, records_from_corpus, register_evaluation_set
from opslib.ops.cli import main
from opslib.settings import Settings

ENGLISH = (
    "The index keeps one vector per chunk. A chunk longer than the model reads is cut when it is embedded, "
    "and the words after the cut are never seen by search.\n\nSplitting long passages keeps every word "
    "visible; the pieces are searched like any chunk! Does it work? It does, as the tests show. "
) * 3
HANGUL = (
    "리브레오피스 도움말은 문서 편집기의 기능을 설명합니다. 데비안 자주 묻는 질문은 설치와 패키지 관리를 다룹니다. "
    "한국어 음절은 이 토크나이저에서 자모로 나뉘어 음절마다 토큰이 세 개쯤 됩니다.\n"
) * 3
HANGUL_WITHOUT_SPACES = "검색품질개선방법피드백으로모델학습" * 2 + "." + "데비안패키지관리자주묻는질문" * 2
CJK = "模型只读取前二百五十六个词元。超过部分在嵌入时被截断，搜索永远看不到。" * 6


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from opslib.infra.offline import use_offline_environment

    use_offline_environment()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _budget(tokenizer: Any, tokens: int) -> TokenBudget:
    return token_budget(tokenizer, 128, "tiny-base", tokens)


def _assert_partition(passage: str, pieces: list[Piece]) -> None:
    """The pieces are the passage in order, with nothing but whitespace between them."""
    assert pieces and all(p.text and p.text == passage[p.start : p.end] for p in pieces)
    bounds = [0, *(x for p in pieces for x in (p.start, p.end)), len(passage)]
    gaps = [passage[a:b] for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    assert all(not gap.strip() for gap in gaps)
    assert "".join(g + p.text for g, p in zip(gaps, pieces, strict=False)) + gaps[-1] == passage


@pytest.mark.parametrize("passage", [ENGLISH, HANGUL, HANGUL_WITHOUT_SPACES, CJK], ids=["en", "ko", "ko-nospace", "zh"])
@pytest.mark.parametrize("tokens", [MIN_PIECE_TOKENS, 40, 126])
def test_pieces_join_back_to_the_passage_and_none_exceeds_the_budget(tokenizer: Any, passage: str, tokens: int) -> None:
    budget = _budget(tokenizer, tokens)
    pieces = split_passage(passage, budget.token_starts(passage), budget=tokens, limit=tokens, measure=budget.count)
    _assert_partition(passage, pieces)
    assert all(budget.count(p.text) == p.tokens <= tokens for p in pieces)
    if budget.count(passage) > tokens:
        assert len(pieces) > 1
    else:
        assert [p.text for p in pieces] == [passage.strip()]


def test_cuts_prefer_paragraphs_then_sentences_over_words(tokenizer: Any) -> None:
    budget = _budget(tokenizer, 40)
    pieces = split_passage(ENGLISH, budget.token_starts(ENGLISH), budget=40, limit=40, measure=budget.count)
    assert all(p.text.endswith((".", "!", "?")) for p in pieces)  # every cut after a sentence's end
    wide = _budget(tokenizer, 126)  # a Hangul sentence here is 60-100 tokens
    hangul = split_passage(HANGUL, wide.token_starts(HANGUL), budget=126, limit=126, measure=wide.count)
    assert len(hangul) > 1 and all(p.text.endswith("다.") for p in hangul)


def test_a_word_longer_than_the_budget_is_cut_between_tokens_and_still_fits(tokenizer: Any) -> None:
    """A Hangul run without spaces: ~3 tokens a syllable; cut inside it, the second half starts
    without '##' and tokenizes differently — each piece is measured again, not assumed to fit."""
    word = "검색품질개선방법피드백으로모델학습"  # 17 syllables, one word
    budget = _budget(tokenizer, MIN_PIECE_TOKENS)
    assert budget.count(word) > MIN_PIECE_TOKENS
    pieces = split_passage(word, budget.token_starts(word), budget=16, limit=16, measure=budget.count)
    assert "".join(p.text for p in pieces) == word and len(pieces) > 1
    assert all(budget.count(p.text) <= MIN_PIECE_TOKENS for p in pieces)


def test_a_piece_that_measures_more_than_its_token_starts_say_is_cut_shorter() -> None:
    """Token starts are of the whole passage; what counts is the piece as embedded. Here a piece
    measures one more per long word than its starts count (as a cut word re-tokenizes longer)."""
    passage = " ".join(["alpha", "betagamma", "delta", "epsilonzeta"] * 10)
    starts = [i for i, ch in enumerate(passage) if ch != " " and (i == 0 or passage[i - 1] == " ")]

    def measure(piece: str) -> int:
        return sum(1 + (len(word) > 5) for word in piece.split())

    pieces = split_passage(passage, starts, budget=10, limit=10, measure=measure)
    _assert_partition(passage, pieces)
    assert all(measure(p.text) == p.tokens <= 10 for p in pieces)
    assert max(len(p.text.split()) for p in pieces) < 10  # shorter than the starts alone allowed


_WORDS = st.sampled_from(
    [
        "index",
        "chunk",
        "embedding",
        "검색",
        "품질을",
        "개선합니다",
        "모델학습피드백",
        "模型",
        "截断。",
        "e.g.",
        "x" * 30,
        "ünïcödé",
    ]
)
_SEPARATORS = st.sampled_from([" ", "  ", "\n", "\n\n", ". ", "! ", "", "\t"])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.tuples(_WORDS, _SEPARATORS), min_size=1, max_size=120), tokens=st.integers(16, 48))
def test_any_text_is_kept_whole_in_pieces_that_fit(tokenizer: Any, parts: list[tuple[str, str]], tokens: int) -> None:
    passage = " " + "".join(word + sep for word, sep in parts)
    budget = _budget(tokenizer, tokens)
    pieces = split_passage(passage, budget.token_starts(passage), budget=tokens, limit=tokens, measure=budget.count)
    _assert_partition(passage, pieces)
    assert all(budget.count(p.text) <= tokens for p in pieces)


def _long_spec(title: str = "") -> CorpusSpec:
    spec = mini_corpus_spec(6, title=title)
    long_doc = Document("q000-long", HANGUL + ENGLISH, project_key="alpha", video_key="alpha-0", title=title)
    queries = [
        Query(q.query_id, q.text, (*q.relevant_doc_ids, "q000-long")) if q.query_id == "q000" else q
        for q in spec.queries
    ]
    return CorpusSpec(spec.name, spec.source, [*spec.documents, long_doc], queries)


@pytest.mark.parametrize("title", ["", "매뉴얼 제목 and an English title"])
def test_rechunk_keeps_every_passage_and_maps_judgments_to_its_pieces(tokenizer: Any, title: str) -> None:
    spec = _long_spec(title)
    budget = _budget(tokenizer, 40)
    chunked, report = rechunk(spec, budget)
    assert chunked.chunking_version == "tokens-v1:tiny-base:40" == report.chunking_version
    pieces = [d for d in chunked.documents if d.doc_id == "q000-long"]
    assert report.cut == 1 and len(pieces) > 2 and report.chunks == len(spec.documents) - 1 + len(pieces)
    assert [d.piece for d in pieces] == list(range(len(pieces)))
    long_text = spec.documents[-1].text
    assert "".join("".join(d.text.split()) for d in pieces) == "".join(long_text.split())
    assert all(d.title == title and (d.project_key, d.video_key) == ("alpha", "alpha-0") for d in pieces)
    # What is embedded — the title, a line break, the piece — fits; short passages are untouched.
    assert all(budget.count(f"{title}\n{d.text}" if title else d.text) <= 40 for d in chunked.documents)
    assert [d for d in chunked.documents if d.piece is None] == spec.documents[:-1]
    assert report.longest <= 40

    records = {r.query_id: r for r in build_query_records(chunked)[0]}
    before = {r.query_id: r for r in build_query_records(spec)[0]}
    piece_ids = [f"mini:q000-long#{i:04d}" for i in range(len(pieces))]
    assert before["q000"].expected_results == ("mini:q000-a0", "mini:q000-a1", "mini:q000-long")
    assert records["q000"].expected_results == ("mini:q000-a0", "mini:q000-a1", *piece_ids)
    assert {k: r for k, r in records.items() if k != "q000"} == {k: r for k, r in before.items() if k != "q000"}


def test_rechunk_refusals(tokenizer: Any, tmp_path: Path) -> None:
    chunked, _ = rechunk(_long_spec(), _budget(tokenizer, 40))
    with pytest.raises(ChunkingError, match=r"already re-chunked \(tokens-v1:tiny-base:40\)"):
        rechunk(chunked, _budget(tokenizer, 40))
    with pytest.raises(CorpusError, match=r"re-chunked .*export the passages, not their pieces"):
        export_beir(chunked, tmp_path / "out")
    long_title = "a very long title " * 8
    with pytest.raises(ChunkingError, match=r"document 'q000-a0': its title takes \d+ of the 20-token budget"):
        rechunk(_long_spec(long_title), _budget(tokenizer, 20))
    for bad in (0, 15, 127, True, 2.5):
        with pytest.raises(ChunkingError, match=rf"--chunk-tokens {bad!r}: must be a whole number from 16 to 126"):
            token_budget(tokenizer, 128, "tiny-base", bad, option="--chunk-tokens")  # type: ignore[arg-type]
    with pytest.raises(ChunkingError, match="reads 10 tokens"):
        token_budget(tokenizer, 10, "tiny-base")


def test_the_chunking_version_fits_its_column() -> None:
    assert chunking_version_for("tiny-base", 126) == "tokens-v1:tiny-base:126"
    long_version = "a" * 56
    label = chunking_version_for(long_version, 510)
    assert len(label) == 64 and label.startswith("tokens-v1:aaa") and label.endswith(":510")
    assert label != chunking_version_for("a" * 55 + "b", 510)


def test_a_rechunked_import_records_its_version_on_every_chunk_and_evaluation_follows(ws: Workspace) -> None:
    budget = model_budget(ws, max_tokens=24)  # the serving model's tokenizer (tiny-base)
    assert (budget.model_version, budget.max_tokens) == ("tiny-base", 24)
    assert model_budget(ws).max_tokens == 126  # max_seq_length 128 less [CLS] and [SEP]
    spec = _long_spec()
    chunked, report = rechunk(spec, budget)
    load_corpus(ws, chunked, reserve_fraction=0.99)
    with ws.db.read() as session:
        chunks = {c.id: c for c in session.query(Chunk)}
    assert len(chunks) == report.chunks and {c.chunking_version for c in chunks.values()} == {"tokens-v1:tiny-base:24"}
    pieces = sorted(cid for cid in chunks if cid.startswith("mini:q000-long#"))
    assert len(pieces) > 3 and all(budget.count(chunks[cid].enriched_text) <= 24 for cid in pieces)
    assert "".join("".join(chunks[cid].text.split()) for cid in pieces) == "".join(spec.documents[-1].text.split())

    # The queries stored at import, and the evaluation set registered from them, name the pieces.
    stored = {q.query_id: q for q in read_queries(ws, "mini", "reserved")}
    assert set(stored["q000"].expected_results) == {"mini:q000-a0", "mini:q000-a1", *pieces}
    ref = register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="test").evaluation_dataset_ref
    expected = {e for record in read_evaluation_set(ws, ref) for e in record.expected_results}
    assert set(pieces) <= expected <= set(chunks)

    # Not re-chunked in place: the same name is refused, a new name imports beside it.
    with pytest.raises(CorpusError, match=r"already imported .*give it a new name"):
        load_corpus(ws, rechunk(spec, model_budget(ws, max_tokens=48))[0])
    whole = CorpusSpec("mini-whole", spec.source, spec.documents, spec.queries)
    load_corpus(ws, whole)
    with ws.db.read() as session:
        versions = {c.chunking_version for c in session.query(Chunk).filter(Chunk.id.like("mini-whole:%"))}
    assert versions == {"corpus-mini-whole-v1"}

    with pytest.raises(
        ChunkingError, match=r"--chunk-to-model 'nope': not a registered model version \(registered: tiny-base\)"
    ):
        model_budget(ws, "nope", version_option="--chunk-to-model")


def _long_beir(folder: Path) -> Path:
    export_beir(_long_spec(), folder)
    return folder


def test_cli_rechunks_on_import_and_refuses_bad_values(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OPS_BASE_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("OPS_BASE_MODEL_VERSION", "tiny-base")
    monkeypatch.setenv("OPS_LOG_LEVEL", "WARNING")
    assert main(["init", "--quiet"]) == 0
    folder = _long_beir(tmp_path / "long")
    capsys.readouterr()
    for argv, message in (
        (["--chunk-tokens", "8"], "error: --chunk-tokens 8: must be a whole number from 16 to 126"),
        (["--chunk-to-model", "tiny-base", "--chunk-tokens", "500"], "error: --chunk-tokens 500: must be"),
        (["--chunk-to-model", "nope"], "error: --chunk-to-model 'nope': not a registered model version"),
    ):
        assert main(["import-beir", str(folder), "--name", "long", "--quiet", *argv]) == 2, argv
        assert capsys.readouterr().err.startswith(message), argv
    with pytest.raises(SystemExit):
        main(["import-beir", str(folder), "--chunk-tokens", "many"])
    assert "argument --chunk-tokens: invalid int value: 'many'" in capsys.readouterr().err

    assert (
        main(["import-beir", str(folder), "--name", "long", "--quiet", "--chunk-to-model", "--chunk-tokens", "32"]) == 0
    )
    out = capsys.readouterr().out
    assert "re-chunked to 32 tokens of tiny-base: 1 of 13 passages cut" in out
    assert "chunking_version tokens-v1:tiny-base:32" in out and "imported long:" in out
    assert main(["register-eval", "--corpus", "long"]) == 0
    ref = capsys.readouterr().out.split()[2].rstrip(":")
    ws = Workspace(Settings())  # the workspace the CLI used (from the same environment)
    expected = [e for record in read_evaluation_set(ws, ref) for e in record.expected_results]
    assert any(e.startswith("long:q000-long#") for e in expected)
    with ws.db.read() as session:
        assert {c.chunking_version for c in session.query(Chunk)} == {"tokens-v1:tiny-base:32"}
