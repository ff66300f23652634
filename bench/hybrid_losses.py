"""Why a candidate loses on the hybrid serving path: per evaluation query, where the relevant chunks
rank in the keyword list and in each model's dense top-20, and how many chunks the two lists share.

Reads a workspace the quality loop left (``bench/quality_loop.py --workspace DIR``) and a run of it;
re-ranks the run's evaluation set with its baseline and candidate, fuses each with the keyword list
as the serving path does (RRF, k = 60), and prints every query the hybrid path gets wrong with the
candidate but right with the baseline, then the counts.

    .venv/bin/python bench/hybrid_losses.py /tmp/bench-quality-XXXX 1
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from opslib.control.runs import get_run
    from opslib.corpus.search import KEYWORD_K, keyword_search, reciprocal_rank_fusion
    from opslib.db.models import ModelEvaluation
    from opslib.infra.workspace import Workspace
    from opslib.lifecycle.evaluation.retrieval import project_corpora, rank
    from opslib.lifecycle.evaluation.sets import read_evaluation_set
    from opslib.settings import Settings

    root, run_id = Path(sys.argv[1]), int(sys.argv[2])
    ws = Workspace(Settings(workspace=root / "ws", runs_dir=root / "runs", log_level="WARNING"))
    run = get_run(ws.db, run_id)
    with ws.db.read() as session:
        evaluation = session.get(ModelEvaluation, run.evaluation_id)
        assert evaluation is not None, f"run {run_id} has no evaluation"
        ref = evaluation.evaluation_dataset_ref
    records = list(read_evaluation_set(ws, ref))
    corpora = project_corpora(ws, {r.project_id for r in records})
    assert run.baseline_model_version and run.candidate_model_version
    baseline = rank(ws, run.baseline_model_version, records, corpora, False, k=20)
    candidate = rank(ws, run.candidate_model_version, records, corpora, False, k=20)
    counts: Counter[str] = Counter()
    with ws.db.read() as session:
        for record, base, cand in zip(records, baseline, candidate, strict=True):
            relevant = set(record.expected_results)
            keyword = keyword_search(session, record.query_text, record.project_id, KEYWORD_K)
            dense_b, dense_c = [d for d, _ in base], [d for d, _ in cand]
            fused_b = [d for d, _ in reciprocal_rank_fusion([keyword, dense_b])][:5]
            fused_c = [d for d, _ in reciprocal_rank_fusion([keyword, dense_c])][:5]
            hit_b, hit_c = bool(relevant & set(fused_b)), bool(relevant & set(fused_c))
            counts[f"hybrid hit baseline={hit_b} candidate={hit_c}"] += 1
            counts["keyword top-20 holds a relevant chunk"] += bool(relevant & set(keyword))

            def ranks(ranking: list[str], relevant: set[str] = relevant) -> list[int]:
                return [i + 1 for i, d in enumerate(ranking) if d in relevant]

            if hit_b and not hit_c:
                print(
                    f"LOSS {record.query_text[:70]!r}: keyword ranks {ranks(keyword)}, dense ranks baseline "
                    f"{ranks(dense_b)} candidate {ranks(dense_c)}; shared with the keyword top-20: baseline "
                    f"{len(set(keyword) & set(dense_b))}, candidate {len(set(keyword) & set(dense_c))}"
                )
    for key, value in sorted(counts.items()):
        print(f"{key}: {value} of {len(records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
