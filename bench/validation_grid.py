"""Validation-only exploration of stage 30's grid: train configurations on a dataset's training
split and print their validation nDCG@5 after every epoch — never reading an evaluation set.

It prepares what stage 30 prepares (the seeded split, one group per query, baseline-mined
negatives, rows) and fits each learning rate with MNRL for ``EPOCHS`` epochs of one schedule, no
early stop; the baseline's validation score first. This is how the stage's default grid and epoch
count were chosen (docs/runs.md, "How the defaults were chosen").

    .venv/bin/python bench/validation_grid.py WORKSPACE_ROOT DATASET_VERSION EPOCHS LR[,LR...] [NEGATIVES_PER_ROW]
    .venv/bin/python bench/validation_grid.py /tmp/bench-quality-XXXX 20261205-33830caf2868 6 2e-5,5e-5,1e-4
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from sentence_transformers import SentenceTransformer

    from opslib.db.models import ModelVersion
    from opslib.infra.model_artifacts import local_model_dir
    from opslib.infra.precision import resolve_device, training_mixed_precision
    from opslib.infra.workspace import Workspace
    from opslib.lifecycle.dataset.builder import read_groups
    from opslib.lifecycle.training.fit import Configuration, FitSettings, fit_configuration
    from opslib.lifecycle.training.mining import MiningParams, mine_hard_negatives
    from opslib.lifecycle.training.rows import training_rows
    from opslib.lifecycle.training.split import merge_by_query, split_groups
    from opslib.lifecycle.training.stage import TrainingParams
    from opslib.lifecycle.training.validation import Validator, validation_queries
    from opslib.settings import Settings

    root, dataset, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    learning_rates = [float(x) for x in sys.argv[4].split(",")]
    negatives_per_row = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    defaults = TrainingParams()
    ws = Workspace(Settings(workspace=root / "ws", runs_dir=root / "runs", log_level="WARNING"))
    with ws.db.read() as session:
        base = next(m.model_version for m in session.query(ModelVersion) if m.base_model_version is None)
    split = split_groups(read_groups(ws, dataset), defaults.validation_share, defaults.seed)
    groups = merge_by_query(split.train)
    mined, _ = mine_hard_negatives(ws, base, groups, MiningParams(), progress=False)
    rows, _ = training_rows(groups, mined, negatives_per_row)
    device = resolve_device(ws.settings.device)
    precision = training_mixed_precision(ws.settings.encode_precision, device)
    validator = Validator(ws, validation_queries(split.validation), device, precision)
    print(f"baseline {base}: {validator.score_registered(base)}; {len(rows)} rows", flush=True)
    settings = FitSettings(
        epochs, 16, defaults.max_seq_length, defaults.seed, defaults.warmup_ratio, epochs, device, precision, False
    )
    path = str(local_model_dir(ws, base))
    for learning_rate in learning_rates:
        model = SentenceTransformer(path, device=device)
        length = max(int(model.max_seq_length or 0), defaults.max_seq_length)
        started = time.perf_counter()
        result, _ = fit_configuration(
            model,
            lambda: SentenceTransformer(path, device=device),
            rows,
            Configuration(learning_rate, "mnrl"),
            settings,
            lambda candidate, length=length: validator.score_model(candidate, length),
        )
        scores = [(e.epoch, round(e.metrics["ndcg_at_5"], 4)) for e in result.epochs]
        print(f"lr {learning_rate:g}: validation nDCG@5 per epoch {scores} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
