"""Evaluation: metrics (checked against sentence-transformers' evaluator and trec_eval),
bootstrap (against scipy), verdicts."""

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
import pytrec_eval
import scipy.stats
import torch
from helpers import loop_ready
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from tiny_model import build_blind_model

from opslib.control.runs import get_run, request_run
from opslib.db.models import (
    Decision,
    FailureType,
    ModelEvaluation,
    ModelRelease,
    RunStage,
    RunStatus,
)
from opslib.infra.model_artifacts import register_model
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation import retrieval
from opslib.lifecycle.evaluation.evaluate import (
    BOOTSTRAP_SEED,
    METRICS,
    PASS_CRITERIA,
    EvaluationError,
    K,
    _summarise,
    decide,
    evaluate_run,
    paired_bootstrap,
    query_metrics,
    rank,
    read_details,
)
from opslib.lifecycle.evaluation.report import fit_frame, fit_scripts
from opslib.lifecycle.evaluation.retrieval import ProjectCorpus
from opslib.lifecycle.evaluation.sets import (
    EvalRecord,
    records_from_corpus,
    register_evaluation_set,
)


@pytest.fixture
def run_ws(ws: Workspace) -> tuple[Workspace, int, str]:
    loop_ready(ws)
    ref = register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved").evaluation_dataset_ref
    run_id = request_run(ws.db, trigger_source="manual", trace_id="t").run_id
    assert run_id is not None
    return ws, run_id, ref


def test_query_metrics_by_hand() -> None:
    m = query_metrics(["x", "a", "y", "b", "z", "c"], {"a", "b", "c"})
    assert m["recall_at_5"] == pytest.approx(2 / 3)
    assert m["mrr_at_5"] == pytest.approx(1 / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg_at_5"] == pytest.approx(dcg / idcg)
    assert query_metrics(["x"], {"a"}) == {"recall_at_5": 0.0, "mrr_at_5": 0.0, "ndcg_at_5": 0.0}


# Parity with two independent implementations, on imperfect rankings ---------------------------
# A hand-built evaluation set, no model: 12 chunks of one project and 8 queries. A system's ranking
# of a query is its head (best first) followed by the other chunks in id order, scored 1.00,
# 0.99, … down the whole ranking, so every score is distinct and no implementation has a tie to
# break. Chosen so that the metrics are imperfect and differ per query: hits at ranks 2 and 4 (q0),
# several relevant chunks (q0, q2, q3, q5, q6), more relevant chunks than k (q3: 6), every
# relevant chunk below the top 5 (baseline q2 and q4, candidate q5), a relevant chunk at rank 6 or
# 7 (where a cutoff matters), and perfect queries too (baseline q1, q6).
CHUNKS = tuple(f"c{i:02d}" for i in range(12))
SYSTEMS = ("baseline", "candidate")
CASES: dict[str, tuple[set[str], dict[str, list[str]]]] = {  # query id: (relevant, heads)
    "q0": (
        {"c01", "c03", "c07"},
        {"baseline": ["c00", "c01", "c02", "c03", "c04"], "candidate": ["c03", "c01", "c07"]},
    ),
    "q1": ({"c05"}, {"baseline": ["c05"], "candidate": ["c00", "c01", "c05"]}),
    "q2": (
        {"c08", "c09"},
        {
            "baseline": ["c00", "c01", "c02", "c03", "c04", "c05", "c08"],
            "candidate": ["c08", "c00", "c01", "c02", "c09"],
        },
    ),
    "q3": (
        {"c00", "c01", "c02", "c03", "c04", "c05"},
        {"baseline": ["c00", "c06", "c01", "c07", "c02"], "candidate": ["c06", "c00", "c01", "c02", "c03"]},
    ),
    "q4": ({"c10"}, {"baseline": [], "candidate": ["c11", "c10"]}),
    "q5": (
        {"c02", "c04"},
        {"baseline": ["c04", "c00", "c01", "c03", "c02"], "candidate": ["c00", "c01", "c03", "c05", "c06"]},
    ),
    "q6": (
        {"c07", "c08", "c09", "c11"},
        {"baseline": ["c07", "c08", "c09", "c11"], "candidate": ["c00", "c07", "c08", "c09", "c11"]},
    ),
    "q7": ({"c06"}, {"baseline": ["c01", "c02", "c03", "c06"], "candidate": ["c01", "c02", "c03", "c06"]}),
}


def _scores(head: list[str], chunks: tuple[str, ...] = CHUNKS) -> dict[str, float]:
    ranking = head + [c for c in chunks if c not in head]
    return {c: 1.0 - i / 100 for i, c in enumerate(ranking)}


class _ScoresAsVectors:
    """A stand-in encoder: a chunk (its text is its id) is its one-hot vector, a query its row of
    given scores, so every query·chunk dot product is exactly the score given. It serves the
    stage's ``rank`` (``embed``) and sentence-transformers' evaluator (``encode_query``,
    ``encode_document``, ``similarity``) alike: each retrieves from the same vectors its own way."""

    similarity_fn_name = "dot"
    model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *args: None)

    def __init__(self, chunks: tuple[str, ...], scores: dict[str, dict[str, float]]) -> None:
        self.chunks, self.scores = chunks, scores  # query text → chunk id → score

    def vectors(self, texts: list[str]) -> np.ndarray:
        return np.array(
            [[self.scores[t][c] if t in self.scores else float(c == t) for c in self.chunks] for t in texts]
        )

    def encode_query(self, texts: list[str], **kwargs: object) -> torch.Tensor:
        return torch.from_numpy(self.vectors(texts))

    encode_document = encode_query

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.T


def _rank_with(monkeypatch, encoders: dict[str, _ScoresAsVectors], queries: dict[str, str], chunks) -> dict:  # type: ignore[no-untyped-def]
    """The stage's own ``rank`` over the encoders' vectors, per system (no index: all embedded)."""
    monkeypatch.setattr(retrieval, "stored_vectors", lambda ws, model_version, chunk_ids: {})
    ws = SimpleNamespace(
        embeddings=SimpleNamespace(embed=lambda texts, version, purpose, **kw: encoders[version].vectors(texts))
    )
    records = [EvalRecord(text, "p", ()) for text in queries.values()]
    corpora = {"p": ProjectCorpus(list(chunks), list(chunks), ["v"] * len(chunks), list(range(len(chunks))))}
    return {system: rank(ws, system, records, corpora) for system in encoders}  # type: ignore[arg-type]


@pytest.fixture
def hand_built(monkeypatch) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """(top 5 per query and system as the stage ranks them, the encoders)."""
    encoders = {
        s: _ScoresAsVectors(CHUNKS, {f"query {q}": _scores(heads[s]) for q, (_, heads) in CASES.items()})
        for s in SYSTEMS
    }
    return _rank_with(monkeypatch, encoders, {q: f"query {q}" for q in CASES}, CHUNKS), encoders


def _stage_metrics(ranked: dict, metric=query_metrics) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """Per-query metrics gathered as ``evaluate_run`` gathers them, and its ``_summarise``."""
    per_query: dict[str, dict[str, list[float]]] = {s: {m: [] for m in METRICS} for s in SYSTEMS}
    for i, (relevant, _) in enumerate(CASES.values()):
        for s in SYSTEMS:
            values = metric([doc for doc, _ in ranked[s][i]], relevant & set(CHUNKS))
            for m in METRICS:
                per_query[s][m].append(values[m])
    return per_query, _summarise(per_query, 1000)


def _ir_evaluator(relevant: dict[str, set[str]], queries: dict[str, str], chunks) -> InformationRetrievalEvaluator:  # type: ignore[no-untyped-def]
    return InformationRetrievalEvaluator(
        queries=queries,
        corpus={c: c for c in chunks},
        relevant_docs=relevant,
        mrr_at_k=[K],
        ndcg_at_k=[K],
        accuracy_at_k=[K],
        precision_recall_at_k=[K],
        map_at_k=[K],
        write_csv=False,
    )


def _sentence_transformers(encoders: dict[str, _ScoresAsVectors]) -> dict[str, dict[str, float]]:
    """Means per system from ``InformationRetrievalEvaluator`` (its own retrieval, top-k and metrics)."""
    evaluator = _ir_evaluator({q: rel for q, (rel, _) in CASES.items()}, {q: f"query {q}" for q in CASES}, CHUNKS)
    out = {}
    for s in SYSTEMS:
        result = evaluator(encoders[s])
        out[s] = {
            "recall_at_5": result["dot_recall@5"],
            "mrr_at_5": result["dot_mrr@5"],
            "ndcg_at_5": result["dot_ndcg@5"],
        }
    return out


def _trec_eval() -> dict[str, dict[str, list[float]]]:
    """Per-query values per system from trec_eval's measures (pytrec_eval), in CASES order.

    ``recall_5`` and ``ndcg_cut_5`` cut the full run at 5 themselves; trec_eval's ``recip_rank``
    has no cutoff, so for MRR@5 it is given the top 5 only (see the test of the differences)."""
    qrels = {q: dict.fromkeys(rel, 1) for q, (rel, _) in CASES.items()}
    out = {}
    for s in SYSTEMS:
        run = {q: _scores(heads[s]) for q, (_, heads) in CASES.items()}
        top5 = {q: dict(sorted(scores.items(), key=lambda kv: -kv[1])[:K]) for q, scores in run.items()}
        cut = pytrec_eval.RelevanceEvaluator(qrels, {"recall_5", "ndcg_cut_5"}).evaluate(run)
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top5)
        out[s] = {
            "recall_at_5": [cut[q]["recall_5"] for q in CASES],
            "mrr_at_5": [rr[q]["recip_rank"] for q in CASES],
            "ndcg_at_5": [cut[q]["ndcg_cut_5"] for q in CASES],
        }
    return out


def _gaps(per_query: dict, summary: dict, st: dict, trec: dict) -> dict[tuple[str, str], float]:  # type: ignore[type-arg]
    """Largest |ours - reference| per (reference, metric), over both systems; for trec_eval per query
    and on the mean."""
    gaps: dict[tuple[str, str], float] = {}
    for m in METRICS:
        gaps["sentence-transformers", m] = max(abs(summary[s][m] - st[s][m]) for s in SYSTEMS)
        gaps["trec_eval", m] = max(
            max(abs(a - b) for a, b in zip(per_query[s][m], trec[s][m], strict=True)) for s in SYSTEMS
        )
        gaps["trec_eval", m] = max(
            gaps["trec_eval", m], *(abs(summary[s][m] - math.fsum(trec[s][m]) / len(CASES)) for s in SYSTEMS)
        )
    return gaps


# Deliberately wrong metrics: each must be caught, on its metric, by both references.
def _hits(ranked: list[str], relevant: set[str]) -> list[float]:
    return [1.0 if doc in relevant else 0.0 for doc in ranked[:K]]


def _recall_over_k(ranked: list[str], relevant: set[str]) -> dict[str, float]:  # precision@5, not recall
    return {**query_metrics(ranked, relevant), "recall_at_5": sum(_hits(ranked, relevant)) / K}


def _mrr_rank_off_by_one(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    mrr = next((1.0 / (i + 2) for i, h in enumerate(_hits(ranked, relevant)) if h), 0.0)
    return {**query_metrics(ranked, relevant), "mrr_at_5": mrr}


def _ndcg_discount_off_by_one(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    """log2(rank + 2) with a 1-based rank, i.e. log2(i + 3): a perfect ranking still scores 1."""
    dcg = sum(h / math.log2(i + 3) for i, h in enumerate(_hits(ranked, relevant)))
    idcg = sum(1.0 / math.log2(i + 3) for i in range(min(len(relevant), K)))
    return {**query_metrics(ranked, relevant), "ndcg_at_5": dcg / idcg}


def _ndcg_ideal_over_all_relevant(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    """The ideal DCG over every relevant chunk instead of min(k, #relevant): differs only on q3."""
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(_hits(ranked, relevant)))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(len(relevant)))
    return {**query_metrics(ranked, relevant), "ndcg_at_5": dcg / idcg}


WRONG_METRICS = {
    "recall_at_5": _recall_over_k,
    "mrr_at_5": _mrr_rank_off_by_one,
    "ndcg_at_5": _ndcg_discount_off_by_one,
}


def test_metrics_equal_sentence_transformers_and_trec_eval_on_imperfect_rankings(hand_built) -> None:  # type: ignore[no-untyped-def]
    ranked, encoders = hand_built
    per_query, summary = _stage_metrics(ranked)
    st, trec = _sentence_transformers(encoders), _trec_eval()
    # The set is not one a "perfect ranking scores 1" implementation passes: every mean strictly
    # inside (0, 1), several distinct values per query, zeros (no relevant chunk in the top 5).
    for s in SYSTEMS:
        for m in METRICS:
            assert 0.05 < summary[s][m] < 0.95, (s, m, summary[s][m])
            assert len(set(per_query[s][m])) >= 3 and 0.0 in per_query[s][m], (s, m, per_query[s][m])
    assert [len(r) for r in ranked["baseline"]] == [K] * len(CASES)

    # First, the comparison can fail: each wrong metric is caught by both references, on its
    # metric and nowhere else (gaps of at least 1e-3, far above the 1e-9 the real one must meet).
    for wrong_metric, wrong in [*WRONG_METRICS.items(), ("ndcg_at_5", _ndcg_ideal_over_all_relevant)]:
        gaps = _gaps(*_stage_metrics(ranked, wrong), st, trec)
        caught = {key for key, gap in gaps.items() if gap > 1e-3}
        assert caught == {("sentence-transformers", wrong_metric), ("trec_eval", wrong_metric)}, (wrong.__name__, gaps)

    gaps = _gaps(per_query, summary, st, trec)
    assert max(gaps.values()) < 1e-9, gaps


def test_where_the_references_differ_from_the_stage_by_definition(hand_built, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Known, deliberate differences, tested so that they stay known."""
    ranked, _ = hand_built
    # 1. trec_eval's recip_rank has no cutoff; MRR@5 (ours, sentence-transformers') counts a first
    #    relevant chunk below rank 5 as 0. Candidate q5: first relevant chunk at rank 6.
    relevant, heads = CASES["q5"]
    q5 = list(CASES).index("q5")
    assert query_metrics([d for d, _ in ranked["candidate"][q5]], relevant)["mrr_at_5"] == 0.0
    uncut = pytrec_eval.RelevanceEvaluator({"q5": dict.fromkeys(relevant, 1)}, {"recip_rank"})
    assert uncut.evaluate({"q5": _scores(heads["candidate"])})["q5"]["recip_rank"] == pytest.approx(1 / 6)

    # 2. Ties: the stage's ``rank`` keeps equal scores in corpus order (chunk id ascending, a stable
    #    sort), as sentence-transformers does (-score, corpus_id); trec_eval orders ties by
    #    document id descending. "a" and "b" tie at the top, "b" is relevant.
    chunks = ("a", "b", "c")
    tied = {"tie": _ScoresAsVectors(chunks, {"query": {"a": 0.5, "b": 0.5, "c": 0.1}})}
    ours = [d for d, _ in _rank_with(monkeypatch, tied, {"q": "query"}, chunks)["tie"][0]]
    assert ours == ["a", "b", "c"] and query_metrics(ours, {"b"})["mrr_at_5"] == 0.5
    st = _ir_evaluator({"q": {"b"}}, {"q": "query"}, chunks)(tied["tie"])
    assert st["dot_mrr@5"] == 0.5
    trec = pytrec_eval.RelevanceEvaluator({"q": {"b": 1}}, {"recip_rank"}).evaluate(
        {"q": {"a": 0.5, "b": 0.5, "c": 0.1}}
    )
    assert trec["q"]["recip_rank"] == 1.0 == query_metrics(["b", "a", "c"], {"b"})["mrr_at_5"]

    # 3. A query with no relevant chunk: ``query_metrics`` scores 0 on all three, as trec_eval does;
    #    sentence-transformers leaves such a query out of its means, and so does ``evaluate_run``
    #    (it skips it and counts it in coverage.skipped_missing_expected), so the means agree.
    assert query_metrics(["a", "b"], set()) == {"recall_at_5": 0.0, "mrr_at_5": 0.0, "ndcg_at_5": 0.0}
    judged = pytrec_eval.RelevanceEvaluator({"q": {"a": 0}}, {"recall_5", "recip_rank", "ndcg_cut_5"})
    assert judged.evaluate({"q": {"a": 0.9, "b": 0.1}})["q"] == {"recall_5": 0.0, "recip_rank": 0.0, "ndcg_cut_5": 0.0}
    with_empty = _ir_evaluator({"q": {"b"}, "none": set()}, {"q": "query", "none": "query"}, chunks)(tied["tie"])
    assert with_empty["dot_mrr@5"] == st["dot_mrr@5"] and with_empty["dot_ndcg@5"] == st["dot_ndcg@5"]


# Statistics -------------------------------------------------------------------------------------
def _scipy_bootstrap(cand: np.ndarray, base: np.ndarray, seed: int) -> Any:
    """The reference: scipy's percentile bootstrap, paired (queries resampled together for both
    models), of the mean per-query delta, 95 %."""
    return scipy.stats.bootstrap(
        (cand, base),
        lambda c, b, axis=-1: (c - b).mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=10_000,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )


# Monte-Carlo tolerance. A percentile endpoint estimated from B resamples has a standard error
# of ≈ sqrt(p(1-p)/B) / f(q_p), f the bootstrap distribution's density at that quantile. The
# distribution of a mean of 60 deltas is close to normal with sd σ_b = std(deltas)/√n exactly
# (the plug-in variance), so f(q_.025) = φ(1.96)/σ_b = 0.0584/σ_b and, at B = 10 000, each
# endpoint's SE ≈ sqrt(.025·.975/10⁴)/0.0584 σ_b ≈ 0.027 σ_b; two independent runs differ by
# ≈ 0.038 σ_b (measured over 200 seed pairs: sd 0.034–0.039 σ_b, largest 0.13 σ_b). Tolerance:
# 0.2 σ_b ≈ 5 SEs, a false alarm is < 1e-6 per endpoint — and the seeds are fixed, so the test
# is deterministic. It still rejects a 90 % interval (endpoints 0.32 σ_b inside the 95 % one)
# and (min, max) (≈ 1.5 σ_b outside), as checked below.
MC_TOLERANCE = 0.2


def _paired_metrics(n: int = 60, seed: int = 7) -> dict[str, dict[str, list[float]]]:
    """Per-query metric values on the levels real ones take; the candidate changes ~40 % of them."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.0, 1 / 5, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0])
    per_query: dict[str, dict[str, list[float]]] = {"baseline": {}, "candidate": {}}
    for m in METRICS:
        base = rng.choice(levels, n)
        cand = np.where(rng.random(n) < 0.6, base, rng.choice(levels, n))
        per_query["baseline"][m], per_query["candidate"][m] = base.tolist(), cand.tolist()
    return per_query


def test_paired_bootstrap_equals_scipy_bootstrap() -> None:
    per_query = _paired_metrics()
    summary = _summarise(per_query, 10_000)
    for m in METRICS:
        base, cand = np.array(per_query["baseline"][m]), np.array(per_query["candidate"][m])
        deltas = cand - base
        ours = summary["ci95"][m]
        assert ours == list(paired_bootstrap(deltas, 10_000))  # what is stored is this function's
        sigma = float(deltas.std() / np.sqrt(len(deltas)))
        assert sigma > 0.01

        def off(interval: Any, ours: list[float] = ours, sigma: float = sigma) -> float:
            return max(abs(interval[0] - ours[0]), abs(interval[1] - ours[1])) / sigma

        # With the same seed scipy draws the very same indices (rng.integers(0, n, (B, n)), as
        # paired_bootstrap does in blocks): equal up to float summation order. Should a scipy
        # upgrade change how it draws, this line alone fails; the check below is the contract.
        same = _scipy_bootstrap(cand, base, BOOTSTRAP_SEED).confidence_interval
        assert off(same) < 1e-9, (m, ours, same)
        # Another seed: equal within Monte-Carlo error.
        other = _scipy_bootstrap(cand, base, 1)
        assert off(other.confidence_interval) < MC_TOLERANCE, (m, ours, other.confidence_interval)
        # … and the tolerance is tight enough to catch the wrong interval from the same resamples.
        means = other.bootstrap_distribution
        assert off(np.percentile(means, [5, 95])) > MC_TOLERANCE
        assert off((means.min(), means.max())) > MC_TOLERANCE


def test_paired_bootstrap_known_cases() -> None:
    # Every delta equal: every resample has that mean, the interval has zero width there.
    low, high = paired_bootstrap(np.full(9, 0.1), 2000)
    assert low == high and low == pytest.approx(0.1, abs=1e-15)
    assert paired_bootstrap(np.zeros(10), 500) == (0.0, 0.0)
    assert paired_bootstrap(np.array([]), 500) == (0.0, 0.0)  # no query: no interval

    # Symmetric deltas: the bootstrap distribution is symmetric about 0, so is the interval (within
    # the Monte-Carlo tolerance above; measured over 300 seeds: |low + high| ≤ 0.10 σ_b), and a
    # 95 % interval of a nearly normal mean is ≈ ±1.96 σ_b wide (measured: within ±3 %).
    half = np.array([0.5, 1 / 3, 0.2, 1.0, 0.25, 0.0, 2 / 3, 0.5])
    symmetric = np.concatenate([half, -half])
    sigma = symmetric.std() / np.sqrt(len(symmetric))
    low, high = paired_bootstrap(symmetric, 10_000)
    assert low < 0 < high
    assert abs(low + high) < MC_TOLERANCE * sigma
    assert high - low == pytest.approx(2 * 1.96 * sigma, rel=0.1)
    assert paired_bootstrap(symmetric, 10_000) == (low, high)  # seeded: the same every time
    assert paired_bootstrap(symmetric, 10_000, seed=1) != (low, high)


def test_win_tie_loss_and_the_verdict_from_the_stored_summary_alone(hand_built) -> None:  # type: ignore[no-untyped-def]
    """Counted by hand on the hand-built set (per query: baseline → candidate), e.g. recall
    q0 2/3→1 win, q1 1→1 tie, q2 0→1 win, q3 1/2→2/3 win, q4 0→1 win, q5 1→0 loss, q6, q7 ties."""
    per_query, summary = _stage_metrics(hand_built[0])
    assert summary["win_tie_loss"] == {
        "recall_at_5": {"win": 4, "tie": 3, "loss": 1},
        "mrr_at_5": {"win": 3, "tie": 1, "loss": 4},
        "ndcg_at_5": {"win": 4, "tie": 1, "loss": 3},
    }

    def verdict(per_query: dict) -> tuple[Decision, str | None]:  # type: ignore[type-arg]
        """As stored (a JSON column) and read back: the summary and the criteria, nothing else."""
        stored = orjson.loads(orjson.dumps(_summarise(per_query, 200)))
        criteria = orjson.loads(orjson.dumps(PASS_CRITERIA))
        return decide({k: stored[k] for k in ("baseline", "candidate")}, criteria)

    # FAIL: the candidate is better on recall and nDCG, worse on MRR (0.5104 < 0.59375).
    assert summary["candidate"]["recall_at_5"] > summary["baseline"]["recall_at_5"]
    assert summary["candidate"]["ndcg_at_5"] > summary["baseline"]["ndcg_at_5"]
    assert verdict(per_query) == (Decision.FAIL, "candidate below baseline: mrr_at_5 0.5104 < 0.5938")

    # PASS: a candidate at least as good as the baseline on every query, better on some.
    better = {
        m: [max(b, c) for b, c in zip(per_query["baseline"][m], per_query["candidate"][m], strict=True)]
        for m in METRICS
    }
    assert verdict({"baseline": per_query["baseline"], "candidate": better}) == (Decision.PASS, None)

    # Tie (≥ passes): the candidate does on q5 what the baseline did on q6 and vice versa — one win,
    # one loss, the same mean. ``ndarray.mean`` sums nDCG in another order and put this candidate
    # an ulp below (FAIL "0.5524 < 0.5524"); the stage's means are exactly rounded sums.
    base = per_query["baseline"]
    swapped = {m: [*base[m][:5], base[m][6], base[m][5], base[m][7]] for m in METRICS}
    assert np.mean(swapped["ndcg_at_5"]) < np.mean(base["ndcg_at_5"])  # the order-dependent sum
    tie = _summarise({"baseline": base, "candidate": swapped}, 200)
    assert all(tie["candidate"][m] == tie["baseline"][m] for m in METRICS)
    assert tie["win_tie_loss"]["ndcg_at_5"] == {"win": 1, "tie": 6, "loss": 1}
    assert verdict({"baseline": base, "candidate": swapped}) == (Decision.PASS, None)
    assert verdict({"baseline": base, "candidate": base}) == (Decision.PASS, None)  # identical


def test_identical_candidate_passes_and_the_run_becomes_ready(run_ws, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    register_model(ws, run.candidate_model_version, tiny_model_dir, base_model_version="tiny-base", run_id=run_id)
    with ws.db.read() as session:
        release_before = session.query(ModelRelease).one().row_version
    outcome = evaluate_run(ws, run_id, ref, bootstrap_samples=200)
    assert outcome.decision is Decision.PASS and outcome.fail_reason is None
    q = outcome.quality_metrics
    assert all(q["delta"][m] == 0 and q["ci95"][m] == [0.0, 0.0] for m in PASS_CRITERIA["metrics"])
    assert all(q["win_tie_loss"][m]["tie"] == q["coverage"]["evaluated"] for m in PASS_CRITERIA["metrics"])
    run = get_run(ws.db, run_id)
    assert run.status is RunStatus.READY_FOR_RELEASE and run.evaluation_id == outcome.evaluation_id
    with ws.db.read() as session:
        row = session.get(ModelEvaluation, outcome.evaluation_id)
        assert row.overall_decision is Decision.PASS and row.sample_count == q["coverage"]["evaluated"]
        assert decide(row.quality_metrics, row.pass_criteria) == (Decision.PASS, None)
        assert session.query(ModelRelease).one().row_version == release_before  # serving untouched
    details = read_details(ws, outcome.detail_key)
    assert len(details) == q["coverage"]["evaluated"]
    assert {"query_text", "project_id", "expected_results", "baseline", "candidate"} <= set(details[0])
    assert len(details[0]["candidate"]["returned"]) == 5
    # Model–corpus fit, beside the verdict: both models over the same sample, and the keyword path alone.
    fit = q["fit"]
    assert (fit["baseline"]["model_version"], fit["candidate"]["model_version"]) == (
        "tiny-base",
        run.candidate_model_version,
    )
    assert fit["baseline"]["max_seq_length"] == 128 and fit["baseline"]["chunks"] == fit["candidate"]["chunks"]
    assert fit["warnings"] == {"baseline": [], "candidate": []} and fit["baseline"]["chunks"]["truncated"] == 0
    assert fit["baseline"]["queries"]["texts"] == q["coverage"]["queries"]
    assert fit["keyword"]["recall_at_5"] == pytest.approx(_keyword_recall(ws, details))
    table = fit_frame(q)
    assert list(table.columns) == ["baseline: tiny-base", f"candidate: {run.candidate_model_version}"]
    assert table.loc["keyword recall@5 (no model)"].tolist() == [round(fit["keyword"]["recall_at_5"], 4)] * 2
    assert table.loc["dense recall@5"].tolist() == [round(q["baseline"]["recall_at_5"], 4)] * 2
    assert list(fit_scripts(q).index) == ["latin", "other"]  # the mini corpus has no Hangul


def _keyword_recall(ws: Workspace, details: list[dict[str, Any]]) -> float:
    """recall@5 of the serving path's keyword search alone, through the SOT gate, per judged query."""
    from opslib.corpus.search import keyword_search, sot_gate

    recalls = []
    with ws.db.read() as session:
        for d in details:
            ranked = keyword_search(session, d["query_text"], d["project_id"], 20)
            allowed = sot_gate(session, ranked, d["project_id"])
            top = [c for c in ranked if c in allowed][:5]
            recalls.append(len(set(top) & set(d["expected_results"])) / len(d["expected_results"]))
    return sum(recalls) / len(recalls)


def test_the_same_weights_at_another_precision_are_judged_at_that_precision(run_ws, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A precision change is a candidate like any other: evaluated at the precision it would serve at."""
    from opslib.infra.precision import PrecisionChoice

    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    base = ws.embeddings.precision("tiny-base")
    other = "fp32" if base != "fp32" else "bf16"
    register_model(
        ws,
        run.candidate_model_version,
        tiny_model_dir,
        base_model_version="tiny-base",
        run_id=run_id,
        precision=PrecisionChoice(other, "cpu", "test: the other precision"),
    )
    outcome = evaluate_run(ws, run_id, ref, bootstrap_samples=200)
    assert outcome.quality_metrics["encoding"] == {
        "device": "cpu",
        "baseline_precision": base,
        "candidate_precision": other,
        "precision_change_only": True,  # the base's own weights
    }
    scores = [
        (row["baseline"]["returned"][0]["score"], row["candidate"]["returned"][0]["score"])
        for row in read_details(ws, outcome.detail_key)
    ]
    assert any(b != c for b, c in scores)  # same weights, other precision: the scores moved


def test_a_broken_candidate_fails_with_fail(run_ws, tiny_model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    # Reads no text (every chunk embeds alike, ranked in tie order): it finds none of the answers
    # the reading baseline finds — a FAIL by construction, not by the luck of a random model.
    broken = build_blind_model(tiny_model_dir, tmp_path / "broken")
    register_model(ws, run.candidate_model_version, broken, base_model_version="tiny-base", run_id=run_id)
    outcome = evaluate_run(ws, run_id, ref, bootstrap_samples=200)
    assert outcome.decision is Decision.FAIL and "candidate below baseline" in (outcome.fail_reason or "")
    q = outcome.quality_metrics
    assert all(q["candidate"][m] == 0.0 < q["baseline"][m] for m in METRICS)
    # The hybrid serving path, summarised beside (what keyword search adds is tested with the
    # keyword index, tests/infra/test_keyword_index.py — so only its shape is checked here).
    hybrid = q["hybrid"]
    assert set(hybrid) >= {"baseline", "candidate", "delta", "ci95", "p_value", "p_value_holm", "win_tie_loss"}
    assert all(sum(hybrid["win_tie_loss"][m].values()) == q["coverage"]["evaluated"] for m in METRICS)
    assert list(outcome.hybrid_frame().index) == list(METRICS)
    assert q["guard"]["forgetting"] and "forgetting: on guard set" in outcome.fail_reason  # it reads nothing anywhere
    # The fit says why: the candidate cuts every chunk (and query) at two tokens.
    fit = q["fit"]
    assert fit["candidate"]["max_seq_length"] == 2
    assert fit["candidate"]["chunks"]["truncated"] == fit["candidate"]["chunks"]["texts"] > 0
    assert fit["baseline"]["chunks"]["truncated"] == 0 and fit["warnings"]["baseline"] == []
    assert "truncates 100.0% of sampled chunks at 2 tokens" in fit["warnings"]["candidate"][0]
    run = get_run(ws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.FAILED, RunStage.EVALUATION, FailureType.FAIL)
    assert run.evaluation_id == outcome.evaluation_id
    with ws.db.read() as session:
        row = session.get(ModelEvaluation, outcome.evaluation_id)
        assert decide(row.quality_metrics, row.pass_criteria)[0] is Decision.FAIL
        assert session.query(ModelRelease).one().active_model_version == "tiny-base"


def test_decide_uses_only_the_stored_summary() -> None:
    q = {
        "baseline": {"recall_at_5": 0.5, "mrr_at_5": 0.4, "ndcg_at_5": 0.45},
        "candidate": {"recall_at_5": 0.5, "mrr_at_5": 0.41, "ndcg_at_5": 0.44},
    }
    decision, reason = decide(q, PASS_CRITERIA)
    assert decision is Decision.FAIL and reason == "candidate below baseline: ndcg_at_5 0.4400 < 0.4500"
    q["candidate"]["ndcg_at_5"] = 0.45
    assert decide(q, PASS_CRITERIA) == (Decision.PASS, None)


def test_evaluation_refuses_what_it_cannot_judge_fairly(run_ws, tiny_model_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ws, run_id, ref = run_ws
    run = get_run(ws.db, run_id)
    with pytest.raises(EvaluationError, match="not trained yet"):
        evaluate_run(ws, run_id, ref)
    register_model(ws, run.candidate_model_version, tiny_model_dir, base_model_version="tiny-base", run_id=run_id)
    from opslib.lifecycle.dataset.builder import read_groups

    trained_on = next(iter(read_groups(ws, run.dataset_version)))
    # Bypass the registration check (traffic is what the dataset came from) to prove the stage checks too.
    import opslib.lifecycle.evaluation.sets as sets

    monkeypatch.setattr(sets, "traffic_overlap", lambda ws_, records: [])
    bad_ref = register_evaluation_set(
        ws, [EvalRecord(trained_on["query_text"], trained_on["project_id"], ("mini:q000-a0",))], source="leak"
    ).evaluation_dataset_ref
    with pytest.raises(EvaluationError, match="shares 1 queries with training"):
        evaluate_run(ws, run_id, bad_ref)
    with pytest.raises(EvaluationError, match="bootstrap_samples"):
        evaluate_run(ws, run_id, ref, bootstrap_samples=10)
    assert get_run(ws.db, run_id).status is RunStatus.RUNNING  # refusals change nothing


def _summary(delta: float, low: float, high: float) -> dict:
    metrics = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
    return {
        "baseline": dict.fromkeys(metrics, 0.5),
        "candidate": dict.fromkeys(metrics, 0.5 + delta),
        "delta": dict.fromkeys(metrics, delta),
        "ci95": {m: [low, high] for m in metrics},
    }


def test_the_release_rule_holds_a_pass_whose_interval_reaches_the_minimum_effect() -> None:
    from opslib.lifecycle.evaluation.evaluate import pass_criteria, release_hold

    criteria = pass_criteria("ndcg_at_5", 0.0)
    assert release_hold(_summary(0.03, 0.004, 0.06), criteria) is None  # the CI excludes 0: releases
    held = release_hold(_summary(0.012, -0.010, 0.034), criteria)
    assert held is not None and held.startswith("not significant: ndcg_at_5 delta +0.0120, 95 % CI [-0.0100, +0.0340]")
    assert "includes 0" in held and "promote" in held
    stricter = pass_criteria("recall_at_5", 0.01)
    assert "minimum effect +0.0100" in release_hold(_summary(0.03, 0.004, 0.06), stricter)
    assert release_hold(_summary(0.012, -0.01, 0.03), PASS_CRITERIA) is None  # stored before the rule: never held
    # significant alone, but worse on the hybrid serving path (what users get): held too
    worse_for_users = {**_summary(0.03, 0.004, 0.06), "hybrid": _summary(-0.015, -0.03, 0.0)}
    held = release_hold(worse_for_users, criteria)
    assert held is not None and held.startswith("worse where users search: on the hybrid serving path ndcg_at_5 falls")
    # the serving model's own weights at another precision: released when no worse
    precision_change = {**_summary(0.0, 0.0, 0.0), "encoding": {"precision_change_only": True}}
    assert release_hold(precision_change, criteria) is None
    assert release_hold({**worse_for_users, "hybrid": _summary(0.0, -0.01, 0.01)}, criteria) is None
    with pytest.raises(EvaluationError, match="primary metric"):
        pass_criteria("map")


def test_p_values_are_paired_randomisation_tests_adjusted_by_holm() -> None:
    from opslib.lifecycle.evaluation.metrics import holm, randomisation_p_value

    consistent = np.array([0.2] * 30 + [0.0] * 10)
    assert randomisation_p_value(consistent, 2000) < 0.001  # every non-zero change in one direction
    assert randomisation_p_value(np.zeros(40), 2000) == 1.0
    balanced = np.array([0.2, -0.2] * 20)
    assert randomisation_p_value(balanced, 2000) > 0.9
    assert randomisation_p_value(consistent, 500) == randomisation_p_value(consistent, 500)  # seeded
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def _outcome_with(delta: dict[str, float], ci: dict[str, tuple[float, float]], decision: Decision, **extra: Any):  # type: ignore[no-untyped-def]
    from opslib.lifecycle.evaluation.evaluate import EvaluationOutcome, pass_criteria

    quality = {
        "baseline": dict.fromkeys(METRICS, 0.5),
        "candidate": {m: 0.5 + delta[m] for m in METRICS},
        "delta": delta,
        "ci95": {m: list(ci[m]) for m in METRICS},
        **extra,
    }
    reason = None if decision is Decision.PASS else "candidate below baseline: recall_at_5 0.4000 < 0.5000"
    return EvaluationOutcome(1, 1, decision, reason, quality, pass_criteria(), "detail.jsonl")


def test_the_headline_says_when_no_difference_is_distinguishable_from_zero() -> None:
    crossing = {m: (-0.01, 0.03) for m in METRICS}
    held = _outcome_with(
        dict.fromkeys(METRICS, 0.01), crossing, Decision.PASS, release={"hold": "not significant: ndcg_at_5 …"}
    )
    assert held.headline.startswith("no difference distinguishable from zero (every metric's 95 % CI includes 0); ")
    assert held.headline.endswith("run READY_FOR_RELEASE, held")
    failed = _outcome_with(dict.fromkeys(METRICS, -0.01), {m: (-0.03, 0.0) for m in METRICS}, Decision.FAIL)
    assert failed.headline.startswith("no difference distinguishable from zero")  # a CI reaching 0 includes it
    assert failed.headline.endswith("recall_at_5 0.4000 < 0.5000: run FAILED (FAIL)")


def test_the_headline_names_the_significant_metrics() -> None:
    delta = {"recall_at_5": 0.05, "mrr_at_5": -0.04, "ndcg_at_5": 0.01}
    ci = {"recall_at_5": (0.01, 0.09), "mrr_at_5": (-0.07, -0.01), "ndcg_at_5": (-0.01, 0.03)}
    headline = _outcome_with(delta, ci, Decision.FAIL).headline
    assert headline.startswith(
        "significantly better on recall_at_5 +0.0500 [+0.0100, +0.0900]; "
        "significantly worse on mrr_at_5 -0.0400 [-0.0700, -0.0100]; "
        "no difference distinguishable from zero on ndcg_at_5; "
    )
    lift = {m: (0.01, 0.05) for m in METRICS}
    released = _outcome_with(dict.fromkeys(METRICS, 0.03), lift, Decision.PASS).headline
    assert released.startswith("significantly better on recall_at_5 +0.0300 [+0.0100, +0.0500], mrr_at_5")
    assert "lift is significant (ndcg_at_5 95 % CI lower bound +0.0100 > 0): run READY_FOR_RELEASE" in released
