"""Scoring models on the validation split: the held-out queries ranked against every READY chunk
of their project, as stage 40 ranks the evaluation set; the relevant chunks are the positives
of all the query's held-out groups. The selection metric is nDCG@5 (it rewards a relevant chunk
found and ranked high; recall@5 and MRR@5 are recorded beside it)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.metrics import METRICS, K, exact_mean, query_metrics
from opslib.lifecycle.evaluation.retrieval import ProjectCorpus, corpus_vectors, project_corpora, top_k
from opslib.lifecycle.training.split import query_key

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SELECTION_METRIC = "ndcg_at_5"
ENCODE_BATCH = 64


@dataclass(frozen=True)
class ValidationQuery:
    query_text: str
    project_id: str
    relevant: frozenset[str]


def validation_queries(groups: list[dict[str, Any]]) -> list[ValidationQuery]:
    """One query per distinct (project, normalised query), relevant = the union of its positives."""
    relevant: dict[tuple[str, str], set[str]] = defaultdict(set)
    first_text: dict[tuple[str, str], str] = {}
    for group in groups:
        key = query_key(group)
        first_text.setdefault(key, group["query_text"])
        relevant[key].update(p["chunk_id"] for p in group["positives"])
    return [ValidationQuery(first_text[k], k[0], frozenset(relevant[k])) for k in sorted(relevant)]


class Validator:
    """Scores a registered model (its index vectors reused) or a model in training."""

    def __init__(
        self, ws: Workspace, queries: list[ValidationQuery], device: str = "cpu", mixed_precision: str = "fp32"
    ) -> None:
        self.ws = ws
        self.corpora: dict[str, ProjectCorpus] = project_corpora(ws, {q.project_id for q in queries})
        # Queries whose positives are all gone from the corpus cannot be judged.
        self.queries = [q for q in queries if q.relevant & set(self.corpora[q.project_id].chunk_ids)]
        self.device = device
        self.mixed_precision = mixed_precision  # a model in training encodes as it trains

    def __len__(self) -> int:
        return len(self.queries)

    def score_registered(self, model_version: str) -> dict[str, float]:
        from opslib.infra.embedding import Purpose

        def encode_docs(corpus: ProjectCorpus) -> np.ndarray:
            return corpus_vectors(self.ws, model_version, corpus)

        def encode_queries(texts: list[str]) -> np.ndarray:
            return self.ws.embeddings.embed(texts, model_version, Purpose.EVALUATION)

        return self._score(encode_docs, encode_queries)

    def score_model(self, model: SentenceTransformer, max_seq_length: int) -> dict[str, float]:
        """``model`` encodes at ``max_seq_length`` (the length it will serve at) and, under mixed
        precision, as a half-precision copy — how the registered candidate will encode (autocast
        alone ranks measurably differently: nDCG@5 −0.008 on 47 queries for the untrained model)."""
        import copy

        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        encoder = copy.deepcopy(model).to(dtype) if dtype is not None else model
        training_length = model.max_seq_length
        encoder.max_seq_length = max_seq_length
        was_training = encoder.training
        encoder.eval()

        def encode(texts: list[str]) -> np.ndarray:
            with torch.inference_mode():
                vectors = encoder.encode(texts, batch_size=ENCODE_BATCH, convert_to_tensor=True)
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)  # renormalised in fp32
            return np.asarray(vectors.cpu().numpy(), dtype=np.float32)

        try:
            return self._score(lambda corpus: encode(corpus.texts), encode)
        finally:
            if encoder is model:
                model.max_seq_length = training_length
                model.train(was_training)

    def _score(self, encode_docs: Any, encode_queries: Any) -> dict[str, float]:
        per_query: dict[str, list[float]] = {m: [] for m in METRICS}
        by_project: dict[str, list[ValidationQuery]] = defaultdict(list)
        for q in self.queries:
            by_project[q.project_id].append(q)
        for project, queries in sorted(by_project.items()):
            corpus = self.corpora[project]
            docs = encode_docs(corpus)
            vectors = encode_queries([q.query_text for q in queries])
            order, _ = top_k(vectors, docs, K)
            for row, q in enumerate(queries):
                metrics = query_metrics([corpus.chunk_ids[j] for j in order[row]], set(q.relevant))
                for m in METRICS:
                    per_query[m].append(metrics[m])
        return {m: round(exact_mean(per_query[m]), 6) for m in METRICS}
