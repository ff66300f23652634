"""Re-chunking a corpus to a model's token budget.

A passage longer than the model reads is cut off when it is embedded: the model sees its first
``max_seq_length`` tokens and nothing after, in search and in evaluation alike. ``rechunk`` splits
every such passage into pieces that fit — at most the model's ``max_seq_length`` less its special
tokens ([CLS], [SEP]), counted by the model's own tokenizer on exactly what is embedded (the
title, a line break, the piece) — so truncation is fixed without changing the model.

Where a passage is cut: at a line break, else after the end of a sentence, else at whitespace,
else (a run without spaces: Hangul words, CJK text, a long identifier) between two tokens. Of the
cuts that keep a piece within budget, the best kind in the piece's second half wins, the furthest
of that kind. No text is lost or repeated: the pieces, with the whitespace between them, are the
passage. A passage that fits stays whole under its own chunk id; the pieces of a cut one are
``<its chunk id>#0000``, ``#0001``, … A query judged relevant to a passage is relevant to each of
its pieces: a passage-level judgment does not say which piece holds the answer.

Every chunk of a re-chunked import records ``tokens-v1:<model version>:<budget>`` as its
``chunking_version``; a whole-passage import keeps ``corpus-<name>-v1``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opslib.control.release import current_release
from opslib.corpus.loader import CorpusError, CorpusSpec, Document
from opslib.db.models import ModelVersion
from opslib.infra.model_artifacts import registered_versions
from opslib.infra.workspace import Workspace

SCHEME = "tokens-v1"
MIN_PIECE_TOKENS = 16  # below this a piece is a phrase, not a passage: refused, not produced
_VERSION_MAX = 64  # chunks.chunking_version is String(64)
_SENTENCE_END = frozenset(".!?…。！？")
_CJK_STOPS = frozenset("。！？")  # end a sentence without a space after them
_CLOSERS = "\"')]}»”’」』"


class ChunkingError(CorpusError):
    pass


@dataclass(frozen=True)
class Piece:
    """``text`` is ``passage[start:end]``; what lies between two pieces is whitespace."""

    start: int
    end: int
    text: str
    tokens: int  # as embedded: with the title, without the special tokens


def chunking_version_for(model_version: str, max_tokens: int) -> str:
    label = f"{SCHEME}:{model_version}:{max_tokens}"
    if len(label) <= _VERSION_MAX:
        return label
    digest = hashlib.sha256(model_version.encode()).hexdigest()[:8]
    keep = _VERSION_MAX - len(f"{SCHEME}::{max_tokens}~{digest}")
    return f"{SCHEME}:{model_version[:keep]}~{digest}:{max_tokens}"


@dataclass(frozen=True)
class TokenBudget:
    """How many tokens a chunk's embedded text may have, and the tokenizer that counts them."""

    tokenizer: Any  # a fast (Rust-backed) transformers tokenizer: cutting needs token offsets
    max_tokens: int
    model_version: str

    @property
    def chunking_version(self) -> str:
        return chunking_version_for(self.model_version, self.max_tokens)

    def count(self, text: str) -> int:
        """Tokens of ``text`` without the special ones (``verbose=False``: a long passage is
        what we measure, not a mistake to warn about)."""
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def token_starts(self, text: str) -> list[int]:
        """Where each token of ``text`` begins (ascending; tokens of one character share it)."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return sorted(start for start, end in encoded["offset_mapping"] if end > start)


def token_budget(
    tokenizer: Any,
    max_seq_length: int,
    model_version: str,
    max_tokens: int | None = None,
    *,
    option: str = "max_tokens",
) -> TokenBudget:
    """The budget of a model reading ``max_seq_length`` tokens: that less its special tokens, or
    ``max_tokens`` (named ``option`` in a refusal) when smaller."""
    if not getattr(tokenizer, "is_fast", False):
        raise ChunkingError(
            f"model_version {model_version!r}: its tokenizer is not a fast (Rust-backed) one; "
            "re-chunking needs token offsets"
        )
    specials = int(tokenizer.num_special_tokens_to_add(pair=False))
    limit = int(max_seq_length) - specials
    if limit < MIN_PIECE_TOKENS:
        raise ChunkingError(
            f"model_version {model_version!r}: reads {max_seq_length} tokens ({specials} special), "
            f"fewer than the {MIN_PIECE_TOKENS} a piece needs"
        )
    if max_tokens is None:
        return TokenBudget(tokenizer, limit, model_version)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not MIN_PIECE_TOKENS <= max_tokens <= limit:
        raise ChunkingError(
            f"{option} {max_tokens!r}: must be a whole number from {MIN_PIECE_TOKENS} to {limit} "
            f"(model_version {model_version!r} reads {max_seq_length} tokens, {specials} of them special)"
        )
    return TokenBudget(tokenizer, max_tokens, model_version)


def model_budget(
    ws: Workspace,
    model_version: str | None = None,
    max_tokens: int | None = None,
    *,
    version_option: str = "model_version",
    tokens_option: str = "max_tokens",
) -> TokenBudget:
    """The budget of a registered model version (None: the serving one), read from the model as
    the endpoint loads it: its tokenizer and the ``max_seq_length`` it truncates at."""
    with ws.db.read() as session:
        if model_version is None:
            release = current_release(session)
            if release is None:
                raise ChunkingError("no ModelRelease yet: bootstrap the workspace (`opsbench init`)")
            model_version = release.active_model_version
        registered = session.get(ModelVersion, model_version) is not None
    if not registered:
        known = ", ".join(row.model_version for row in registered_versions(ws)) or "none"
        raise ChunkingError(f"{version_option} {model_version!r}: not a registered model version (registered: {known})")
    model = ws.embeddings.model(model_version)
    # No max_seq_length of its own: the model reads as far as its tokenizer's maximum.
    length = model.max_seq_length if model.max_seq_length is not None else model.tokenizer.model_max_length
    return token_budget(model.tokenizer, int(length), model_version, max_tokens, option=tokens_option)


def _cut_rank(text: str, starts: Sequence[int], k: int) -> int:
    """How good a cut before token ``k`` is: 4 the end, 3 a line break, 2 a sentence's end,
    1 whitespace, 0 inside a word."""
    if k == len(starts):
        return 4
    seg = text[starts[k - 1] : starts[k]]
    body = seg.rstrip()
    gap = seg[len(body) :]
    if "\n" in gap:
        return 3
    last = body.rstrip(_CLOSERS)[-1:]
    if last in _SENTENCE_END and (gap or last in _CJK_STOPS):
        return 2
    return 1 if gap else 0


def _best_cut(text: str, starts: Sequence[int], first: int, last: int) -> int | None:
    """The token the next piece starts at (``len(starts)``: none, the piece runs to the end),
    for a piece from token ``first`` of at most ``last - first`` tokens."""
    n = len(starts)
    candidates = [k for k in range(first + 1, last + 1) if k == n or starts[k] > starts[k - 1]]
    if not candidates:
        return None
    low = first + max(1, (last - first) // 2)
    preferred = [k for k in candidates if k >= low]
    if not preferred:
        return candidates[-1]
    return max(preferred, key=lambda k: (_cut_rank(text, starts, k), k))


def split_passage(
    text: str, starts: Sequence[int], *, budget: int, limit: int, measure: Callable[[str], int]
) -> list[Piece]:
    """``text`` in pieces of at most ``limit`` tokens as ``measure`` counts a piece. ``starts``:
    where each token of ``text`` begins; ``budget``: the tokens (by ``starts``) a piece aims at —
    the limit less whatever is embedded with every piece. A piece whose own count is higher
    (a word cut in two tokenizes differently) is cut shorter until it fits."""
    n = len(starts)
    if n == 0:  # nothing the tokenizer reads: one piece, however long
        stripped = text.strip()
        start = text.index(stripped) if stripped else 0
        return [Piece(start, start + len(stripped), stripped, measure(stripped))]
    pieces: list[Piece] = []
    first, begin = 0, 0  # the current piece's first token, and where its raw text begins
    while True:
        last = min(first + max(1, budget), n)
        while True:
            k = _best_cut(text, starts, first, last)
            if k is None:
                raise ChunkingError(f"position {starts[first]}: one character takes more than {budget} tokens")
            end = len(text) if k == n else starts[k]
            raw = text[begin:end]
            stripped = raw.strip()
            tokens = measure(stripped)
            if tokens <= limit:
                break
            if k - first <= 1:
                raise ChunkingError(f"position {starts[first]}: a single token measures {tokens} > {limit} tokens")
            last = first + max(1, min(k - first - 1, (k - first) - (tokens - limit)))
        if stripped:
            start = begin + (len(raw) - len(raw.lstrip()))
            pieces.append(Piece(start, start + len(stripped), stripped, tokens))
        if k == n:
            return pieces
        first, begin = k, end


@dataclass(frozen=True)
class RechunkReport:
    chunking_version: str
    max_tokens: int
    passages: int
    cut: int  # passages over the budget, now in pieces
    chunks: int
    longest: int  # tokens of the longest chunk as embedded (the title included)


def _embedded_count(budget: TokenBudget, head: str) -> Callable[[str], int]:
    return lambda piece: budget.count(head + piece)


def rechunk(spec: CorpusSpec, budget: TokenBudget) -> tuple[CorpusSpec, RechunkReport]:
    """``spec`` with every passage over ``budget`` replaced by its pieces (in order, each with
    the passage's title, project and video); queries unchanged — their judgments name passages,
    and an import maps a passage to all its chunks."""
    if spec.chunking_version is not None:
        raise ChunkingError(f"corpus {spec.name!r}: already re-chunked ({spec.chunking_version})")
    documents: list[Document] = []
    cut, longest = 0, 0
    for doc in spec.documents:
        head = f"{doc.title}\n" if doc.title else ""
        whole = budget.count(head + doc.text)
        if whole <= budget.max_tokens:
            documents.append(doc)
            longest = max(longest, whole)
            continue
        room = budget.max_tokens - (budget.count(doc.title) if doc.title else 0)
        if room < MIN_PIECE_TOKENS:
            raise ChunkingError(
                f"document {doc.doc_id!r}: its title takes {budget.max_tokens - room} of the "
                f"{budget.max_tokens}-token budget, leaving fewer than {MIN_PIECE_TOKENS} for its text"
            )
        try:
            pieces = split_passage(
                doc.text,
                budget.token_starts(doc.text),
                budget=room,
                limit=budget.max_tokens,
                measure=_embedded_count(budget, head),
            )
        except ChunkingError as error:
            raise ChunkingError(f"document {doc.doc_id!r}: {error}") from None
        documents.extend(replace(doc, text=p.text, piece=i) for i, p in enumerate(pieces))
        cut += 1
        longest = max(longest, *(p.tokens for p in pieces))
    chunked = CorpusSpec(
        name=spec.name,
        source=spec.source,
        documents=documents,
        queries=spec.queries,
        chunking_version=budget.chunking_version,
    )
    report = RechunkReport(
        budget.chunking_version, budget.max_tokens, len(spec.documents), cut, len(documents), longest
    )
    return chunked, report
