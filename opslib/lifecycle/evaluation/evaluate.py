"""Stage 40: candidate vs baseline on an evaluation set → ModelEvaluation + per-query detail.

Dense retrieval, exact: each query is embedded by each model and ranked against every chunk of
its project's READY videos by cosine similarity; the top 5 are scored with ``recall_at_5``,
``mrr_at_5`` and ``ndcg_at_5`` (binary relevance: the expected chunk ids). Deltas get paired
bootstrap 95 % confidence intervals (queries resampled together for both models) and
win/tie/loss counts. PASS iff every candidate mean ≥ its baseline mean; ``decide`` recomputes
the verdict from ``quality_metrics`` and ``pass_criteria`` alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import select

from opslib.control.runs import RunError, get_run, mark_failed, mark_ready
from opslib.corpus.indexing import stored_vectors
from opslib.db.models import (
    Chunk,
    Decision,
    FailureType,
    ModelEvaluation,
    ModelVersion,
    RunStage,
    RunStatus,
    Video,
    VideoStatus,
)
from opslib.errors import Invalid
from opslib.infra.embedding import Purpose
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import read_groups
from opslib.lifecycle.evaluation.sets import (
    EvalRecord,
    normalise_query,
    read_evaluation_set,
)

log = get_logger(__name__)
K = 5
METRICS = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
DEFAULT_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 20261201


class EvaluationError(Invalid):
    pass


# Metrics ----------------------------------------------------------------------------------
def query_metrics(ranked: list[str], relevant: set[str], k: int = K) -> dict[str, float]:
    """recall@k, MRR@k and nDCG@k (binary gains, log2 discount) of one ranked list."""
    top = ranked[:k]
    hits = [1.0 if doc in relevant else 0.0 for doc in top]
    recall = sum(hits) / len(relevant) if relevant else 0.0
    mrr = next((1.0 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return {"recall_at_5": recall, "mrr_at_5": mrr, "ndcg_at_5": dcg / idcg if idcg else 0.0}


def paired_bootstrap(deltas: np.ndarray, samples: int, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``deltas`` under resampling of queries."""
    if len(deltas) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 256):  # bounded memory for large query sets
        block = min(256, samples - start)
        picks = rng.integers(0, len(deltas), size=(block, len(deltas)))
        means[start : start + block] = deltas[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


PASS_CRITERIA: dict[str, Any] = {
    "rule": "PASS iff for every metric the candidate mean >= the baseline mean",
    "metrics": list(METRICS),
    "comparison": "candidate_mean >= baseline_mean",
}


def decide(quality_metrics: dict[str, Any], pass_criteria: dict[str, Any]) -> tuple[Decision, str | None]:
    """The verdict from the stored summary alone (so anyone can re-check it)."""
    failing = [m for m in pass_criteria["metrics"] if quality_metrics["candidate"][m] < quality_metrics["baseline"][m]]
    if failing:
        detail = ", ".join(
            f"{m} {quality_metrics['candidate'][m]:.4f} < {quality_metrics['baseline'][m]:.4f}" for m in failing
        )
        return Decision.FAIL, f"candidate below baseline: {detail}"
    return Decision.PASS, None


# Retrieval --------------------------------------------------------------------------------
@dataclass
class _Project:
    chunk_ids: list[str]
    texts: list[str]


def _project_corpora(ws: Workspace, projects: set[str]) -> dict[str, _Project]:
    corpora: dict[str, _Project] = {}
    with ws.db.read() as session:
        for project in sorted(projects):
            rows = session.execute(
                select(Chunk.id, Chunk.enriched_text)
                .join(Video, Video.id == Chunk.video_id)
                .where(Video.project_id == project, Video.status == VideoStatus.READY)
                .order_by(Chunk.id)
            ).all()
            corpora[project] = _Project([r[0] for r in rows], [r[1] for r in rows])
    return corpora


def _corpus_vectors(ws: Workspace, model_version: str, corpus: _Project, progress: bool) -> np.ndarray:
    """The project's chunk vectors: reused from an index of this model when present, else embedded."""
    stored = stored_vectors(ws, model_version, corpus.chunk_ids)
    missing = [i for i, c in enumerate(corpus.chunk_ids) if c not in stored]
    fresh = ws.embeddings.embed(
        [corpus.texts[i] for i in missing], model_version, Purpose.EVALUATION, show_progress=progress
    )
    vectors = dict(zip((corpus.chunk_ids[i] for i in missing), fresh, strict=True))  # one row per text
    vectors.update(stored)
    return np.stack([vectors[c] for c in corpus.chunk_ids]).astype(np.float32)


def rank(
    ws: Workspace, model_version: str, records: list[EvalRecord], corpora: dict[str, _Project], progress: bool = False
) -> list[list[tuple[str, float]]]:
    """Top-K (chunk id, cosine) per record, exact search over its project's chunks."""
    results: list[list[tuple[str, float]]] = [[] for _ in records]
    by_project: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_project[record.project_id].append(i)
    for project, indices in by_project.items():
        corpus = corpora[project]
        if not corpus.chunk_ids:
            continue
        docs = _corpus_vectors(ws, model_version, corpus, progress)
        queries = ws.embeddings.embed([records[i].query_text for i in indices], model_version, Purpose.EVALUATION)
        scores = queries @ docs.T  # both L2-normalised: cosine
        for row, i in enumerate(indices):
            top = np.argsort(-scores[row], kind="stable")[:K]
            results[i] = [(corpus.chunk_ids[j], float(scores[row, j])) for j in top]
    return results


# The stage --------------------------------------------------------------------------------
@dataclass
class EvaluationOutcome:
    run_id: int
    evaluation_id: int
    decision: Decision
    fail_reason: str | None
    quality_metrics: dict[str, Any]
    pass_criteria: dict[str, Any]
    detail_key: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def frame(self) -> Any:
        """Headline table: baseline, candidate, delta and its CI per metric."""
        q = self.quality_metrics
        return pd.DataFrame(
            {
                "baseline": [q["baseline"][m] for m in METRICS],
                "candidate": [q["candidate"][m] for m in METRICS],
                "delta": [q["delta"][m] for m in METRICS],
                "ci95_low": [q["ci95"][m][0] for m in METRICS],
                "ci95_high": [q["ci95"][m][1] for m in METRICS],
                "wins": [q["win_tie_loss"][m]["win"] for m in METRICS],
                "ties": [q["win_tie_loss"][m]["tie"] for m in METRICS],
                "losses": [q["win_tie_loss"][m]["loss"] for m in METRICS],
            },
            index=list(METRICS),
        ).round(4)


def training_overlap(ws: Workspace, dataset_version: str, records: list[EvalRecord]) -> int:
    """How many evaluation queries (per project) the training dataset's groups also hold."""
    wanted = {(r.project_id, normalise_query(r.query_text)) for r in records}
    return len(wanted & {(g["project_id"], normalise_query(g["query_text"])) for g in read_groups(ws, dataset_version)})


def evaluate_run(
    ws: Workspace,
    run_id: int,
    evaluation_dataset_ref: str,
    *,
    bootstrap_samples: int = DEFAULT_BOOTSTRAP,
    progress: bool = False,
) -> EvaluationOutcome:
    """Evaluate RUNNING run ``run_id``; PASS → READY_FOR_RELEASE, below criteria → FAILED/FAIL.

    The detail artifact is published first, then the ModelEvaluation row and the run's
    transition commit together — a READY run always has its model, summary and detail.
    """
    if bootstrap_samples < 100:
        raise EvaluationError(f"bootstrap_samples {bootstrap_samples}: must be >= 100")
    run = get_run(ws.db, run_id)
    if run.status is not RunStatus.RUNNING:
        raise RunError(f"run {run_id}: is {run.status.value}, evaluation needs a RUNNING run")
    assert run.candidate_model_version and run.baseline_model_version and run.dataset_version
    if run.candidate_model_version == run.baseline_model_version:  # a named candidate that started serving since
        raise EvaluationError(f"run {run_id}: candidate {run.candidate_model_version} is the model serving now")
    with ws.db.read() as session:
        if session.get(ModelVersion, run.candidate_model_version) is None:
            raise EvaluationError(f"run {run_id}: candidate {run.candidate_model_version} is not trained yet")
    records = list(read_evaluation_set(ws, evaluation_dataset_ref))
    overlap = training_overlap(ws, run.dataset_version, records)
    if overlap:
        raise EvaluationError(
            f"evaluation set {evaluation_dataset_ref} shares {overlap} queries with training "
            f"dataset {run.dataset_version}: the comparison would not be fair"
        )
    corpora = _project_corpora(ws, {r.project_id for r in records})
    baseline = rank(ws, run.baseline_model_version, records, corpora, progress)
    candidate = rank(ws, run.candidate_model_version, records, corpora, progress)

    details: list[dict[str, Any]] = []
    per_query: dict[str, dict[str, list[float]]] = {
        "baseline": {m: [] for m in METRICS},
        "candidate": {m: [] for m in METRICS},
    }
    unjudged = {"baseline": 0, "candidate": 0}
    evaluated = skipped = 0
    for record, base, cand in zip(records, baseline, candidate, strict=True):  # rank: one list per record
        relevant = set(record.expected_results) & set(corpora[record.project_id].chunk_ids)
        if not relevant:
            skipped += 1  # its expected chunks are gone: the query cannot be judged
            continue
        evaluated += 1
        row: dict[str, Any] = {
            "query_text": record.query_text,
            "project_id": record.project_id,
            "expected_results": sorted(relevant),
        }
        for name, ranked in (("baseline", base), ("candidate", cand)):
            ids = [doc for doc, _ in ranked]
            metrics = query_metrics(ids, relevant)
            for m in METRICS:
                per_query[name][m].append(metrics[m])
            unjudged[name] += sum(doc not in relevant for doc in ids)
            row[name] = {"returned": [{"chunk_id": d, "score": round(s, 6)} for d, s in ranked], **metrics}
        details.append(row)
    if not evaluated:
        raise EvaluationError(
            f"evaluation set {evaluation_dataset_ref}: no query has its expected chunks in the corpus"
        )

    quality = _summarise(per_query, bootstrap_samples)
    quality["coverage"] = {
        "queries": len(records),
        "evaluated": evaluated,
        "skipped_missing_expected": skipped,
        "unjudged_share_baseline": round(unjudged["baseline"] / (evaluated * K), 4),
        "unjudged_share_candidate": round(unjudged["candidate"] / (evaluated * K), 4),
    }
    # Each model is judged at the precision it serves at (recorded with the version): what users get.
    quality["encoding"] = {
        "device": ws.embeddings.device,
        "baseline_precision": ws.embeddings.precision(run.baseline_model_version),
        "candidate_precision": ws.embeddings.precision(run.candidate_model_version),
    }
    decision, fail_reason = decide(quality, PASS_CRITERIA)

    detail_key = f"evaluations/run-{run_id:05d}-{evaluation_dataset_ref}/detail.jsonl"
    payload = b"".join(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n" for d in details)
    if not ws.objects.exists(detail_key):  # a resumed evaluation computes the same bytes
        ws.objects.put_bytes(detail_key, payload)
    with ws.db.transaction() as session:
        evaluation = ModelEvaluation(
            run_id=run_id,
            candidate_model_version=run.candidate_model_version,
            baseline_model_version=run.baseline_model_version,
            evaluation_dataset_ref=evaluation_dataset_ref,
            sample_count=evaluated,
            quality_metrics=quality,
            pass_criteria=PASS_CRITERIA,
            overall_decision=decision,
            fail_reason=fail_reason,
            detail_artifact_path=ws.objects.uri(detail_key),
        )
        session.add(evaluation)
        session.flush()
        if decision is Decision.PASS:
            mark_ready(session, run_id, evaluation_id=evaluation.id)
        else:
            mark_failed(
                session,
                run_id,
                stage=RunStage.EVALUATION,
                failure_type=FailureType.FAIL,
                reason=fail_reason or "below criteria",
                evaluation_id=evaluation.id,
            )
        evaluation_id = evaluation.id
    log.info("run evaluated", extra={"run_id": run_id, "decision": decision.value, "evaluation_id": evaluation_id})
    return EvaluationOutcome(run_id, evaluation_id, decision, fail_reason, quality, PASS_CRITERIA, detail_key, details)


def _mean(values: np.ndarray) -> float:
    """The mean over an exactly rounded sum (``math.fsum``): it does not depend on the order of
    the queries, so a candidate whose per-query values are the baseline's reshuffled (as many
    wins as losses, of the same sizes) ties it exactly and passes (≥). ``ndarray.mean`` could put
    it an ulp below and fail it as "0.4750 < 0.4750"."""
    return math.fsum(values.tolist()) / len(values)


def _summarise(per_query: dict[str, dict[str, list[float]]], samples: int) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "baseline": {},
        "candidate": {},
        "delta": {},
        "ci95": {},
        "win_tie_loss": {},
        "bootstrap_samples": samples,
        "bootstrap_seed": BOOTSTRAP_SEED,
    }
    for m in METRICS:
        base = np.asarray(per_query["baseline"][m])
        cand = np.asarray(per_query["candidate"][m])
        deltas = cand - base
        summary["baseline"][m] = _mean(base)
        summary["candidate"][m] = _mean(cand)
        summary["delta"][m] = _mean(deltas)
        summary["ci95"][m] = list(paired_bootstrap(deltas, samples))
        summary["win_tie_loss"][m] = {
            "win": int((deltas > 1e-12).sum()),
            "tie": int((np.abs(deltas) <= 1e-12).sum()),
            "loss": int((deltas < -1e-12).sum()),
        }
    return summary


def top_changes(
    details: list[dict[str, Any]], metric: str = "ndcg_at_5", n: int = 5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(top regressions, top wins) by the per-query change of ``metric``."""
    scored = sorted(details, key=lambda d: d["candidate"][metric] - d["baseline"][metric])
    regressions = [d for d in scored if d["candidate"][metric] < d["baseline"][metric]][:n]
    wins = [d for d in reversed(scored) if d["candidate"][metric] > d["baseline"][metric]][:n]
    return regressions, wins


def read_details(ws: Workspace, detail_key: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in ws.objects.iter_lines(detail_key)]
