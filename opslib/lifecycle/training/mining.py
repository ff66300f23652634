"""Hard negatives mined with the baseline model over each group's project.

For every training group the baseline ranks all READY chunks of the group's project against the
query (the baseline's index vectors are reused; nothing is re-embedded that an index holds). A
chunk becomes a mined negative when

- its rank lies in ``[rank_from, rank_to)`` — the very top ranks are skipped because they often
  hold relevant chunks nobody labelled;
- its score is at most ``(1 - margin)`` × the group's lowest positive score (the "95 % of the
  positive" rule of NV-Retriever, with margin 0.05): a chunk the baseline scores as high as a
  positive is more likely an unlabelled positive than a negative;
- it is not a positive, not a near-duplicate of one (cosine ≥ ``duplicate_cosine`` to a positive's
  vector) and not a neighbour of one (same video, within ``neighbour_window`` chunks in time:
  transcripts and answers run on across chunk boundaries).

The hardest qualifying chunks (best rank first) are taken, up to ``per_group``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from tqdm.auto import tqdm

from opslib.db.models import Chunk
from opslib.infra.embedding import Purpose
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.retrieval import ProjectCorpus, corpus_vectors, project_corpora, top_k

MINED = "mined_baseline"
MINED_CONFIDENCE = 0.5  # between exposed_unused (0.4, shown and passed over) and a positive (0.8)


@dataclass(frozen=True)
class MiningParams:
    rank_from: int = 3
    rank_to: int = 30
    margin: float = 0.05
    per_group: int = 3
    neighbour_window: int = 1
    duplicate_cosine: float = 0.95

    def __post_init__(self) -> None:
        if not 0 <= self.rank_from < self.rank_to:
            raise ValueError(f"mining rank window [{self.rank_from}, {self.rank_to}): needs 0 <= from < to")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"mining margin {self.margin}: must be in [0, 1)")
        if self.per_group < 0:
            raise ValueError(f"mining per_group {self.per_group}: must be >= 0")
        if self.neighbour_window < 0:
            raise ValueError(f"mining neighbour_window {self.neighbour_window}: must be >= 0")
        if not 0.0 < self.duplicate_cosine <= 1.0:
            raise ValueError(f"mining duplicate_cosine {self.duplicate_cosine}: must be in (0, 1]")


@dataclass
class MiningReport:
    params: MiningParams
    groups: int = 0
    groups_with_mined: int = 0
    mined: int = 0
    excluded: dict[str, int] = field(
        default_factory=lambda: {"positive": 0, "near_duplicate": 0, "neighbour": 0, "above_margin": 0}
    )

    def as_record(self) -> dict[str, Any]:
        return {"params": asdict(self.params), **{k: v for k, v in asdict(self).items() if k != "params"}}


def _excluded_reason(
    j: int,
    score: float,
    corpus: ProjectCorpus,
    docs: np.ndarray,
    positives: list[int],
    ceiling: float,
    params: MiningParams,
) -> str | None:
    if j in positives:
        return "positive"
    if any(
        corpus.video_ids[j] == corpus.video_ids[p]
        and abs(corpus.positions[j] - corpus.positions[p]) <= params.neighbour_window
        for p in positives
    ):
        return "neighbour"
    if positives and float(np.max(docs[positives] @ docs[j])) >= params.duplicate_cosine:
        return "near_duplicate"
    if score > ceiling:
        return "above_margin"
    return None


def mine_hard_negatives(
    ws: Workspace,
    baseline_version: str,
    groups: list[dict[str, Any]],
    params: MiningParams,
    *,
    progress: bool = False,
) -> tuple[list[list[dict[str, Any]]], MiningReport]:
    """Per group (same order), the mined negatives as dataset items (chunk id, text, source,
    confidence, rank, score); and what was mined and excluded."""
    report = MiningReport(params, groups=len(groups))
    mined: list[list[dict[str, Any]]] = [[] for _ in groups]
    if params.per_group == 0 or not groups:
        return mined, report
    by_project: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        by_project[group["project_id"]].append(i)
    corpora = project_corpora(ws, set(by_project))
    chosen: dict[int, list[tuple[str, int, float]]] = {}
    for project, indices in tqdm(by_project.items(), desc="mine hard negatives", unit="project", disable=not progress):
        corpus = corpora[project]
        if not corpus.chunk_ids:
            continue
        docs = corpus_vectors(ws, baseline_version, corpus)
        row_of = {c: j for j, c in enumerate(corpus.chunk_ids)}
        queries = ws.embeddings.embed([groups[i]["query_text"] for i in indices], baseline_version, Purpose.TRAINING)
        window = min(params.rank_to, len(corpus.chunk_ids))
        order, scores = top_k(queries, docs, window)
        for row, i in enumerate(indices):
            group = groups[i]
            positives = [row_of[p["chunk_id"]] for p in group["positives"] if p["chunk_id"] in row_of]
            if not positives:
                continue
            ceiling = (1.0 - params.margin) * float(np.min(queries[row] @ docs[positives].T))
            known = {n["chunk_id"] for n in group["negatives"]}
            picked: list[tuple[str, int, float]] = []
            for rank in range(params.rank_from, window):
                j = int(order[row, rank])
                score = float(scores[row, rank])
                reason = _excluded_reason(j, score, corpus, docs, positives, ceiling, params)
                if reason is not None:
                    report.excluded[reason] += 1
                    continue
                if corpus.chunk_ids[j] in known:
                    continue  # already a negative from feedback
                picked.append((corpus.chunk_ids[j], rank + 1, round(score, 6)))
                if len(picked) == params.per_group:
                    break
            chosen[i] = picked
    texts = _plain_texts(ws, {c for picked in chosen.values() for c, _, _ in picked})
    for i, picked in chosen.items():
        mined[i] = [
            {"chunk_id": c, "text": texts[c], "source": MINED, "confidence": MINED_CONFIDENCE, "rank": r, "score": s}
            for c, r, s in picked
            if c in texts
        ]
        report.mined += len(mined[i])
        report.groups_with_mined += bool(mined[i])
    return mined, report


def _plain_texts(ws: Workspace, chunk_ids: set[str]) -> dict[str, str]:
    """The chunks' text as training reads it (the dataset's positives carry the same field)."""
    ids = sorted(chunk_ids)
    found: dict[str, str] = {}
    with ws.db.read() as session:
        for start in range(0, len(ids), 500):
            found.update(
                session.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_(ids[start : start + 500]))).all()
            )
    return found
