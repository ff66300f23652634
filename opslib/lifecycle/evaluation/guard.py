"""The guard against forgetting: besides the evaluation set, stage 40 scores both models on a
second, general set — one that has nothing to do with the feedback the candidate was trained on —
and fails a candidate whose primary metric drops there by more than ``max_drop``.

A guard set carries its own corpus (stored beside its records), so it judges any workspace: the
passages are embedded by each model, and each query is ranked against its project's passages. The
newest registered guard set is used; when none is registered, the built-in corpus's reserved
queries (Python's standard-library docstrings, the same 30 % the demo reserves) are registered as
one — general text about programming, far from most customers' videos, which is the point: a model
that forgets how to read ordinary English shows it there.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import orjson

from opslib.corpus.loader import CorpusSpec, build_query_records, build_videos, is_reserved
from opslib.infra.embedding import Purpose
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.metrics import METRICS, K, exact_mean, paired_bootstrap, query_metrics
from opslib.lifecycle.evaluation.retrieval import ProjectCorpus, top_k
from opslib.lifecycle.evaluation.sets import (
    EvalRecord,
    corpus_key,
    latest_evaluation_set,
    read_evaluation_set,
    register_evaluation_set,
)

BUILTIN_GUARD_CORPUS = "stdlib"
GUARD_SEED, GUARD_FRACTION = 0, 0.3  # the demo's reservation: its reserved queries never trained


def register_guard_set(ws: Workspace, spec: CorpusSpec, *, source: str) -> str:
    """Register ``spec``'s reserved queries (seeded hash, as corpus import reserves them) with the
    spec's passages as a guard set; returns its ref (the same for the same content)."""
    records, _dropped = build_query_records(spec)
    reserved = [
        EvalRecord(r.query_text, r.project_id, r.expected_results)
        for r in records
        if is_reserved(r.query_id, GUARD_SEED, GUARD_FRACTION)
    ]
    passages: list[dict[str, object]] = [
        {
            "chunk_id": chunk.chunk_id,
            "project_id": video.project_id,
            "video_id": video.video_id,
            "position": position,
            "text": chunk.enriched_text or chunk.text,
        }
        for video in build_videos(spec)
        for position, chunk in enumerate(video.chunks)
    ]
    row = register_evaluation_set(ws, reserved, source=source, role="guard", corpus=passages)
    return row.evaluation_dataset_ref


def guard_set(ws: Workspace, register_builtin: bool = True) -> str | None:
    """The newest registered guard set; with none, the built-in one is registered first."""
    latest = latest_evaluation_set(ws, role="guard")
    if latest is not None:
        return latest.evaluation_dataset_ref
    if not register_builtin:
        return None
    from opslib.corpus.builtin import build_demo_corpus  # deferred: reads the stdlib's docstrings

    spec = build_demo_corpus(BUILTIN_GUARD_CORPUS)
    return register_guard_set(ws, spec, source=f"guard: built-in corpus {spec.name} (reserved queries)")


def _guard_corpora(ws: Workspace, ref: str) -> dict[str, ProjectCorpus]:
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with ws.objects.open_verified(corpus_key(ref)) as handle:  # part of the guard set: verified like it
        for line in handle:
            passage = orjson.loads(line)
            rows[passage["project_id"]].append(passage)
    corpora = {}
    for project, passages in rows.items():
        passages.sort(key=lambda p: p["chunk_id"])  # ties break by chunk id, as stage 40 ranks
        corpora[project] = ProjectCorpus(
            [p["chunk_id"] for p in passages],
            [p["text"] for p in passages],
            [p["video_id"] for p in passages],
            [p["position"] for p in passages],
        )
    return corpora


def _per_query(
    ws: Workspace, model_version: str, records: list[EvalRecord], corpora: dict[str, ProjectCorpus]
) -> dict[str, list[float]]:
    per_query: dict[str, list[float]] = {m: [] for m in METRICS}
    by_project: dict[str, list[EvalRecord]] = defaultdict(list)
    for record in records:
        if record.project_id in corpora:
            by_project[record.project_id].append(record)
    for project, members in sorted(by_project.items()):
        corpus = corpora[project]
        docs = ws.embeddings.embed(corpus.texts, model_version, Purpose.EVALUATION)
        queries = ws.embeddings.embed([r.query_text for r in members], model_version, Purpose.EVALUATION)
        order, _ = top_k(queries, docs, K)
        for row, record in enumerate(members):
            metrics = query_metrics([corpus.chunk_ids[j] for j in order[row]], set(record.expected_results))
            for m in METRICS:
                per_query[m].append(metrics[m])
    return per_query


def score_guard(
    ws: Workspace, ref: str, baseline: str, candidate: str, *, samples: int, metric: str, max_drop: float
) -> dict[str, Any]:
    """Both models on guard set ``ref``: means, deltas, CIs, and whether ``metric`` dropped by
    more than ``max_drop`` (the stored summary ``decide`` reads)."""
    if not ws.objects.exists(corpus_key(ref)):
        raise ValueError(f"guard set {ref}: has no stored corpus")
    records = list(read_evaluation_set(ws, ref))
    corpora = _guard_corpora(ws, ref)
    base = _per_query(ws, baseline, records, corpora)
    cand = _per_query(ws, candidate, records, corpora)
    summary: dict[str, Any] = {
        "evaluation_dataset_ref": ref,
        "queries": len(base[metric]),
        "metric": metric,
        "max_drop": max_drop,
        "baseline": {},
        "candidate": {},
        "delta": {},
        "ci95": {},
    }
    for m in METRICS:
        b, c = np.asarray(base[m]), np.asarray(cand[m])
        summary["baseline"][m] = exact_mean(b)
        summary["candidate"][m] = exact_mean(c)
        summary["delta"][m] = exact_mean(c - b)
        summary["ci95"][m] = list(paired_bootstrap(c - b, samples))
    summary["forgetting"] = summary["delta"][metric] < -max_drop
    return summary
