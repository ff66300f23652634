"""Benchmark: a candidate index build shared across worker processes (stage 50's shards).

On one corpus (a BEIR folder's passages with ``--dataset`` — docs/benchmarks.md quotes faq-dev's —
else the built-in corpus) and one fresh
candidate version per measurement (same weights as the base, registered anew, so every chunk is
encoded), the sharded build (``opslib.lifecycle.sharded_build``) runs in child processes that
load the model first and then start together:

* ``1x2``  — one process, two torch threads, the default shard size (what one worker does);
* ``2x1``  — two processes, one torch thread each: the driver (``finish_shards``) and a helper
  (``work_shards``), as two ``opsbench worker``s would;
* ``1x2-one-shard`` — one process, two threads, the whole corpus as a single shard (no claims to
  share): the reference for the shard overhead.

Printed, medians over ``--repeat`` alternated rounds: efficiency = time(1x2) / time(2x1) (target
≥ 0.9: two processes with one thread each do at least 90 % of what one process with two threads
does), and the shard overhead = time(1x2) / time(1x2-one-shard) − 1.

    .venv/bin/python bench/reindex_shards.py [--dataset BEIR_FOLDER] [--repeat 3] [--shard-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_EFFICIENCY = 0.9
MODES = {"1x2": [2], "2x1": [1, 1], "1x2-one-shard": [2]}  # torch threads per process


def _workspace(root: Path, **extra):  # type: ignore[no-untyped-def]
    from opslib.infra.workspace import Workspace
    from opslib.settings import Settings

    return Workspace(Settings(workspace=root, runs_dir=root / "runs", log_level="WARNING", **extra))


def prepare(root: Path, dataset: Path | None) -> int:
    """Workspace with the corpus indexed by the base model; the number of chunks."""
    from opslib.corpus.indexing import servable_chunk_ids
    from opslib.corpus.loader import load_corpus
    from opslib.ops.bootstrap import init_workspace

    ws = _workspace(root)
    init_workspace(ws, progress=True)
    if dataset is not None and dataset.is_dir():
        from opslib.corpus.beir import read_beir

        spec, source = read_beir(dataset, "bench"), str(dataset)
    else:
        from opslib.corpus.builtin import build_demo_corpus

        spec, source = build_demo_corpus("bench"), "built-in stdlib corpus"
    load_corpus(ws, spec, progress=True)
    chunks = len(servable_chunk_ids(ws))
    print(f"corpus: {source}, {chunks} chunks", flush=True)
    return chunks


def open_fresh_candidate(root: Path, tag: str, shard_size: int) -> str:
    """A READY_FOR_RELEASE stand-in run whose candidate (the base weights under a new version) is
    opened for reindexing, its shards planned; the candidate index name."""
    from opslib.control.leases import holding_release
    from opslib.control.release import current_release
    from opslib.control.shards import plan_shards
    from opslib.corpus.indexing import servable_chunk_ids
    from opslib.db.models import MLPipelineRun, RunStatus, TriggerSource, utcnow
    from opslib.infra.model_artifacts import register_model
    from opslib.lifecycle.reindex import abort_candidate, open_candidate
    from opslib.ops.bootstrap import packaged_model_path

    ws = _workspace(root)
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None
        active, open_run = release.active_model_version, release.candidate_run_id
    if open_run is not None:  # the previous measurement's candidate: drop it (index, entries, shards)
        abort_candidate(ws, open_run, "bench: next measurement", actor="bench")
    version = f"bench-{tag}"
    register_model(ws, version, packaged_model_path(), base_model_version=active)
    with ws.db.transaction() as session:
        run = MLPipelineRun(
            status=RunStatus.READY_FOR_RELEASE,
            trigger_source=TriggerSource.MANUAL,
            trace_id=f"bench-{tag}",
            dataset_version="bench",
            baseline_model_version=active,
            candidate_model_version=version,
            candidate_index_name=f"idx-{version}",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(run)
        session.flush()
        run_id = run.id
    with holding_release(ws.db, ws.settings, "bench: open the candidate") as lease:
        open_candidate(ws, run_id, actor="bench", fence=lease)
    ids = servable_chunk_ids(ws, by_length=True)
    plan_shards(ws.db, f"idx-{version}", version, ids, shard_size or len(ids))
    return f"idx-{version}"


def child(root: Path, index_name: str, role: str, threads: int, go_file: Path) -> None:
    """One participant: load the model, wait for the start signal, build; print its times."""
    import torch

    from opslib.control.release import current_release
    from opslib.lifecycle.sharded_build import finish_shards, work_shards

    torch.set_num_threads(threads)
    ws = _workspace(root)
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None and release.candidate_model_version
        version = release.candidate_model_version
    ws.embeddings.load(version)
    while not go_file.exists():
        time.sleep(0.01)
    started = time.time()
    work = (finish_shards if role == "driver" else work_shards)(ws, index_name, f"bench-{role}")
    print(json.dumps({"role": role, "started": started, "ended": time.time(), "shards": len(work.shards)}))


def measure(root: Path, mode: str, tag: str, shard_size: int) -> float:
    index_name = open_fresh_candidate(root, tag, 0 if mode == "1x2-one-shard" else shard_size)
    go = root / f"go-{tag}"
    roles = ["driver", "helper"][: len(MODES[mode])]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                role,
                "--threads",
                str(threads),
                "--root",
                str(root),
                "--index",
                index_name,
                "--go",
                str(go),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
        for role, threads in zip(roles, MODES[mode], strict=True)
    ]
    time.sleep(15)  # every child has loaded the model (it then waits for the signal)
    go.touch()
    results = [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    print(f"  {mode:<14} {wall:7.2f} s  shards {[r['shards'] for r in results]}", flush=True)
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset", type=Path, help="a BEIR folder (e.g. one `opsbench export-builtin DIR` wrote); default: built-in"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--child", choices=["driver", "helper"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--index")
    parser.add_argument("--go", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.root, args.index, args.child, args.threads, args.go)
        return 0
    if args.dataset is not None and not args.dataset.is_dir():
        parser.error(f"--dataset {args.dataset}: not a folder (a BEIR folder: corpus.jsonl, queries.jsonl, qrels.tsv)")
    from opslib.infra.logs import configure_logging

    configure_logging("WARNING")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-shards-"))
    prepare(root, args.dataset)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_no in range(args.repeat):
        print(f"round {round_no + 1}", flush=True)
        for mode in MODES:
            times[mode].append(measure(root, mode, f"{round_no}-{mode}", args.shard_size))
    median = {mode: statistics.median(values) for mode, values in times.items()}
    efficiency = median["1x2"] / median["2x1"]
    overhead = median["1x2"] / median["1x2-one-shard"] - 1
    print("\nmedians: " + ", ".join(f"{m} {v:.2f} s" for m, v in median.items()))
    print(
        f"efficiency 2 processes × 1 thread vs 1 × 2: {efficiency:.2f}  (target ≥ {TARGET_EFFICIENCY}: {'met' if efficiency >= TARGET_EFFICIENCY else 'NOT met'})"
    )
    print(f"shard overhead (shard size {args.shard_size} vs one shard): {overhead:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
