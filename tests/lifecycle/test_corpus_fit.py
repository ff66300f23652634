"""Model–corpus fit: the figures on synthetic texts of known token counts (the tiny model reads
with all-MiniLM-L6-v2's tokenizer, cut at 128 tokens), the warnings at and past their
thresholds, and the figures where operators read them (10_feedback_health)."""

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import loop_ready
from tiny_model import build_blind_model

from opslib.execution.context import recorded_outputs
from opslib.execution.runner import run_stage
from opslib.infra.workspace import Workspace
from opslib.lifecycle.corpus_fit import (
    FitError,
    FitThresholds,
    ModelFit,
    TextFit,
    corpus_sample,
    fit_warnings,
    measure,
    sample_texts,
    script_of,
    scripts_frame,
    serving_fit,
)
from opslib.lifecycle.feedback.health import HealthThresholds, health_verdict
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings


@pytest.fixture(scope="module")
def reader(tiny_model_dir: Path) -> tuple[Any, int]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    return model.tokenizer, int(model.max_seq_length)


def test_scripts_by_unicode_block() -> None:
    assert [script_of(c) for c in "aZéŁ가ᄀㅋ1.語ж "] == [
        *["latin"] * 4,
        *["hangul"] * 3,
        *["other"] * 4,
        None,  # whitespace is not counted
    ]


def test_truncation_is_counted_past_max_seq_length_not_at_it(reader: tuple[Any, int]) -> None:
    tokenizer, max_len = reader
    assert max_len == 128
    # "word" is one token: n words are n + 2 tokens with [CLS] and [SEP].
    texts = [" ".join(["word"] * n) for n in (10, 126, 127, 300)]
    fit = measure(tokenizer, max_len, texts)
    assert (fit.texts, fit.truncated, fit.truncated_share) == (4, 2, 0.5)  # 128 tokens fit; 129 and 302 do not
    assert fit.tokens == 10 + 126 + 127 + 300 and fit.unk_tokens == 0
    assert fit.tokens_max == 302 and fit.tokens_p50 == (128 + 129) / 2
    assert fit.chars == {"latin": 4 * 563, "hangul": 0, "other": 0}
    assert fit.tokens_per_char("latin") == 0.25 and fit.tokens_per_char("hangul") is None


def test_hangul_is_spelled_in_jamo_and_unknown_words_are_unk(reader: tuple[Any, int]) -> None:
    tokenizer, max_len = reader
    # 가/나/다 (consonant + vowel) are two jamo tokens each; 각 (with a final consonant) three;
    # 힣 is no word the vocabulary can spell: one [UNK]; the full stop is one "other" token.
    fit = measure(tokenizer, max_len, ["가나다 각.", "힣 word"])
    assert fit.chars == {"latin": 4, "hangul": 5, "other": 1}
    assert fit.script_tokens == {"latin": 1, "hangul": 6 + 3 + 1, "other": 1}
    assert fit.tokens_per_char("hangul") == 2.0 and fit.tokens_per_char("other") == 1.0
    assert (fit.unk_tokens, fit.tokens) == (1, 12) and fit.unk_rate == pytest.approx(1 / 12)
    # Enough Hangul and the model's window is gone: 60 syllables ≈ 180 tokens > 128.
    long = measure(tokenizer, max_len, [" ".join(["각"] * 60), " ".join(["각"] * 20)])
    assert long.truncated == 1 and long.tokens_max == 60 * 3 + 2 and long.unk_tokens == 0
    # A word longer than WordPiece spells (100 characters after the jamo split) is one [UNK].
    assert measure(tokenizer, max_len, ["각" * 60]).script_tokens["hangul"] == long.unk_tokens + 1


def test_bad_input_is_named(reader: tuple[Any, int]) -> None:
    tokenizer, _ = reader
    with pytest.raises(FitError, match="max_seq_length 0: must be >= 1"):
        measure(tokenizer, 0, ["x"])
    with pytest.raises(FitError, match="texts: must all be strings"):
        measure(tokenizer, 8, ["x", None])  # type: ignore[list-item]
    with pytest.raises(FitError, match="sample size 0: must be >= 1"):
        sample_texts(["x"], 0)
    with pytest.raises(ValueError, match=r"max_unk_rate 2: must be a share between 0 and 1"):
        FitThresholds(max_unk_rate=2)


def test_samples_are_seeded_and_keep_order() -> None:
    texts = [f"t{i:03d}" for i in range(500)]
    first = sample_texts(texts, 50, seed=3)
    assert first == sample_texts(texts, 50, seed=3) != sample_texts(texts, 50, seed=4)
    assert len(first) == 50 and first == sorted(first)
    assert sample_texts(texts[:10], 50) == texts[:10]


def _fit(truncated: int = 0, unk: int = 0, query_unk: int = 0) -> ModelFit:
    def sample(texts: int, truncated: int, tokens: int, unk: int) -> TextFit:
        return TextFit(texts, truncated, tokens, unk, {"latin": 4000, "hangul": 0, "other": 0}, {"latin": tokens})

    return ModelFit("m-1", 256, sample(200, truncated, 1000, unk), sample(50, 0, 1000, query_unk), population=900)


@pytest.mark.parametrize(
    ("fit", "expected"),
    [
        (_fit(), []),
        (_fit(truncated=20, unk=10, query_unk=10), []),  # exactly at 10 % / 1 %: not above
        (
            _fit(truncated=21),
            [
                "model m-1 truncates 10.5% of sampled chunks at 256 tokens (above 10%): consider a "
                "longer-context model, or smaller chunks (re-chunk to the model's token budget)"
            ],
        ),
        (
            _fit(unk=11),
            [
                "model m-1 reads [UNK] for chunks 1.1% of tokens (above 1%): consider a multilingual "
                "model whose vocabulary covers the corpus's script"
            ],
        ),
        (
            _fit(query_unk=30),
            [
                "model m-1 reads [UNK] for queries 3.0% of tokens (above 1%): consider a multilingual "
                "model whose vocabulary covers the corpus's script"
            ],
        ),
    ],
)
def test_the_fit_warns_past_each_threshold_with_its_advice(fit: ModelFit, expected: list[str]) -> None:
    assert fit_warnings(fit) == expected
    assert ModelFit.from_record(json.loads(json.dumps(fit.as_record()))) == fit  # stored and read back whole


def test_the_health_verdict_warns_on_the_serving_models_fit() -> None:
    from test_feedback_health import _health

    fine = health_verdict(_health(100), fit=_fit(truncated=20))
    assert fine.verdict == "OK" and fine.numbers["fit_truncated_share"] == 0.1
    assert "serving model m-1 truncates 10.0% of sampled chunks" in fine.sentence
    bad = health_verdict(_health(100), fit=_fit(truncated=95, unk=30))
    assert bad.verdict == "WARN" and len(bad.reasons) == 2
    assert "longer-context model" in bad.sentence and "multilingual model" in bad.sentence
    outputs = bad.outputs()
    assert ModelFit.from_record(outputs["model_fit"]) == _fit(truncated=95, unk=30)  # type: ignore[arg-type]
    json.dumps(outputs, allow_nan=False)
    lenient = HealthThresholds(fit=FitThresholds(max_truncated_share=0.5, max_unk_rate=0.05))
    assert health_verdict(_health(100), lenient, fit=_fit(truncated=95, unk=30)).verdict == "OK"
    assert health_verdict(_health(100)).outputs().get("model_fit") is None  # not measured: nothing recorded


def test_scripts_frame_has_a_column_per_model_and_a_row_per_script_present() -> None:
    frame = scripts_frame([_fit()])
    assert list(frame.index) == ["latin"] and list(frame.columns) == ["m-1"]
    assert frame.loc["latin", "m-1"] == 0.25
    assert scripts_frame([]).empty


def test_the_serving_models_fit_over_the_corpus(ws: Workspace) -> None:
    assert serving_fit(ws) is None  # no chunk yet: nothing to measure
    loop_ready(ws)
    texts, population = corpus_sample(ws, size=10, seed=1)
    assert len(texts) == 10 and population > 10 and corpus_sample(ws, size=10, seed=1) == (texts, population)
    fit = serving_fit(ws)
    assert fit is not None and fit.model_version == "tiny-base" and fit.max_seq_length == 128
    assert fit.chunks.texts == min(200, population) and fit.queries.texts > 0  # the simulated traffic's queries
    assert fit.chunks.truncated == 0 and fit.chunks.unk_tokens == 0 and fit_warnings(fit) == []


@pytest.mark.slow
def test_feedback_health_warns_when_the_serving_model_cuts_the_corpus(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A serving model that reads two tokens of every chunk: the 10 report says so, WARN, with the advice."""
    blind = build_blind_model(tiny_model_dir, tmp_path / "blind")
    ws = Workspace(settings.model_copy(update={"base_model_path": blind}))
    init_workspace(ws)
    loop_ready(ws)
    result = run_stage(ws, "10_feedback_health", {"window_days": 3})
    outputs = recorded_outputs(ws, result.execution_id)
    assert outputs["health_verdict"] == "WARN" and outputs["fit_truncated_share"] == 1.0
    assert ModelFit.from_record(outputs["model_fit"]).max_seq_length == 2
    html = result.output_html.read_text()
    assert "WARN</b>" in html and "truncates 100.0% of sampled chunks at 2 tokens" in html
    assert "longer-context model" in html and "Serving model–corpus fit" in html
    assert "no evaluation with these figures has judged this model yet" in html
    assert "data:image/png;base64" in html  # tokens per character by script
