"""How many liked (question, chunk) pairs are wrong, before and after dataset rule v2's vote.

Reads a workspace the quality loop left (``bench/quality_loop.py --workspace DIR``): the traffic
queries' own judgments (never the evaluation queries'), the raw feedback, and the newest v2 dataset.
Prints the distinct liked (question, chunk) pairs — what rule v1 makes positives — and the pairs
the v2 dataset keeps as positives, each with how many are not relevant.

    .venv/bin/python bench/label_noise.py /tmp/bench-quality-XXXX CORPUS_NAME
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from sqlalchemy import select

    from opslib.corpus.loader import read_queries
    from opslib.db.models import TrainingDataset
    from opslib.infra.workspace import Workspace
    from opslib.lifecycle.dataset.builder import read_groups
    from opslib.lifecycle.dataset.rules import RULE_V2
    from opslib.lifecycle.feedback.events import RAW_PREFIX
    from opslib.lifecycle.feedback.queries import normalise_query
    from opslib.settings import Settings

    root, corpus = Path(sys.argv[1]), sys.argv[2]
    ws = Workspace(Settings(workspace=root / "ws", runs_dir=root / "runs", log_level="WARNING"))
    relevant = {
        (q.project_id, normalise_query(q.query_text)): set(q.expected_results)
        for q in read_queries(ws, corpus, "traffic")
    }
    liked: set[tuple[str, str, str]] = set()
    for key in ws.objects.list(RAW_PREFIX):
        for line in ws.objects.iter_lines(key):
            event = json.loads(line)
            if event["rating"] == "LIKE":
                question = (event["project_id"], normalise_query(event["query_text"]))
                liked.update((*question, chunk) for chunk in event["used_ids"])
    with ws.db.read() as session:
        version = session.scalars(
            select(TrainingDataset.dataset_version)
            .where(
                TrainingDataset.generation_rule_version == RULE_V2, ~TrainingDataset.dataset_version.like("%-shuffled")
            )
            .order_by(TrainingDataset.created_at.desc())
        ).first()
    assert version, "no retrieval-group-v2 dataset in this workspace"
    kept = {
        (g["project_id"], normalise_query(g["query_text"]), p["chunk_id"])
        for g in read_groups(ws, version)
        for p in g["positives"]
    }
    for name, pairs in (("liked pairs (rule v1's positives)", liked), (f"v2 positives ({version})", kept)):
        wrong = sum(chunk not in relevant.get((project, query), set()) for project, query, chunk in pairs)
        print(f"{name}: {len(pairs)} distinct, {wrong} not relevant ({wrong / max(len(pairs), 1):.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
