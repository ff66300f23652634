"""Training rows from retrieval groups: ``(anchor, positive, negative_1 … negative_n)``.

One row per positive. A row's negatives are drawn round-robin across the sources, surest and
hardest kind first — used by an answer to the same question that users disliked
(``disliked_response_used_chunk``, dataset rule v2), mined by the baseline (``mined_baseline``),
shown but not used (``exposed_unused``), random from the project (``random_same_project``) —
each source in its own order (mined: best rank first; feedback: descending confidence, then the
rule's order), cycling when a group has more positives than negatives of a source; a group with fewer distinct negatives than ``n`` repeats
them. The other rows of a batch add in-batch negatives. A group without any negative is left out
and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from opslib.lifecycle.dataset.rules import DISLIKED, EXPOSED, RANDOM
from opslib.lifecycle.training.mining import MINED

SOURCE_ORDER = (DISLIKED, MINED, EXPOSED, RANDOM)


@dataclass
class RowsReport:
    rows: int = 0
    groups_used: int = 0
    groups_without_negatives: int = 0
    negatives_per_row: int = 1
    # negatives available per source (the dataset's and the mined ones) and used in rows
    available_by_source: Counter[str] = field(default_factory=Counter)
    used_by_source: Counter[str] = field(default_factory=Counter)

    def as_record(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "groups_used": self.groups_used,
            "groups_without_negatives": self.groups_without_negatives,
            "negatives_per_row": self.negatives_per_row,
            "negatives_available_by_source": dict(sorted(self.available_by_source.items())),
            "negatives_in_rows_by_source": dict(sorted(self.used_by_source.items())),
        }


def _by_source(negatives: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    ordered = sorted(negatives, key=lambda n: -n["confidence"])  # stable: keeps each source's order
    known = [[n for n in ordered if n["source"] == s] for s in SOURCE_ORDER]
    other = [n for n in ordered if n["source"] not in SOURCE_ORDER]
    return [lane for lane in [*known, other] if lane]


def _pick(lanes: list[list[dict[str, Any]]], i: int, n: int, positive: str) -> list[dict[str, Any]]:
    """n negatives for the group's i-th positive: round-robin over the source lanes, each lane
    advanced by i so that successive positives get different negatives."""
    picked: list[dict[str, Any]] = []
    if not lanes:
        return picked
    texts = {positive}
    total = sum(len(lane) for lane in lanes)
    turn = 0
    while len(picked) < n and turn < total * len(lanes) + n:
        lane = lanes[turn % len(lanes)]
        candidate = lane[(i + turn // len(lanes)) % len(lane)]
        turn += 1
        if candidate["text"] in texts:
            continue
        texts.add(candidate["text"])
        picked.append(candidate)
    return picked


def training_rows(
    groups: list[dict[str, Any]],
    mined: list[list[dict[str, Any]]] | None = None,
    negatives_per_row: int = 1,
) -> tuple[list[dict[str, str]], RowsReport]:
    """The rows, and how many negatives of each source were available and used."""
    if negatives_per_row < 1:
        raise ValueError(f"negatives_per_row {negatives_per_row}: must be >= 1")
    report = RowsReport(negatives_per_row=negatives_per_row)
    rows: list[dict[str, str]] = []
    for index, group in enumerate(groups):
        negatives = list(group["negatives"]) + (mined[index] if mined is not None else [])
        report.available_by_source.update(n["source"] for n in negatives)
        lanes = _by_source(negatives)
        candidates = []
        for i, positive in enumerate(group["positives"]):
            picked = _pick(lanes, i, negatives_per_row, positive["text"])
            if picked:
                # Fewer distinct negatives than columns: repeat them (a repeated candidate only
                # weighs twice in the softmax; dropping the group would lose its positive).
                candidates.append((positive, [picked[k % len(picked)] for k in range(negatives_per_row)]))
        if not candidates:
            report.groups_without_negatives += 1
            continue
        report.groups_used += 1
        for positive, picked in candidates:
            row = {"anchor": group["query_text"], "positive": positive["text"]}
            row.update({f"negative_{k + 1}": n["text"] for k, n in enumerate(picked)})
            report.used_by_source.update(n["source"] for n in picked)
            rows.append(row)
    report.rows = len(rows)
    return rows, report
