"""Retrieval metrics and their statistics: per-query recall/MRR/nDCG at K, paired bootstrap
intervals, paired randomisation p-values and Holm's correction for testing several metrics."""

from __future__ import annotations

import math

import numpy as np

K = 5
METRICS = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
BOOTSTRAP_SEED = 20261201


def query_metrics(ranked: list[str], relevant: set[str], k: int = K) -> dict[str, float]:
    """recall@k, MRR@k and nDCG@k (binary gains, log2 discount) of one ranked list."""
    top = ranked[:k]
    hits = [1.0 if doc in relevant else 0.0 for doc in top]
    recall = sum(hits) / len(relevant) if relevant else 0.0
    mrr = next((1.0 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return {"recall_at_5": recall, "mrr_at_5": mrr, "ndcg_at_5": dcg / idcg if idcg else 0.0}


def exact_mean(values: np.ndarray | list[float]) -> float:
    """The mean over an exactly rounded sum (``math.fsum``): it does not depend on the order of
    the queries, so a candidate whose per-query values are the baseline's reshuffled (as many
    wins as losses, of the same sizes) ties it exactly. ``ndarray.mean`` could put it an ulp
    below and fail it as "0.4750 < 0.4750"."""
    values = np.asarray(values, dtype=np.float64)
    return math.fsum(values.tolist()) / len(values) if len(values) else 0.0


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


def randomisation_p_value(deltas: np.ndarray, samples: int, seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided p-value of "the mean paired difference is 0" by a paired randomisation test
    (each query's sign flipped at random; the test IR evaluations recommend). Add-one smoothed,
    so it is never 0."""
    deltas = np.asarray(deltas, dtype=np.float64)
    if len(deltas) == 0 or not np.any(deltas):
        return 1.0
    observed = abs(deltas.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, samples, 256):
        block = min(256, samples - start)
        signs = rng.choice((-1.0, 1.0), size=(block, len(deltas)))
        extreme += int((np.abs((signs * deltas).mean(axis=1)) >= observed - 1e-12).sum())
    return (extreme + 1) / (samples + 1)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment (family-wise error) of several p-values, monotone."""
    order = sorted(p_values, key=lambda name: p_values[name])
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p_values[name]))
        adjusted[name] = running
    return adjusted
