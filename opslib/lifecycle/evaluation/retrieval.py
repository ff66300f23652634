"""Exact dense retrieval over a project's chunks, for judging models (evaluation, validation,
hard-negative mining): every READY chunk of the project, cosine similarity, top K."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sqlalchemy import select

from opslib.corpus.indexing import stored_vectors
from opslib.db.models import Chunk, Video, VideoStatus
from opslib.infra.embedding import Purpose
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.metrics import K


@dataclass
class ProjectCorpus:
    chunk_ids: list[str]
    texts: list[str]  # what the index embeds (enriched text)
    video_ids: list[str]
    positions: list[int]  # the chunk's place in its video's timeline (start order)


class Scoped(Protocol):
    @property
    def query_text(self) -> str: ...

    @property
    def project_id(self) -> str: ...


def project_corpora(ws: Workspace, projects: set[str]) -> dict[str, ProjectCorpus]:
    """Each project's READY chunks, in chunk-id order (ties in ranking break by it)."""
    corpora: dict[str, ProjectCorpus] = {}
    with ws.db.read() as session:
        for project in sorted(projects):
            rows = session.execute(
                select(Chunk.id, Chunk.enriched_text, Chunk.video_id, Chunk.start_ms)
                .join(Video, Video.id == Chunk.video_id)
                .where(Video.project_id == project, Video.status == VideoStatus.READY)
                .order_by(Chunk.id)
            ).all()
            starts: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for chunk_id, _text, video_id, start_ms in rows:
                starts[video_id].append((start_ms, chunk_id))
            position = {c: i for entries in starts.values() for i, (_s, c) in enumerate(sorted(entries))}
            corpora[project] = ProjectCorpus(
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [position[r[0]] for r in rows]
            )
    return corpora


def corpus_vectors(ws: Workspace, model_version: str, corpus: ProjectCorpus, progress: bool = False) -> np.ndarray:
    """The project's chunk vectors by a registered model: reused from an index of this model when
    present, else embedded (at the model's recorded precision)."""
    stored = stored_vectors(ws, model_version, corpus.chunk_ids)
    missing = [i for i, c in enumerate(corpus.chunk_ids) if c not in stored]
    fresh = ws.embeddings.embed(
        [corpus.texts[i] for i in missing], model_version, Purpose.EVALUATION, show_progress=progress
    )
    vectors = dict(zip((corpus.chunk_ids[i] for i in missing), fresh, strict=True))  # one row per text
    vectors.update(stored)
    return np.stack([vectors[c] for c in corpus.chunk_ids]).astype(np.float32)


def top_k(query_vectors: np.ndarray, doc_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the k best documents per query, by cosine (both sides L2-normalised);
    ties keep document order."""
    scores = query_vectors @ doc_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def rank(
    ws: Workspace,
    model_version: str,
    records: Sequence[Scoped],
    corpora: dict[str, ProjectCorpus],
    progress: bool = False,
    k: int = K,
) -> list[list[tuple[str, float]]]:
    """Top-k (chunk id, cosine) per record, exact search over its project's chunks."""
    results: list[list[tuple[str, float]]] = [[] for _ in records]
    by_project: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_project[record.project_id].append(i)
    for project, indices in by_project.items():
        corpus = corpora[project]
        if not corpus.chunk_ids:
            continue
        docs = corpus_vectors(ws, model_version, corpus, progress)
        queries = ws.embeddings.embed([records[i].query_text for i in indices], model_version, Purpose.EVALUATION)
        order, scores = top_k(queries, docs, k)
        for row, i in enumerate(indices):
            results[i] = [(corpus.chunk_ids[j], float(s)) for j, s in zip(order[row], scores[row], strict=True)]
    return results


def keyword_top(ws: Workspace, records: Sequence[Scoped], k: int | None = None) -> list[list[str]]:
    """The serving path's keyword candidates per record (BM25 over the keyword index, top
    ``KEYWORD_K`` unless ``k``): model-independent, so computed once per evaluation."""
    from opslib.corpus.search import KEYWORD_K, keyword_search

    with ws.db.read() as session:
        return [keyword_search(session, r.query_text, r.project_id, k or KEYWORD_K) for r in records]


def hybrid_top(
    ws: Workspace,
    records: Sequence[Scoped],
    dense: list[list[tuple[str, float]]],
    k: int = K,
    keyword: list[list[str]] | None = None,
) -> list[list[str]]:
    """What the serving path would show (keyword top-20 from the keyword index — or ``keyword``,
    from ``keyword_top`` — + the dense top-20 given, fused by Reciprocal Rank Fusion, then the SOT
    gate, top k) — per record, the model's dense ranking standing in for its index."""
    from opslib.corpus.search import reciprocal_rank_fusion, sot_gate

    if keyword is None:
        keyword = keyword_top(ws, records)
    shown: list[list[str]] = []
    with ws.db.read() as session:
        for record, ranked, words in zip(records, dense, keyword, strict=True):
            fused = [doc for doc, _ in reciprocal_rank_fusion([words, [doc for doc, _ in ranked]])]
            allowed = sot_gate(session, fused, record.project_id)
            shown.append([doc for doc in fused if doc in allowed][:k])
    return shown


def keyword_only_top(ws: Workspace, records: Sequence[Scoped], keyword: list[list[str]], k: int = K) -> list[list[str]]:
    """The keyword path alone, as a user would see it (through the SOT gate, top k): how much of
    the hybrid path's result the keyword side could find without any model."""
    from opslib.corpus.search import sot_gate

    shown: list[list[str]] = []
    with ws.db.read() as session:
        for record, words in zip(records, keyword, strict=True):
            allowed = sot_gate(session, words, record.project_id)
            shown.append([doc for doc in words if doc in allowed][:k])
    return shown
