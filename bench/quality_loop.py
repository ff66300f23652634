"""Quality benchmark: does the feedback loop improve retrieval on a real benchmark — and does it
refuse a broken candidate?

    .venv/bin/python bench/quality_loop.py --dataset BEIR_FOLDER   # full: ≈ 30 min on faq-dev's 937 passages
    .venv/bin/python bench/quality_loop.py --quick                 # CI: a few minutes, the built-in corpus

Any BEIR folder will do; ``opsbench export-builtin DIR`` writes the built-in corpus as one.

Imports a BEIR folder, reserves 30 % of its queries for evaluation, simulates search traffic with
feedback on the rest, builds the training dataset, then runs the pipeline twice through the
worker (real notebooks): once on that dataset (expected: PASS with a recall@5 lift), once on a
control dataset whose positives are shuffled across groups (expected: FAIL). Prints baseline vs
candidate metrics, both verdicts and the wall time.

``--quick`` is the same loop on data the project ships — the built-in corpus (docstrings of
Python's standard library, see opslib/corpus/builtin.py) unless ``--dataset`` is given — with
fewer requests and shorter sequences (QUICK_DEFAULTS), so CI can run it once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from opslib.control.messages import new_training_request
from opslib.control.queue import publish
from opslib.control.runs import get_run
from opslib.corpus.beir import read_beir
from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.loader import CorpusSpec, load_corpus
from opslib.db.models import ModelEvaluation, utcnow
from opslib.execution.worker import Worker
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import build_dataset
from opslib.lifecycle.dataset.control import register_shuffled_control
from opslib.lifecycle.evaluation.metrics import METRICS
from opslib.lifecycle.evaluation.sets import (
    records_from_corpus,
    register_evaluation_set,
)
from opslib.lifecycle.feedback.simulate import simulate_traffic
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings

# The full run's parameters (on a BEIR folder) and the quick run's (CI: the built-in corpus, 755
# chunks of at most 120 words, on two cores). Chosen before looking at any evaluation result; the
# quick run keeps the full run's training recipe and noise, with fewer requests and the workspace's
# default max_seq_length (128 tokens: most built-in passages fit).
FULL_DEFAULTS = {"requests": 1500, "max_seq_length": 128}
QUICK_DEFAULTS = {"requests": 800, "max_seq_length": 128}
BUILTIN_CORPUS = "stdlib"


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
    release = q.get("release", {})
    if evaluation.overall_decision.value == "PASS":
        print(
            "  release: " + ("automatic (significant)" if release.get("automatic") else f"held — {release.get('hold')}")
        )
    for title, block in (("dense (the verdict)", q), ("hybrid serving path (shown)", q.get("hybrid"))):
        if not block:
            continue
        print(f"  {title}")
        print(
            f"  {'metric':<12} {'baseline':>9} {'candidate':>10} {'delta':>8}   95 % CI of delta     p (Holm)   win/tie/loss"
        )
        for m in METRICS:
            low, high = block["ci95"][m]
            wtl = block["win_tie_loss"][m]
            p = block.get("p_value_holm", {}).get(m)
            print(
                f"  {m:<12} {block['baseline'][m]:9.4f} {block['candidate'][m]:10.4f} {block['delta'][m]:+8.4f}   "
                f"[{low:+.4f}, {high:+.4f}]   {p if p is None else f'{p:.4f}':>8}   {wtl['win']}/{wtl['tie']}/{wtl['loss']}"
            )
    guard = q.get("guard")
    if guard:
        m = guard["metric"]
        print(
            f"  guard {guard['evaluation_dataset_ref']} ({guard['queries']} queries): {m} {guard['baseline'][m]:.4f} → "
            f"{guard['candidate'][m]:.4f} ({guard['delta'][m]:+.4f}; fails below −{guard['max_drop']})"
        )


def significant(result: dict) -> bool:
    """recall@5's or nDCG@5's 95 % CI lies above 0."""
    evaluation = result["evaluation"]
    if evaluation is None:
        return False
    ci = evaluation.quality_metrics["ci95"]
    return ci["recall_at_5"][0] > 0 or ci["ndcg_at_5"][0] > 0


def targets(honest: dict, broken: dict) -> list[tuple[str, str, bool]]:
    """(target, what happened, met) — printed as the run's table."""
    released = bool(honest["evaluation"] and honest["evaluation"].quality_metrics.get("release", {}).get("automatic"))
    return [
        ("honest candidate PASSes", verdict(honest), verdict(honest) == "PASS"),
        (
            "its recall@5 or nDCG@5 CI excludes 0",
            "yes" if significant(honest) else "no",
            significant(honest),
        ),
        (
            "released automatically only if significant",
            f"{'released' if released else 'held or not passed'}",
            not released or significant(honest),
        ),
        ("shuffled control FAILs", verdict(broken), verdict(broken) == "FAIL"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset",
        type=Path,
        help="a BEIR folder, e.g. one `opsbench export-builtin DIR` wrote (with --quick: default the built-in corpus)",
    )
    parser.add_argument("--quick", action="store_true", help="the reduced loop CI runs (see QUICK_DEFAULTS)")
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--requests", type=int, help="simulated search requests (default 1500; quick 800)")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3, help="the most per configuration (validation keeps the best)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, help="training max_seq_length (default 256; quick 128)")
    parser.add_argument("--seed", type=int, default=0, help="query split, traffic, dataset and training seed")
    parser.add_argument(
        "--expect",
        choices=["pass-then-fail", "significant-pass-then-fail", "control-fails"],
        help="what exits 0 (default pass-then-fail, also with --quick) — see check()",
    )
    args = parser.parse_args()
    if args.dataset is None and not args.quick:
        parser.error("--dataset is required unless --quick (which defaults to the built-in corpus)")
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    requests = args.requests if args.requests is not None else defaults["requests"]
    max_seq_length = args.max_seq_length if args.max_seq_length is not None else defaults["max_seq_length"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download: the model is packaged
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    wall_start = time.perf_counter()

    root = args.workspace or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    settings = Settings(
        workspace=root / "ws",
        runs_dir=root / "runs",
        log_level="WARNING",
        training_epochs=args.epochs,
        training_batch_size=args.batch_size,
        training_max_seq_length=max_seq_length,
        training_seed=args.seed,
        # Both candidates are judged against (and trained from) the same base model:
        # the honest one must not be cut over before the control runs.
        auto_cutover=False,
    )
    ws = Workspace(settings)
    print(
        f"workspace {root}; {'quick' if args.quick else 'full'} run: {requests} requests, noise {args.noise}, "
        f"up to {args.epochs} epoch(s) per configuration (learning rates {settings.training_learning_rates}), batch {args.batch_size}, max_seq_length {max_seq_length}, seed {args.seed}"
    )
    init_workspace(ws)
    spec: CorpusSpec
    if args.dataset is None:
        spec = build_demo_corpus(BUILTIN_CORPUS)
    else:
        spec = read_beir(args.dataset, args.dataset.resolve().name.lower())
    name = spec.name
    corpus = load_corpus(ws, spec, reserve_fraction=0.3, seed=args.seed, progress=True)
    print(
        f"imported {name}: {corpus.chunks} chunks; {corpus.traffic_queries} traffic queries, "
        f"{corpus.reserved_queries} reserved for evaluation"
    )
    traffic = simulate_traffic(
        ws,
        name,
        requests=requests,
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
    register_shuffled_control(ws, build.dataset_version, args.seed)
    broken = run_pipeline(ws, "broken candidate (positives shuffled across groups)")
    show(broken)
    print(f"\nreports: {settings.runs_dir}")
    print("\ntarget                                          result              met")
    for target, result, met in targets(honest, broken):
        print(f"{target:<47} {result:<19} {'yes' if met else 'NO'}")
    expect = args.expect or "pass-then-fail"
    ok, why = check(expect, honest, broken)
    print(f"expectation {expect}: {why} — {'as expected' if ok else 'UNEXPECTED'}")
    print(f"wall time {time.perf_counter() - wall_start:.0f} s")
    return 0 if ok else 1


def check(expect: str, honest: dict, broken: dict) -> tuple[bool, str]:
    """``pass-then-fail``: the honest candidate PASSes and the control FAILs;
    ``significant-pass-then-fail``: the same, with the honest lift's recall@5 or nDCG@5 CI above 0. ``control-fails``:
    the control FAILs and the honest candidate beats it on every metric (its own verdict is
    shown but not required)."""
    verdicts = f"got {verdict(honest)} then {verdict(broken)}"
    if expect == "pass-then-fail":
        return (verdict(honest), verdict(broken)) == ("PASS", "FAIL"), f"PASS then FAIL expected, {verdicts}"
    if expect == "significant-pass-then-fail":
        ok = (verdict(honest), verdict(broken)) == ("PASS", "FAIL") and significant(honest)
        return ok, f"a significant PASS then FAIL expected, {verdicts}, significant {significant(honest)}"
    if honest["evaluation"] is None or verdict(broken) != "FAIL":
        return False, f"control FAIL expected, {verdicts}"
    mine = honest["evaluation"].quality_metrics["candidate"]
    control = broken["evaluation"].quality_metrics["candidate"]
    worse = [m for m in METRICS if not mine[m] > control[m]]
    return not worse, (
        f"control FAIL and the honest candidate above it on every metric expected, {verdicts}"
        + (f"; not above the control on {', '.join(worse)}" if worse else "")
    )


def verdict(result: dict) -> str:
    evaluation = result["evaluation"]
    return evaluation.overall_decision.value if evaluation is not None else "ERROR"


if __name__ == "__main__":
    sys.exit(main())
