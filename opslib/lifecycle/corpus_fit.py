"""Model–corpus fit: does a model read the corpus (and the queries) it is asked to serve?

Measured per model version with its own tokenizer and ``max_seq_length`` (what the model
reads — the sentence-transformers module cuts every text there) over a seeded sample of the
texts it embeds (``Chunk.enriched_text``) and of the queries:

- **truncated share**: chunks whose token count (special tokens included, as the model counts
  them) exceeds ``max_seq_length`` — the rest of such a chunk is never read;
- **tokens per character by script** (Latin, Hangul, other): a vocabulary without the script
  splits it into pieces (all-MiniLM-L6-v2 spells Hangul as jamo, about three tokens per syllable);
- **[UNK] rate**: tokens the vocabulary cannot spell at all, over all tokens but the special ones.

Scripts are told by Unicode block, character by character: *Latin* is the Latin letters (ASCII,
Latin-1 letters, Latin Extended A/B and Additional, fullwidth), *Hangul* the syllables and every
jamo block (conjoining, compatibility, extended A/B, halfwidth), *other* every other character
that is not whitespace — digits, punctuation and symbols included (they take tokens too).
Whitespace is not counted: tokenizers do not spend tokens on it. A token belongs to the script
of the first non-space character of the text it came from (the tokenizer's offsets).

The fit decides nothing by itself: ``fit_warnings`` names the thresholds (``FitThresholds``,
documented in docs/reviewer-guide.md) a model crosses, with the advice; 10_feedback_health turns
them into its WARN for the serving model, and 40_evaluate_candidate shows both models' fit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from opslib.control.release import current_release
from opslib.db.models import Chunk, ModelEvaluation, SearchResponseSnapshot, Video, VideoStatus
from opslib.errors import Invalid
from opslib.infra.workspace import Workspace

SCRIPTS = ("latin", "hangul", "other")
SAMPLE_SIZE = 200  # chunks (and queries) per sample: enough to see a share of a few percent
SAMPLE_SEED = 0
RECENT_QUERIES = 5000  # the newest search requests the query sample is drawn from

_HANGUL = (
    (0x1100, 0x11FF),  # Hangul Jamo (conjoining)
    (0x3130, 0x318F),  # Hangul Compatibility Jamo
    (0xA960, 0xA97F),  # Hangul Jamo Extended-A
    (0xAC00, 0xD7AF),  # Hangul Syllables
    (0xD7B0, 0xD7FF),  # Hangul Jamo Extended-B
    (0xFFA0, 0xFFDC),  # halfwidth Hangul
)
_LATIN = (
    (0x0041, 0x005A),
    (0x0061, 0x007A),
    (0x00C0, 0x00D6),  # Latin-1 letters, without × (U+00D7) ...
    (0x00D8, 0x00F6),  # ... and ÷ (U+00F7)
    (0x00F8, 0x024F),  # Latin Extended-A and -B
    (0x1E00, 0x1EFF),  # Latin Extended Additional
    (0xFF21, 0xFF3A),  # fullwidth A-Z
    (0xFF41, 0xFF5A),  # fullwidth a-z
)


class FitError(Invalid):
    pass


@lru_cache(maxsize=65536)
def script_of(char: str) -> str | None:
    """``latin``, ``hangul`` or ``other`` for one character; None for whitespace (not counted)."""
    if char.isspace():
        return None
    code = ord(char)
    if any(low <= code <= high for low, high in _HANGUL):
        return "hangul"
    if any(low <= code <= high for low, high in _LATIN):
        return "latin"
    return "other"


@dataclass(frozen=True)
class TextFit:
    """What one tokenizer makes of one sample of texts."""

    texts: int
    truncated: int  # texts longer than max_seq_length tokens (special tokens included)
    tokens: int  # tokens without the special ones ([CLS], [SEP], …)
    unk_tokens: int
    chars: dict[str, int]  # non-whitespace characters per script
    script_tokens: dict[str, int]  # tokens per script (the script of the text each came from)
    tokens_p50: float = 0.0  # tokens per text, special tokens included
    tokens_p95: float = 0.0
    tokens_max: int = 0

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.texts if self.texts else 0.0

    @property
    def unk_rate(self) -> float:
        return self.unk_tokens / self.tokens if self.tokens else 0.0

    def tokens_per_char(self, script: str) -> float | None:
        """None when the sample holds no character of ``script``."""
        chars = self.chars.get(script, 0)
        return self.script_tokens.get(script, 0) / chars if chars else None


def measure(tokenizer: Any, max_seq_length: int, texts: Sequence[str]) -> TextFit:
    """The fit of ``texts`` for a Hugging Face tokenizer (``tokenizer`` is a
    ``PreTrainedTokenizerBase``; fast tokenizers give offsets, slow ones are read per script run)."""
    if max_seq_length < 1:
        raise FitError(f"max_seq_length {max_seq_length}: must be >= 1")
    if any(not isinstance(t, str) for t in texts):
        raise FitError("texts: must all be strings")
    chars = dict.fromkeys(SCRIPTS, 0)
    script_tokens = dict.fromkeys(SCRIPTS, 0)
    counts: list[int] = []
    tokens = unk = 0
    unk_id = tokenizer.unk_token_id
    fast = bool(getattr(tokenizer, "is_fast", False))
    for text in texts:
        for char in text:
            script = script_of(char)
            if script is not None:
                chars[script] += 1
        # No truncation here: the point is how far past max_seq_length a text goes (verbose=False:
        # no "longer than the maximum" warning per text).
        encoded = tokenizer(
            text,
            add_special_tokens=True,
            truncation=False,
            return_special_tokens_mask=True,
            return_offsets_mapping=fast,
            verbose=False,
        )
        ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
        counts.append(len(ids))
        content = [i for i, s in enumerate(special) if not s]
        tokens += len(content)
        unk += sum(ids[i] == unk_id for i in content)
        if fast:
            for i in content:
                start, end = encoded["offset_mapping"][i]
                script_tokens[_first_script(text[start:end])] += 1
        else:
            for script, run in _script_runs(text):
                script_tokens[script] += len(tokenizer.tokenize(run))
    sizes = np.asarray(counts, dtype=np.float64)
    return TextFit(
        texts=len(counts),
        truncated=int((sizes > max_seq_length).sum()),
        tokens=tokens,
        unk_tokens=int(unk),
        chars=chars,
        script_tokens=script_tokens,
        tokens_p50=float(np.percentile(sizes, 50)) if counts else 0.0,
        tokens_p95=float(np.percentile(sizes, 95)) if counts else 0.0,
        tokens_max=int(sizes.max()) if counts else 0,
    )


def _first_script(span: str) -> str:
    return next((s for s in map(script_of, span) if s is not None), "other")


def _script_runs(text: str) -> list[tuple[str, str]]:
    """Maximal runs of one script (whitespace joins the run it is in) — for slow tokenizers."""
    runs: list[tuple[str, str]] = []
    current, start = None, 0
    for i, char in enumerate(text):
        script = script_of(char)
        if script is None or script == current:
            continue
        if current is not None:
            runs.append((current, text[start:i]))
        current, start = script, i
    if current is not None:
        runs.append((current, text[start:]))
    return runs


@dataclass(frozen=True)
class FitThresholds:
    """When a model does not fit its corpus (either crossed is enough for a WARN)."""

    # Chunks cut at max_seq_length over chunks sampled: beyond this, a tenth of the corpus is
    # partly unread — answers in a chunk's tail cannot be found by the dense path.
    max_truncated_share: float = 0.10
    # [UNK] over all tokens (chunks or queries): words the vocabulary cannot spell at all.
    max_unk_rate: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_truncated_share", "max_unk_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value}: must be a share between 0 and 1")


FIT_THRESHOLDS = FitThresholds()
ADVICE_TRUNCATION = "a longer-context model, or smaller chunks (re-chunk to the model's token budget)"
ADVICE_UNK = "a multilingual model whose vocabulary covers the corpus's script"


@dataclass(frozen=True)
class ModelFit:
    """One model version's fit over a sample of the corpus and of the queries."""

    model_version: str
    max_seq_length: int
    chunks: TextFit
    queries: TextFit
    population: int  # chunks the sample was drawn from
    sample_seed: int = SAMPLE_SEED
    extra: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """A JSON value (stored with the evaluation and on the 10 execution)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelFit:
        return cls(
            **{
                **record,
                "chunks": TextFit(**record["chunks"]),
                "queries": TextFit(**record["queries"]),
            }
        )

    def summary(self) -> dict[str, Any]:
        """The figures a report shows, one value each."""
        row: dict[str, Any] = {
            "max_seq_length": self.max_seq_length,
            "chunks sampled": f"{self.chunks.texts} of {self.population}",
            "truncated chunks": f"{self.chunks.truncated} ({self.chunks.truncated_share:.1%})",
            "tokens per chunk (median / p95 / max)": (
                f"{self.chunks.tokens_p50:.0f} / {self.chunks.tokens_p95:.0f} / {self.chunks.tokens_max}"
            ),
            "[UNK] rate (chunks)": f"{self.chunks.unk_rate:.2%}",
            "queries sampled": self.queries.texts,
            "truncated queries": self.queries.truncated,
            "[UNK] rate (queries)": f"{self.queries.unk_rate:.2%}",
        }
        for script in SCRIPTS:
            ratio = self.chunks.tokens_per_char(script)
            row[f"tokens/char {script} (chars)"] = (
                "—" if ratio is None else f"{ratio:.2f} ({self.chunks.chars[script]:,})"
            )
        return row


def fit_warnings(fit: ModelFit, thresholds: FitThresholds = FIT_THRESHOLDS) -> list[str]:
    """One sentence, with its advice, per threshold ``fit`` crosses ([] when it fits).
    Counts against share × total, so exactly at a threshold is not above it."""
    reasons = []
    chunks, queries = fit.chunks, fit.queries
    if chunks.truncated > thresholds.max_truncated_share * chunks.texts:
        reasons.append(
            f"model {fit.model_version} truncates {chunks.truncated_share:.1%} of sampled chunks at "
            f"{fit.max_seq_length} tokens (above {thresholds.max_truncated_share:.0%}): consider {ADVICE_TRUNCATION}"
        )
    unk = [
        f"{name} {sample.unk_rate:.1%}"
        for name, sample in (("chunks", chunks), ("queries", queries))
        if sample.unk_tokens > thresholds.max_unk_rate * sample.tokens
    ]
    if unk:
        reasons.append(
            f"model {fit.model_version} reads [UNK] for {', '.join(unk)} of tokens "
            f"(above {thresholds.max_unk_rate:.0%}): consider {ADVICE_UNK}"
        )
    return reasons


def scripts_frame(fits: list[ModelFit]) -> pd.DataFrame:
    """Tokens per character by script (rows, scripts the sample has) and model (columns)."""
    present = [s for s in SCRIPTS if any(f.chunks.chars[s] for f in fits)]
    return pd.DataFrame(
        {f.model_version: [f.chunks.tokens_per_char(s) for s in present] for f in fits}, index=present
    ).round(3)


# Samples ----------------------------------------------------------------------------------
def sample_texts(texts: Sequence[str], size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[str]:
    """``size`` of ``texts`` (all when fewer), drawn with ``seed``, in their given order."""
    if size < 1:
        raise FitError(f"sample size {size}: must be >= 1")
    if len(texts) <= size:
        return list(texts)
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), size))]


def corpus_sample(ws: Workspace, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> tuple[list[str], int]:
    """(the embedded text of ``size`` chunks of READY videos, how many there are), by chunk id
    order and ``seed``: the same corpus gives the same sample."""
    with ws.db.read() as session:
        ids = list(
            session.scalars(
                select(Chunk.id)
                .join(Video, Video.id == Chunk.video_id)
                .where(Video.status == VideoStatus.READY)
                .order_by(Chunk.id)
            )
        )
        chosen = sample_texts(ids, size, seed)
        texts = dict(session.execute(select(Chunk.id, Chunk.enriched_text).where(Chunk.id.in_(chosen))).all())
    return [texts[c] for c in chosen], len(ids)


def query_sample(ws: Workspace, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[str]:
    """Distinct query texts of the newest search requests (``RECENT_QUERIES``), sampled."""
    with ws.db.read() as session:
        recent = session.scalars(
            select(SearchResponseSnapshot.query_text)
            .order_by(SearchResponseSnapshot.created_at.desc(), SearchResponseSnapshot.req_id)
            .limit(RECENT_QUERIES)
        ).all()
    return sample_texts(sorted(set(recent)), size, seed) if recent else []


def model_reader(ws: Workspace, model_version: str) -> tuple[Any, int]:
    """(tokenizer, max_seq_length) of a registered version, as its loaded model reads text."""
    model = ws.embeddings.model(model_version)
    if model.max_seq_length is None:  # sentence-transformers leaves it unset only for non-text models
        raise FitError(f"model_version {model_version!r}: has no max_seq_length, it does not read text")
    return model.tokenizer, int(model.max_seq_length)


def model_fit(
    ws: Workspace, model_version: str, chunks: Sequence[str], queries: Sequence[str], population: int
) -> ModelFit:
    tokenizer, max_seq_length = model_reader(ws, model_version)
    return ModelFit(
        model_version=model_version,
        max_seq_length=max_seq_length,
        chunks=measure(tokenizer, max_seq_length, chunks),
        queries=measure(tokenizer, max_seq_length, queries),
        population=population,
    )


def serving_fit(ws: Workspace, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> ModelFit | None:
    """The serving model's fit over a sample of the corpus and of recent queries (None: no
    release yet, or no chunk to measure)."""
    with ws.db.read() as session:
        release = current_release(session)
        active = release.active_model_version if release is not None else None
    if active is None:
        return None
    chunks, population = corpus_sample(ws, size, seed)
    if not chunks:
        return None
    return model_fit(ws, active, chunks, query_sample(ws, size, seed), population)


# Keyword vs dense -------------------------------------------------------------------------
def latest_retrieval_split(ws: Workspace, model_version: str) -> dict[str, Any] | None:
    """Keyword vs dense (and hybrid) recall@5 of ``model_version`` from the newest evaluation
    that judged it (as baseline or candidate) and stored the split; None if there is none."""
    with ws.db.read() as session:
        rows = session.scalars(
            select(ModelEvaluation)
            .where(
                (ModelEvaluation.baseline_model_version == model_version)
                | (ModelEvaluation.candidate_model_version == model_version)
            )
            .order_by(ModelEvaluation.id.desc())
            .limit(20)
        ).all()
        for row in rows:
            q = row.quality_metrics or {}
            if "keyword" not in q.get("fit", {}):
                continue
            side = "baseline" if row.baseline_model_version == model_version else "candidate"
            return {
                "evaluation id": row.id,
                "evaluation set": row.evaluation_dataset_ref,
                "queries": q.get("coverage", {}).get("evaluated"),
                "keyword recall@5": q["fit"]["keyword"]["recall_at_5"],
                "dense recall@5": q[side]["recall_at_5"],
                "hybrid recall@5": q.get("hybrid", {}).get(side, {}).get("recall_at_5"),
            }
    return None


def fit_facts(ws: Workspace, fit: ModelFit | None) -> dict[str, Any]:
    """The serving model's fit as a report's facts, with keyword vs dense recall@5 from the
    newest evaluation that judged it (not recomputed here: the evaluation set is stage 40's)."""
    if fit is None:
        return {"not measured": "no release yet, or the corpus has no chunk of a READY video"}
    split = latest_retrieval_split(ws, fit.model_version)
    recall = split or {"keyword vs dense recall@5": "no evaluation with these figures has judged this model yet"}
    return {"model": fit.model_version, **fit.summary(), **recall}
