"""The validation split: a seeded, query-disjoint share of a dataset's groups held out of
training, so every epoch and every configuration is judged on queries the model did not train on
(the evaluation set stays untouched until stage 40).

A query is (project, query text compared case- and whitespace-insensitively); all groups of one
query fall on the same side. The side is decided by a hash of the seed and the query alone, so it
does not depend on what else the dataset holds or in which order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opslib.lifecycle.feedback.queries import QueryKey, normalise_query


def query_key(group: dict[str, Any]) -> QueryKey:
    return group["project_id"], normalise_query(group["query_text"])


def _unit(seed: int, key: QueryKey) -> float:
    digest = hashlib.sha256(f"validation:{seed}:{key[0]}:{key[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Split:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    share: float
    seed: int

    @property
    def validation_queries(self) -> set[QueryKey]:
        return {query_key(g) for g in self.validation}

    def as_record(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "seed": self.seed,
            "rule": "sha256(seed, project, normalised query) < share; whole queries only",
            "train_groups": len(self.train),
            "validation_groups": len(self.validation),
            "train_queries": len({query_key(g) for g in self.train}),
            "validation_queries": len(self.validation_queries),
        }


def split_groups(groups: Iterable[dict[str, Any]], share: float, seed: int) -> Split:
    """Hold out about ``share`` of the distinct queries; at least one query goes to each side
    when there are two or more (the lowest-hashed query to validation, the highest to training)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"validation_share {share}: must be between 0 and 1 (exclusive)")
    groups = list(groups)
    units = {key: _unit(seed, key) for key in {query_key(g) for g in groups}}
    held = {key for key, u in units.items() if u < share}
    if len(units) >= 2:
        ordered = sorted(units, key=lambda k: units[k])
        held.add(ordered[0])
        held.discard(ordered[-1])
    train = [g for g in groups if query_key(g) not in held]
    validation = [g for g in groups if query_key(g) in held]
    return Split(train, validation, share, seed)


def merge_by_query(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per query: the same question asked again (by other users, on other days) is one
    training example, not several — repeats would weigh popular queries several times per epoch.
    Positives are united (most often liked first), negatives too (minus anything a group liked);
    ``support`` counts the groups merged."""
    merged: dict[QueryKey, dict[str, Any]] = {}
    liked: dict[QueryKey, dict[str, int]] = {}
    for group in groups:
        key = query_key(group)
        target = merged.get(key)
        if target is None:
            target = merged[key] = {**group, "positives": [], "negatives": [], "support": 0}
            liked[key] = {}
        target["support"] += 1
        for positive in group["positives"]:
            if positive["chunk_id"] not in liked[key]:
                target["positives"].append(positive)
            liked[key][positive["chunk_id"]] = liked[key].get(positive["chunk_id"], 0) + 1
        seen = {n["chunk_id"] for n in target["negatives"]}
        target["negatives"].extend(n for n in group["negatives"] if n["chunk_id"] not in seen)
    for key, target in merged.items():
        counts = liked[key]
        target["positives"].sort(key=lambda p: -counts[p["chunk_id"]])  # stable: first seen breaks ties
        target["negatives"] = [n for n in target["negatives"] if n["chunk_id"] not in counts]
    return list(merged.values())
