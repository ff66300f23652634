"""Stage 40: candidate vs baseline on an evaluation set → ModelEvaluation + per-query detail.

Dense retrieval, exact: each query is embedded by each model and ranked against every chunk of
its project's READY videos by cosine similarity; the top 5 are scored with ``recall_at_5``,
``mrr_at_5`` and ``ndcg_at_5`` (binary relevance: the expected chunk ids). Deltas get paired
bootstrap 95 % confidence intervals (queries resampled together for both models), paired
randomisation p-values with Holm's correction over the three metrics, and win/tie/loss counts.
PASS iff every candidate mean ≥ its baseline mean; ``decide`` recomputes the verdict from
``quality_metrics`` and ``pass_criteria`` alone. The release rule (also in ``pass_criteria``): a
PASS releases by itself only when the primary metric's CI lower bound is above the minimum effect
and the primary metric does not fall on the hybrid serving path (keyword + dense, fused: what users
get, also summarised); otherwise the run is READY_FOR_RELEASE but held until an operator promotes
it (``release_hold`` recomputes that from the stored summary too). A guard set (``guard``) catches
forgetting: a drop beyond its margin there FAILs the run. Beside the verdict, never part of it:
each model's fit to the corpus and the keyword path's metrics alone (``quality_metrics["fit"]``,
opslib.lifecycle.corpus_fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from opslib.control.datasets import open_dataset
from opslib.control.runs import RunError, get_run, mark_failed, mark_ready
from opslib.db.models import (
    Decision,
    FailureType,
    ModelEvaluation,
    ModelVersion,
    RunStage,
    RunStatus,
)
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.model_artifacts import read_manifest
from opslib.infra.workspace import Workspace
from opslib.lifecycle.corpus_fit import FIT_THRESHOLDS, fit_warnings, model_fit, sample_texts
from opslib.lifecycle.evaluation.guard import guard_set, score_guard
from opslib.lifecycle.evaluation.metrics import (
    BOOTSTRAP_SEED,
    METRICS,
    K,
    exact_mean,
    holm,
    paired_bootstrap,
    query_metrics,
    randomisation_p_value,
)
from opslib.lifecycle.evaluation.retrieval import (
    ProjectCorpus,
    hybrid_top,
    keyword_only_top,
    keyword_top,
    project_corpora,
    rank,
)
from opslib.lifecycle.evaluation.sets import EvalRecord, read_evaluation_set
from opslib.lifecycle.feedback.queries import normalise_query

log = get_logger(__name__)
DEFAULT_BOOTSTRAP = 1000
VECTOR_K = 20  # the serving path's vector candidates (vector top-20 into the fusion, docs/contracts.md)


class EvaluationError(Invalid):
    pass


PASS_CRITERIA: dict[str, Any] = {
    "rule": "PASS iff for every metric the candidate mean >= the baseline mean",
    "metrics": list(METRICS),
    "comparison": "candidate_mean >= baseline_mean",
}
RELEASE_RULE = (
    "a PASS releases automatically only when the primary metric's paired-bootstrap 95 % CI lower bound "
    "is above min_effect and, on the hybrid serving path, the primary metric does not fall; otherwise "
    "it is held until an operator promotes it"
)


GUARD_RULE = (
    "FAIL (forgetting) when the candidate's metric on the guard set is below the baseline's by more than max_drop"
)


def pass_criteria(
    primary_metric: str = "ndcg_at_5",
    min_effect: float = 0.0,
    guard_ref: str | None = None,
    guard_max_drop: float = 0.02,
) -> dict[str, Any]:
    """The verdict rule, the guard and the release rule, as stored with every evaluation."""
    if primary_metric not in METRICS:
        raise EvaluationError(f"primary metric {primary_metric!r}: must be one of {', '.join(METRICS)}")
    criteria = {
        **PASS_CRITERIA,
        "release": {"primary_metric": primary_metric, "min_effect": min_effect, "rule": RELEASE_RULE},
    }
    if guard_ref is not None:
        criteria["guard"] = {
            "evaluation_dataset_ref": guard_ref,
            "metric": primary_metric,
            "max_drop": guard_max_drop,
            "rule": GUARD_RULE,
        }
    return criteria


def decide(quality_metrics: dict[str, Any], pass_criteria: dict[str, Any]) -> tuple[Decision, str | None]:
    """The verdict from the stored summary alone (so anyone can re-check it)."""
    reasons = []
    failing = [m for m in pass_criteria["metrics"] if quality_metrics["candidate"][m] < quality_metrics["baseline"][m]]
    if failing:
        detail = ", ".join(
            f"{m} {quality_metrics['candidate'][m]:.4f} < {quality_metrics['baseline'][m]:.4f}" for m in failing
        )
        reasons.append(f"candidate below baseline: {detail}")
    rule, guard = pass_criteria.get("guard"), quality_metrics.get("guard")
    if rule is not None and guard is not None:
        metric, drop = rule["metric"], float(rule["max_drop"])
        if guard["delta"][metric] < -drop:
            reasons.append(
                f"forgetting: on guard set {rule['evaluation_dataset_ref']} {metric} fell "
                f"{guard['baseline'][metric]:.4f} → {guard['candidate'][metric]:.4f} "
                f"({guard['delta'][metric]:+.4f}, more than the allowed {drop:.4f})"
            )
    if reasons:
        return Decision.FAIL, "; ".join(reasons)
    return Decision.PASS, None


def release_hold(quality_metrics: dict[str, Any], pass_criteria: dict[str, Any]) -> str | None:
    """Why a PASS must wait for an operator (None: it may release itself), from the stored
    summary alone. Evaluations stored before the release rule existed carry none: never held; nor
    is a precision change of the serving model's own weights (no lift to be significant: it
    releases when it is no worse)."""
    rule = pass_criteria.get("release")
    if rule is None or quality_metrics.get("encoding", {}).get("precision_change_only"):
        return None
    metric, floor = rule["primary_metric"], float(rule["min_effect"])
    low, high = quality_metrics["ci95"][metric]
    if low <= floor:
        where = "includes 0" if low <= 0 <= high else f"is not above the minimum effect {floor:+.4f}"
        return (
            f"not significant: {metric} delta {quality_metrics['delta'][metric]:+.4f}, 95 % CI "
            f"[{low:+.4f}, {high:+.4f}] {where} — promote to release it anyway"
        )
    hybrid = quality_metrics.get("hybrid")
    if hybrid is not None and hybrid["delta"][metric] < 0:
        # What users get is the hybrid path: a model that wins alone but loses there is not shipped unseen.
        return (
            f"worse where users search: on the hybrid serving path {metric} falls "
            f"{hybrid['baseline'][metric]:.4f} → {hybrid['candidate'][metric]:.4f} "
            f"({hybrid['delta'][metric]:+.4f}) — promote to release it anyway"
        )
    return None


NO_DIFFERENCE = "no difference distinguishable from zero"


def difference_strength(quality_metrics: dict[str, Any]) -> str:
    """How strong the candidate's difference is, from the stored deltas and their paired-bootstrap
    95 % CIs: ``NO_DIFFERENCE`` when every metric's CI includes 0 (a PASS or FAIL by the means
    alone: noise cannot be ruled out), else which metrics are significantly better or worse."""
    ci, delta = quality_metrics["ci95"], quality_metrics["delta"]
    better = [m for m in METRICS if ci[m][0] > 0]
    worse = [m for m in METRICS if ci[m][1] < 0]
    if not better and not worse:
        return f"{NO_DIFFERENCE} (every metric's 95 % CI includes 0)"

    def named(metrics: list[str]) -> str:
        return ", ".join(f"{m} {delta[m]:+.4f} [{ci[m][0]:+.4f}, {ci[m][1]:+.4f}]" for m in metrics)

    parts = []
    if better:
        parts.append(f"significantly better on {named(better)}")
    if worse:
        parts.append(f"significantly worse on {named(worse)}")
    unclear = [m for m in METRICS if m not in better and m not in worse]
    if unclear:
        parts.append(f"no difference distinguishable from zero on {', '.join(unclear)}")
    return "; ".join(parts)


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

    @property
    def headline(self) -> str:
        """The banner's sentence: how strong the difference is, the verdict's reason and what
        happens to the run next."""
        strength = difference_strength(self.quality_metrics)
        if self.decision is not Decision.PASS:
            return f"{strength}; {self.fail_reason}: run FAILED (FAIL)"
        hold = self.quality_metrics.get("release", {}).get("hold")
        if hold:
            return f"{strength}; candidate meets every criterion, but {hold}: run READY_FOR_RELEASE, held"
        metric = self.pass_criteria.get("release", {}).get("primary_metric")
        low = self.quality_metrics["ci95"][metric][0] if metric else None
        significant = f" ({metric} 95 % CI lower bound {low:+.4f} > 0)" if low is not None else ""
        return (
            f"{strength}; candidate meets every criterion and the lift is significant{significant}: "
            "run READY_FOR_RELEASE"
        )

    def hybrid_frame(self) -> Any:
        """The same table for the hybrid serving path (keyword + dense, RRF, top 5)."""
        return _frame(self.quality_metrics["hybrid"]) if "hybrid" in self.quality_metrics else pd.DataFrame()

    def guard_frame(self) -> Any:
        """The guard set: baseline, candidate, delta and its CI per metric."""
        guard = self.quality_metrics.get("guard")
        if guard is None:
            return pd.DataFrame()
        return pd.DataFrame(
            {
                "baseline": [guard["baseline"][m] for m in METRICS],
                "candidate": [guard["candidate"][m] for m in METRICS],
                "delta": [guard["delta"][m] for m in METRICS],
                "ci95_low": [guard["ci95"][m][0] for m in METRICS],
                "ci95_high": [guard["ci95"][m][1] for m in METRICS],
            },
            index=list(METRICS),
        ).round(4)

    def frame(self) -> Any:
        """Headline table: baseline, candidate, delta, its CI and p-values (raw and Holm) per metric."""
        return _frame(self.quality_metrics)


def _frame(q: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "baseline": [q["baseline"][m] for m in METRICS],
            "candidate": [q["candidate"][m] for m in METRICS],
            "delta": [q["delta"][m] for m in METRICS],
            "ci95_low": [q["ci95"][m][0] for m in METRICS],
            "ci95_high": [q["ci95"][m][1] for m in METRICS],
            "p_value": [q.get("p_value", {}).get(m) for m in METRICS],
            "p_holm": [q.get("p_value_holm", {}).get(m) for m in METRICS],
            "wins": [q["win_tie_loss"][m]["win"] for m in METRICS],
            "ties": [q["win_tie_loss"][m]["tie"] for m in METRICS],
            "losses": [q["win_tie_loss"][m]["loss"] for m in METRICS],
        },
        index=list(METRICS),
    ).round(4)


def _weights(ws: Workspace, model_version: str) -> dict[str, str]:
    """The hashes of a version's weight files (not its config or manifest)."""
    files = read_manifest(ws, model_version).files
    return {path: digest for path, digest in files.items() if path.endswith((".safetensors", ".bin"))}


def training_overlap(ws: Workspace, dataset_version: str, records: list[EvalRecord]) -> int:
    """How many evaluation queries (per project) the training dataset's groups also hold (read
    verified, like every read of a dataset: ``opslib.control.datasets.open_dataset``)."""
    wanted = {(r.project_id, normalise_query(r.query_text)) for r in records}
    with open_dataset(ws.db, ws.objects, dataset_version) as handle:
        groups = [orjson.loads(line) for line in handle if line.strip()]
    held = {(g["project_id"], normalise_query(g["query_text"])) for g in groups}
    return len(wanted & held)


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
    assert run.candidate_model_version and run.baseline_model_version
    if run.candidate_model_version == run.baseline_model_version:  # a named candidate that started serving since
        raise EvaluationError(f"run {run_id}: candidate {run.candidate_model_version} is the model serving now")
    with ws.db.read() as session:
        if session.get(ModelVersion, run.candidate_model_version) is None:
            raise EvaluationError(f"run {run_id}: candidate {run.candidate_model_version} is not trained yet")
    records = list(read_evaluation_set(ws, evaluation_dataset_ref))
    # A delivered candidate (no dataset) was not trained here: there is no training set to overlap.
    overlap = training_overlap(ws, run.dataset_version, records) if run.dataset_version else 0
    if overlap:
        raise EvaluationError(
            f"evaluation set {evaluation_dataset_ref} shares {overlap} queries with training "
            f"dataset {run.dataset_version}: the comparison would not be fair"
        )
    corpora = project_corpora(ws, {r.project_id for r in records})
    # Dense top-20 per model: its top 5 is what is judged; all 20 feed the hybrid serving path.
    # Phase lines in the kernel's log: what a watcher of a long evaluation sees it doing.
    log.info("ranking with the baseline", extra={"model": run.baseline_model_version, "queries": len(records)})
    baseline_20 = rank(ws, run.baseline_model_version, records, corpora, progress, k=VECTOR_K)
    log.info("ranking with the candidate", extra={"model": run.candidate_model_version, "queries": len(records)})
    candidate_20 = rank(ws, run.candidate_model_version, records, corpora, progress, k=VECTOR_K)
    baseline = [ranked[:K] for ranked in baseline_20]
    candidate = [ranked[:K] for ranked in candidate_20]
    keyword_20 = keyword_top(ws, records)  # model-independent: once, for both hybrid lists
    shown = {
        "baseline": hybrid_top(ws, records, baseline_20, keyword=keyword_20),
        "candidate": hybrid_top(ws, records, candidate_20, keyword=keyword_20),
    }
    keyword_5 = keyword_only_top(ws, records, keyword_20)
    hybrid: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METRICS} for name in shown}
    keyword_only: dict[str, list[float]] = {m: [] for m in METRICS}

    details: list[dict[str, Any]] = []
    per_query: dict[str, dict[str, list[float]]] = {
        "baseline": {m: [] for m in METRICS},
        "candidate": {m: [] for m in METRICS},
    }
    unjudged = {"baseline": 0, "candidate": 0}
    evaluated = skipped = 0
    for i, (record, base, cand) in enumerate(zip(records, baseline, candidate, strict=True)):  # one list per record
        relevant = set(record.expected_results) & set(corpora[record.project_id].chunk_ids)
        if not relevant:
            skipped += 1  # its expected chunks are gone: the query cannot be judged
            continue
        evaluated += 1
        for name, lists in shown.items():
            metrics = query_metrics(lists[i], relevant)
            for m in METRICS:
                hybrid[name][m].append(metrics[m])
        for m, value in query_metrics(keyword_5[i], relevant).items():
            keyword_only[m].append(value)
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

    log.info("bootstrapping the deltas", extra={"queries": evaluated, "samples": bootstrap_samples})
    quality = _summarise(per_query, bootstrap_samples)
    # What users get: the same queries through the hybrid serving path (not the verdict; the
    # release rule holds a PASS whose primary metric falls here).
    quality["hybrid"] = _summarise(hybrid, bootstrap_samples)
    quality["coverage"] = {
        "queries": len(records),
        "evaluated": evaluated,
        "skipped_missing_expected": skipped,
        "unjudged_share_baseline": round(unjudged["baseline"] / (evaluated * K), 4),
        "unjudged_share_candidate": round(unjudged["candidate"] / (evaluated * K), 4),
    }
    # Does each model read this corpus at all (truncation, tokens per script, [UNK]), and what the
    # keyword path finds without a model: shown beside the verdict, never part of it.
    log.info("measuring model-corpus fit", extra={"models": [run.baseline_model_version, run.candidate_model_version]})
    quality["fit"] = corpus_fit_summary(
        ws, [run.baseline_model_version, run.candidate_model_version], corpora, records, keyword_only
    )
    # Each model is judged at the precision it serves at (recorded with the version): what users get.
    quality["encoding"] = {
        "device": ws.embeddings.device,
        "baseline_precision": ws.embeddings.precision(run.baseline_model_version),
        "candidate_precision": ws.embeddings.precision(run.candidate_model_version),
        # The baseline's own weights at another precision (opsbench change-precision): an operator
        # chose it for speed, and it releases when it is no worse — there is no lift to be significant.
        "precision_change_only": _weights(ws, run.baseline_model_version) == _weights(ws, run.candidate_model_version)
        and ws.embeddings.precision(run.baseline_model_version) != ws.embeddings.precision(run.candidate_model_version),
    }
    s = ws.settings
    guard_ref = guard_set(ws, s.guard_builtin)
    criteria = pass_criteria(s.release_primary_metric, s.release_min_effect, guard_ref, s.guard_max_drop)
    if guard_ref is not None:
        log.info("scoring the guard set", extra={"guard": guard_ref})
        quality["guard"] = score_guard(
            ws,
            guard_ref,
            run.baseline_model_version,
            run.candidate_model_version,
            samples=bootstrap_samples,
            metric=s.release_primary_metric,
            max_drop=s.guard_max_drop,
        )
    decision, fail_reason = decide(quality, criteria)
    hold = release_hold(quality, criteria) if decision is Decision.PASS else None
    quality["release"] = {"automatic": decision is Decision.PASS and hold is None, "hold": hold}

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
            pass_criteria=criteria,
            overall_decision=decision,
            fail_reason=fail_reason,
            detail_artifact_path=ws.objects.uri(detail_key),
        )
        session.add(evaluation)
        session.flush()
        if decision is Decision.PASS:
            mark_ready(session, run_id, evaluation_id=evaluation.id, release_hold=hold)
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
    return EvaluationOutcome(run_id, evaluation_id, decision, fail_reason, quality, criteria, detail_key, details)


def corpus_fit_summary(
    ws: Workspace,
    models: list[str],
    corpora: dict[str, ProjectCorpus],
    records: list[EvalRecord],
    keyword_only: dict[str, list[float]],
) -> dict[str, Any]:
    """quality_metrics["fit"]: each model's fit over a seeded sample of the evaluated projects'
    chunks and of the evaluation queries, the warnings it earns, and the keyword path's metrics
    (top 5 through the SOT gate) over the evaluated queries."""
    texts = [text for project in sorted(corpora) for text in corpora[project].texts]
    chunks, queries = sample_texts(texts), sample_texts([r.query_text for r in records])
    fits = [model_fit(ws, model, chunks, queries, len(texts)) for model in models]
    return {
        "baseline": fits[0].as_record(),
        "candidate": fits[1].as_record(),
        "warnings": {"baseline": fit_warnings(fits[0]), "candidate": fit_warnings(fits[1])},
        "thresholds": {
            "max_truncated_share": FIT_THRESHOLDS.max_truncated_share,
            "max_unk_rate": FIT_THRESHOLDS.max_unk_rate,
        },
        "keyword": {m: exact_mean(keyword_only[m]) for m in METRICS},
    }


def _summarise(per_query: dict[str, dict[str, list[float]]], samples: int) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "baseline": {},
        "candidate": {},
        "delta": {},
        "ci95": {},
        "win_tie_loss": {},
        "p_value": {},
        "bootstrap_samples": samples,
        "bootstrap_seed": BOOTSTRAP_SEED,
    }
    for m in METRICS:
        base = np.asarray(per_query["baseline"][m])
        cand = np.asarray(per_query["candidate"][m])
        deltas = cand - base
        summary["baseline"][m] = exact_mean(base)
        summary["candidate"][m] = exact_mean(cand)
        summary["delta"][m] = exact_mean(deltas)
        summary["ci95"][m] = list(paired_bootstrap(deltas, samples))
        summary["p_value"][m] = randomisation_p_value(deltas, samples)
        summary["win_tie_loss"][m] = {
            "win": int((deltas > 1e-12).sum()),
            "tie": int((np.abs(deltas) <= 1e-12).sum()),
            "loss": int((deltas < -1e-12).sum()),
        }
    # Three metrics are tested at once: Holm's correction keeps the family-wise error at 5 %.
    summary["p_value_holm"] = holm(summary["p_value"])
    summary["p_value_test"] = "paired randomisation (sign flips), two-sided; Holm-adjusted over the three metrics"
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
