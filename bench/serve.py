"""Benchmark: the serving endpoint over HTTP — latency and throughput at 1k, 10k and 100k chunks.

For each corpus size a fresh embedded workspace gets a synthetic corpus: N chunks of 40 words
drawn from a 5,000-word vocabulary with Zipf-like frequencies (so keyword search has selective and
common terms, as in real text) with random unit vectors in the active index (synthetic
vectors are fine for size: the vector search still searches N of them) and their
``VectorIndexEntry`` rows. Queries are real text, encoded by the real model. Then:

1. ``search()`` in this process, one request at a time: its p50 (the reference);
2. ``opsbench serve --processes N`` on a free loopback port; 1, 4 and 16 concurrent httpx
   clients, each in its own thread, send ``/v1/search`` for ``--seconds`` (after a warm-up):
   throughput and p50/p95/p99 per concurrency.

``--processes`` defaults to 2, the cores of the machine the targets are set for: a search costs
about 24 ms of mostly GIL-bound Python, so one server process tops out near one core whatever the
concurrency, and throughput scales with worker processes up to the cores (``--processes 1``
measures the single-process server for comparison). The benchmark's own client threads share those
cores.

Ratios, measured in the same run: HTTP p50 (1 client) vs in-process p50 at 10k chunks (target
≤ 1.25×); throughput at 4 clients vs 1 at 10k (target ≥ 1.6× on 2 cores); p95 at 100k vs 10k
(1 client; target ≤ 1.5×).

    .venv/bin/python bench/serve.py [--sizes 1000,10000,100000] [--seconds 15] [--processes 2] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_HTTP_OVERHEAD = 1.25
TARGET_SCALING_4 = 1.6
TARGET_P95_GROWTH = 1.5
PROJECT = "bench"
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "vu", "sha", "ken", "tor", "lin", "mar", "bel"]
VOCABULARY = 5000  # distinct words; drawn with Zipf-like weights, as in real text


def vocabulary(seed: int = 0) -> tuple[list[str], list[float]]:
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCABULARY:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words, [1.0 / (rank + 1) for rank in range(len(words))]


def synthetic_rows(n: int, model: str, seed: int = 0) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Batches of (video rows, chunk rows): N chunks of 40 Zipf-drawn words, 100 per video, one
    project."""
    from opslib.db.models import ServingState, VideoStatus, utcnow

    rng = random.Random(seed)
    words, weights = vocabulary()
    now = utcnow()
    batch = 5000
    for start in range(0, n, batch):
        videos, chunks = [], []
        for i in range(start, min(n, start + batch)):
            if i % 100 == 0:
                videos.append(
                    {
                        "id": f"v{i // 100:05d}",
                        "user_id": "bench",
                        "project_id": PROJECT,
                        "title": f"video {i // 100}",
                        "status": VideoStatus.READY,
                        "search_serving_state": ServingState.SERVABLE,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            text = " ".join(rng.choices(words, weights, k=40))
            chunks.append(
                {
                    "id": f"c{i:07d}",
                    "video_id": f"v{i // 100:05d}",
                    "start_ms": (i % 100) * 30000,
                    "end_ms": (i % 100 + 1) * 30000,
                    "text": text,
                    "enriched_text": text,
                    "chunking_version": "bench",
                    "embedding_model_version": model,
                    "created_at": now,
                }
            )
        yield videos, chunks


def synthetic_corpus(ws: Any, n: int, seed: int = 0) -> None:
    """N chunks in one project (``synthetic_rows``) with random unit vectors in the active index."""
    from sqlalchemy import insert

    from opslib.control.release import current_release
    from opslib.db.models import Chunk, VectorIndexEntry, Video, utcnow

    vectors_rng = np.random.default_rng(seed)
    with ws.db.read() as session:
        release = current_release(session)
        index, model = release.active_index_name, release.active_model_version
    dimension = ws.embeddings.load(model).dimension
    now = utcnow()
    for videos, chunks in synthetic_rows(n, model, seed):
        entries = [
            {
                "index_name": index,
                "chunk_id": c["id"],
                "embedding_model_version": model,
                "content_hash": f"{int(c['id'][1:]):064x}",
                "created_at": now,
            }
            for c in chunks
        ]
        with ws.db.transaction() as session:
            if videos:
                session.execute(insert(Video), videos)
            session.execute(insert(Chunk), chunks)
            session.execute(insert(VectorIndexEntry), entries)
        vectors = vectors_rng.standard_normal((len(chunks), dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ws.vectors.upsert(
            index,
            [c["id"] for c in chunks],
            vectors,
            [{"project_id": PROJECT, "video_id": c["video_id"]} for c in chunks],
        )


def queries(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    words, weights = vocabulary()
    return [f"how do I {' '.join(rng.choices(words, weights, k=3))} in {rng.choice(words)}" for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_process_p50(ws: Any, texts: list[str]) -> float:
    from opslib.corpus.search import search

    for text in texts[:5]:  # warm-up
        search(ws, text, project_id=PROJECT, user_id="bench")
    times = []
    for text in texts:
        started = time.perf_counter()
        search(ws, text, project_id=PROJECT, user_id="bench")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load(url: str, clients: int, seconds: float, texts: list[str]) -> dict[str, float]:
    import httpx

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
            i = k
            while time.monotonic() < stop:
                body = {"project_id": PROJECT, "user_id": f"u{k}", "query": texts[i % len(texts)]}
                started = time.perf_counter()
                response = client.post("/v1/search", json=body)
                elapsed = time.perf_counter() - started
                if response.status_code == 200:
                    latencies[k].append(elapsed)
                else:
                    errors[k] += 1
                i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    merged = [x for part in latencies for x in part]
    return {
        "requests": len(merged),
        "errors": sum(errors),
        "throughput": len(merged) / wall,
        "p50": percentile(merged, 0.50),
        "p95": percentile(merged, 0.95),
        "p99": percentile(merged, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes of the endpoint (default 2: this machine's cores)"
    )
    parser.add_argument("--root", type=Path, help="where the workspaces go (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.clients.split(",")]

    from opslib.infra.logs import configure_logging
    from opslib.infra.workspace import Workspace
    from opslib.ops.bootstrap import init_workspace
    from opslib.service.server import spawn_server
    from opslib.settings import Settings

    configure_logging("WARNING")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    texts = queries(200)
    print(
        f"opsbench serve --processes {args.processes} ({os.cpu_count()} cores here); clients {args.clients}; "
        f"{args.seconds:.0f} s per level",
        flush=True,
    )
    results: dict[int, dict[str, Any]] = {}
    for size in sizes:
        folder = root / f"n{size}"
        settings = Settings(workspace=folder / "ws", runs_dir=folder / "runs", log_level="WARNING")
        ws = Workspace(settings)
        init_workspace(ws)
        started = time.perf_counter()
        synthetic_corpus(ws, size)
        print(f"\n{size} chunks: corpus built in {time.perf_counter() - started:.0f} s ({folder})", flush=True)
        reference = in_process_p50(ws, texts[:100])
        print(f"  in-process search() p50 {reference * 1000:.1f} ms", flush=True)
        server = spawn_server(settings, folder / "serve.log", allow_anonymous=True, processes=args.processes)
        try:
            load(server.url, 2, 3.0, texts)  # warm-up
            rows = {}
            for clients in levels:
                rows[clients] = load(server.url, clients, args.seconds, texts)
                r = rows[clients]
                print(
                    f"  {clients:>2} client(s): {r['throughput']:7.1f} req/s  p50 {r['p50'] * 1000:7.1f} ms  "
                    f"p95 {r['p95'] * 1000:7.1f} ms  p99 {r['p99'] * 1000:7.1f} ms  ({r['requests']} ok, "
                    f"{r['errors']} errors)",
                    flush=True,
                )
        finally:
            server.stop()
        results[size] = {"in_process_p50": reference, "levels": rows}
        del ws

    print("\nratio                                              measured   target   met")
    if 10000 in results:
        r10 = results[10000]
        overhead = r10["levels"][levels[0]]["p50"] / r10["in_process_p50"]
        print(
            f"HTTP p50 / in-process p50 at 10k (1 client)      {overhead:8.2f}×   ≤ {TARGET_HTTP_OVERHEAD}    {'yes' if overhead <= TARGET_HTTP_OVERHEAD else 'NO'}"
        )
        if 4 in r10["levels"] and 1 in r10["levels"]:
            scaling = r10["levels"][4]["throughput"] / r10["levels"][1]["throughput"]
            print(
                f"throughput 4 clients / 1 client at 10k           {scaling:8.2f}×   ≥ {TARGET_SCALING_4}     {'yes' if scaling >= TARGET_SCALING_4 else 'NO'}"
            )
    if 10000 in results and 100000 in results:
        growth = results[100000]["levels"][levels[0]]["p95"] / results[10000]["levels"][levels[0]]["p95"]
        print(
            f"p95 at 100k / p95 at 10k (1 client)              {growth:8.2f}×   ≤ {TARGET_P95_GROWTH}    {'yes' if growth <= TARGET_P95_GROWTH else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
