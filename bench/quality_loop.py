"""Quality benchmark: does the feedback loop improve retrieval on a real benchmark — and does it
refuse a broken candidate?

    .venv/bin/python bench/quality_loop.py --dataset ../shared/data/faq-dev

Imports a BEIR folder, reserves 30 % of its queries for evaluation, simulates search traffic with
feedback on the rest, builds the training dataset, then runs the pipeline twice through the
worker (real notebooks): once on that dataset (expected: PASS with a recall@5 lift), once on a
control dataset whose positives are shuffled across groups (expected: FAIL). Prints baseline vs
candidate metrics and both verdicts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from opslib.control.messages import new_training_request
from opslib.control.queue import publish
from opslib.control.runs import get_run
from opslib.corpus.beir import read_beir
from opslib.corpus.loader import load_corpus
from opslib.db.models import ModelEvaluation, TrainingDataset, utcnow
from opslib.execution.worker import Worker
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import build_dataset, read_groups
from opslib.lifecycle.evaluation.evaluate import METRICS
from opslib.lifecycle.evaluation.sets import (
    records_from_corpus,
    register_evaluation_set,
)
from opslib.lifecycle.feedback.simulate import simulate_traffic
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings


def shuffled_control(ws: Workspace, version: str, seed: int) -> str:
    """A copy of dataset ``version`` with positives rotated across groups (so every query is paired
    with another query's answer), registered as the newest eligible dataset."""
    groups = list(read_groups(ws, version))
    positives = [g["positives"] for g in groups]
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    rotated = order[1:] + order[:1]  # a derangement: no group keeps its own positives
    for target, source in zip(order, rotated, strict=True):
        groups[target] = {**groups[target], "positives": positives[source]}
    control = f"{version}-shuffled"
    prefix = f"datasets/{control}"
    ws.objects.put_bytes(
        f"{prefix}/train.jsonl", b"".join(json.dumps(g, sort_keys=True).encode() + b"\n" for g in groups)
    )
    manifest = json.loads(ws.objects.get_text(f"datasets/{version}/manifest.json"))
    manifest.update(
        dataset_version=control,
        derived_from=version,
        note="benchmark control: positives shuffled across groups — must FAIL evaluation",
    )
    ws.objects.put_text(f"{prefix}/manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    with ws.db.transaction() as session:
        source_row = session.get(TrainingDataset, version)
        session.add(
            TrainingDataset(
                dataset_version=control,
                storage_path=ws.objects.uri(prefix),
                generation_rule_version=source_row.generation_rule_version,
                source_window_start=source_row.source_window_start,
                source_window_end=source_row.source_window_end,
                counts=source_row.counts,
                eligible=True,
                ineligible_reasons=[],
            )
        )
    return control


def run_pipeline(ws: Workspace, label: str) -> dict:
    publish(ws.db, new_training_request(reason=f"quality benchmark: {label}"))
    started = time.perf_counter()
    report = Worker(ws, name=f"bench-{label}").run_once()
    ((run_id, status),) = report.runs.items()
    run = get_run(ws.db, run_id)
    with ws.db.read() as session:
        evaluation = session.get(ModelEvaluation, run.evaluation_id) if run.evaluation_id else None
    return {
        "label": label,
        "run_id": run_id,
        "status": status,
        "dataset": run.dataset_version,
        "seconds": time.perf_counter() - started,
        "evaluation": evaluation,
        "failure": None if evaluation else f"{run.failed_stage} {run.failure_type}: {run.failure_reason}",
    }


def show(result: dict) -> None:
    evaluation = result["evaluation"]
    print(
        f"\n{result['label']}: run {result['run_id']} on {result['dataset']} → {result['status']} "
        f"({result['seconds']:.0f} s)"
    )
    if evaluation is None:
        print(f"  no evaluation: {result['failure']}")
        return
    q = evaluation.quality_metrics
    print(
        f"  verdict {evaluation.overall_decision.value}"
        + (f" — {evaluation.fail_reason}" if evaluation.fail_reason else "")
    )
    print(f"  {'metric':<12} {'baseline':>9} {'candidate':>10} {'delta':>8}   95 % CI of delta     win/tie/loss")
    for m in METRICS:
        low, high = q["ci95"][m]
        wtl = q["win_tie_loss"][m]
        print(
            f"  {m:<12} {q['baseline'][m]:9.4f} {q['candidate'][m]:10.4f} {q['delta'][m]:+8.4f}   "
            f"[{low:+.4f}, {high:+.4f}]   {wtl['win']}/{wtl['tie']}/{wtl['loss']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="a BEIR folder, e.g. ../shared/data/faq-dev")
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--requests", type=int, default=1500, help="simulated search requests")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    root = args.workspace or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    settings = Settings(
        workspace=root / "ws",
        runs_dir=root / "runs",
        log_level="WARNING",
        training_epochs=args.epochs,
        training_batch_size=args.batch_size,
        training_max_seq_length=args.max_seq_length,
        training_seed=args.seed,
        # Both candidates are judged against (and trained from) the same base model:
        # the honest one must not be cut over before the control runs.
        auto_cutover=False,
    )
    ws = Workspace(settings)
    print(f"workspace {root}")
    init_workspace(ws)
    name = args.dataset.resolve().name.lower()
    corpus = load_corpus(ws, read_beir(args.dataset, name), reserve_fraction=0.3, seed=args.seed, progress=True)
    print(
        f"imported {name}: {corpus.chunks} chunks; {corpus.traffic_queries} traffic queries, "
        f"{corpus.reserved_queries} reserved for evaluation"
    )
    traffic = simulate_traffic(
        ws,
        name,
        requests=args.requests,
        seed=args.seed,
        noise=args.noise,
        progress=True,
        start=utcnow() - timedelta(days=7),
        spread=timedelta(days=7),
    )
    print(
        f"traffic: {traffic.likes} likes, {traffic.dislikes} dislikes (relevant chunk shown for "
        f"{traffic.hit_rate:.0%} of requests)"
    )
    build = build_dataset(ws, as_of=utcnow() + timedelta(seconds=1), seed=args.seed, progress=True)
    counts = build.counts
    print(
        f"dataset {build.dataset_version}: {counts['trainable_groups']} groups, {counts['negatives']} negatives, "
        f"eligible {build.eligible}"
    )
    evaluation_set = register_evaluation_set(ws, records_from_corpus(ws, name), source=f"{name} reserved queries")
    print(f"evaluation set {evaluation_set.evaluation_dataset_ref}: {evaluation_set.sample_count} queries")

    honest = run_pipeline(ws, "feedback-trained candidate")
    show(honest)
    shuffled_control(ws, build.dataset_version, args.seed)
    broken = run_pipeline(ws, "broken candidate (positives shuffled across groups)")
    show(broken)
    print(f"\nreports: {settings.runs_dir}")
    verdicts = [verdict(honest), verdict(broken)]
    expected = verdicts == ["PASS", "FAIL"]
    print(f"expected PASS then FAIL, got {' then '.join(verdicts)}: {'as expected' if expected else 'UNEXPECTED'}")
    return 0 if expected else 1


def verdict(result: dict) -> str:
    evaluation = result["evaluation"]
    return evaluation.overall_decision.value if evaluation is not None else "ERROR"


if __name__ == "__main__":
    sys.exit(main())
