"""Benchmark: build a training dataset from 1,000,000 synthetic feedback events.

Prints wall time, events/s and the peak RSS of the build (each run in a fresh child process, so
set-up does not count), and their ratios to the targets (≤ 60 s, ≤ 500 MB on a 2-core machine).
The machine is shared and noisy: the build runs ``--repeat`` times and the median is quoted.

    .venv/bin/python bench/dataset_build.py [--events 1000000] [--repeat 3] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

TARGET_SECONDS = 60.0
TARGET_RSS_MB = 500.0
AS_OF = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _settings(workspace: Path):  # type: ignore[no-untyped-def]
    from opslib.settings import Settings

    return Settings(workspace=workspace, runs_dir=workspace / "runs", log_level="WARNING")


def prepare(workspace: Path, events: int, projects: int, chunks_per_project: int, seed: int) -> None:
    from sqlalchemy import insert

    from opslib.db.migrate import upgrade
    from opslib.db.models import Chunk, Video, VideoStatus, utcnow
    from opslib.infra.workspace import Workspace
    from opslib.lifecycle.feedback.events import RAW_PREFIX, feedback_event_id, log_key

    ws = Workspace(_settings(workspace))
    upgrade(ws.db)
    now = utcnow()
    with ws.db.transaction() as session:
        session.execute(
            insert(Video),
            [
                {
                    "id": f"p{p}-v",
                    "user_id": "owner",
                    "project_id": f"p{p}",
                    "title": f"project {p}",
                    "status": VideoStatus.READY,
                    "created_at": now,
                    "updated_at": now,
                }
                for p in range(projects)
            ],
        )
        session.execute(
            insert(Chunk),
            [
                {
                    "id": f"p{p}-c{c}",
                    "video_id": f"p{p}-v",
                    "start_ms": c * 1000,
                    "end_ms": c * 1000 + 1000,
                    "text": f"project {p} chunk {c}: a transcript passage of modest length about topic {c % 97}",
                    "enriched_text": f"project {p} chunk {c}",
                    "chunking_version": "bench",
                    "created_at": now,
                }
                for p in range(projects)
                for c in range(chunks_per_project)
            ],
        )
    rng = random.Random(seed)
    per_file = 100_000
    written = 0
    recent: list[dict] = []
    while written < events:
        lines = []
        for _ in range(min(per_file, events - written)):
            if recent and rng.random() < 0.05:  # a redelivered duplicate
                data = dict(rng.choice(recent))
            else:
                p = rng.randrange(projects)
                topk = [f"p{p}-c{c}" for c in rng.sample(range(chunks_per_project), 5)]
                rating = "LIKE" if rng.random() < 0.65 else "DISLIKE"
                user, req = f"user-{rng.randrange(5000)}", f"req-{written:07d}-{rng.getrandbits(32):08x}"
                data = {
                    "schema_version": 1,
                    "event_id": feedback_event_id(user, req, rating),
                    "user_id": user,
                    "project_id": f"p{p}",
                    "req_id": req,
                    "query_text": f"how does topic {rng.randrange(97)} work",
                    "rating": rating,
                    "topk_ids": topk,
                    "used_ids": topk[: rng.randint(1, 2)],
                    "active_model_version": "all-minilm-l6-v2-base",
                    "active_index_name": "idx-all-minilm-l6-v2-base",
                    "response_snapshot_ref": req,
                    "created_at": (AS_OF - timedelta(seconds=rng.randrange(29 * 86400))).isoformat(),
                    "trace_id": f"{rng.getrandbits(64):016x}",
                }
                recent = [*recent, data][-1000:]
            lines.append(orjson.dumps(data))
            written += 1
        with tempfile.NamedTemporaryFile(delete=False) as handle:
            handle.write(b"\n".join(lines) + b"\n")
        at = AS_OF - timedelta(days=20) + timedelta(minutes=written // per_file)
        ws.objects.put_file(log_key(RAW_PREFIX, at), Path(handle.name))
        Path(handle.name).unlink()


def peak_rss_mb() -> float:
    """This process's own high-water RSS. (``ru_maxrss`` is not: Linux carries it across exec
    from the parent, which here held a million events while preparing them.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(workspace: Path) -> None:
    """Run only the build and report its own wall time and peak RSS."""
    from opslib.infra.workspace import Workspace
    from opslib.lifecycle.dataset.builder import build_dataset

    ws = Workspace(_settings(workspace))
    start = time.perf_counter()
    build = build_dataset(ws, as_of=AS_OF, source_window_days=30, seed=0)
    wall = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_mb": peak_mb,
                "counts": build.counts,
                "eligible": build.eligible,
                "dataset_version": build.dataset_version,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--chunks-per-project", type=int, default=500)
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="builds to run; the median is quoted")
    parser.add_argument(
        "--reuse", action="store_true", help="the workspace already holds the synthetic events: skip preparing them"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    if not args.reuse:
        if (workspace / "metadata.db").exists():
            sys.exit(f"{workspace} already holds a workspace: pass --reuse to build from its events")
        print(f"preparing {args.events:,} synthetic events in {workspace} …", flush=True)
        started = time.perf_counter()
        prepare(workspace, args.events, args.projects, args.chunks_per_project, args.seed)
        print(f"  prepared in {time.perf_counter() - started:.1f} s", flush=True)
    runs = []
    for _ in range(max(args.repeat, 1)):
        done = subprocess.run([sys.executable, __file__, "--child", str(workspace)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(done.stderr)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = runs[0]
    counts = result["counts"]
    wall = statistics.median(r["wall_s"] for r in runs)
    rss = statistics.median(r["peak_rss_mb"] for r in runs)
    print(
        f"dataset {result['dataset_version']}: {counts['input_events']:,} events → "
        f"{counts['deduplicated_events']:,} distinct → {counts['trainable_groups']:,} groups "
        f"(eligible: {result['eligible']})"
    )
    each = ", ".join(f"{r['wall_s']:.1f} s / {r['peak_rss_mb']:.0f} MB" for r in runs)
    print(f"runs            {each}")
    print(
        f"wall time       {wall:8.1f} s    (median) ratio to target {wall / TARGET_SECONDS:.2f} (≤ 1 meets ≤ {TARGET_SECONDS:.0f} s)"
    )
    print(f"throughput      {counts['input_lines'] / wall:8.0f} events/s")
    print(
        f"peak RSS        {rss:8.0f} MB   (median) ratio to target {rss / TARGET_RSS_MB:.2f} (≤ 1 meets ≤ {TARGET_RSS_MB:.0f} MB)"
    )


if __name__ == "__main__":
    main()
