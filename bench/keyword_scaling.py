"""Benchmark: the keyword step of the serving path at 10k and 100k chunks — the in-memory index
(opslib/infra/keyword_index.py) side by side with the SQLite FTS5 query it replaced.

Per size a fresh SQLite Metadata DB at head gets ``bench/serve.py``'s synthetic corpus (40 words
per chunk from a 5,000-word Zipf-like vocabulary, one project) and the same synthetic queries.
Measured in one run, one query at a time:

* the index: first search (reads and indexes every chunk), then ``keyword_search`` per query —
  catching up with the change log included — p50 / p95; after that, one more chunk written per
  query (the index applies it before answering);
* the FTS5 reference: the previous serving query (trigram FTS5, ``bm25`` order, project join,
  top 20) on an FTS5 table built for the purpose over the same chunks, p50 / p95;
* how many of the reference's top 20 the index also returns (the two rank differently: words
  with substring matching against FTS5's trigram phrases).

Prints the p95 growth from the smallest to the largest size for both, which is what
``bench/serve.py``'s end-to-end p95 growth target needs from this step.

    .venv/bin/python bench/keyword_scaling.py [--sizes 10000,100000] [--queries 200] [--root DIR]
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve import PROJECT, percentile, queries, synthetic_rows

from opslib.corpus.search import KEYWORD_K, keyword_search
from opslib.db.engine import database_for
from opslib.db.migrate import upgrade
from opslib.infra.keyword_index import query_words

FTS5_QUERY = (
    "SELECT c.id FROM ref_fts JOIN chunks c ON c.rowid = ref_fts.rowid JOIN videos v ON v.id = c.video_id "
    "WHERE ref_fts MATCH ? AND v.project_id = ? ORDER BY bm25(ref_fts), c.id LIMIT ?"
)


def build(folder: Path, n: int) -> str:
    from sqlalchemy import insert

    from opslib.db.models import Chunk, Video

    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'metadata.db'}"
    db = database_for(url)
    upgrade(db)
    for videos, chunks in synthetic_rows(n, "bench-model"):
        with db.transaction() as session:
            if videos:
                session.execute(insert(Video), videos)
            session.execute(insert(Chunk), chunks)
    return url


def fts5_reference(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS ref_fts USING fts5("
        "enriched_text, content='chunks', content_rowid='rowid', tokenize='trigram')"
    )
    conn.execute("INSERT INTO ref_fts(ref_fts) VALUES ('rebuild')")
    conn.commit()
    return conn


def fts5_ranked(conn: sqlite3.Connection, text: str) -> list[str]:
    terms = [t for t in query_words(text) if len(t) >= 3]  # the trigram tokenizer's minimum
    if not terms:
        return []
    match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
    return [r[0] for r in conn.execute(FTS5_QUERY, (match, PROJECT, KEYWORD_K))]


def timed(call: Callable[[str], list[str]], texts: list[str]) -> tuple[list[float], list[list[str]]]:
    times, results = [], []
    for text in texts:
        started = time.perf_counter()
        results.append(call(text))
        times.append(time.perf_counter() - started)
    return times, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--root", type=Path, help="where the databases go (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    texts = queries(args.queries)
    root = args.root or Path(tempfile.mkdtemp(prefix="kwbench-"))
    rows = []
    for n in sizes:
        url = build(root / f"n{n}", n)
        db = database_for(url)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with db.read() as session:
            started = time.perf_counter()
            keyword_search(session, texts[0], PROJECT)
            first = time.perf_counter() - started

        def ours(text: str, db: object = db) -> list[str]:
            with db.read() as session:  # type: ignore[attr-defined]
                return keyword_search(session, text, PROJECT)

        for text in texts[:5]:  # warm-up
            ours(text)
        index_times, index_results = timed(ours, texts)
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        # one new chunk before every query: the index applies each before it answers
        from sqlalchemy import insert

        from opslib.db.models import Chunk

        following = []
        for i, text in enumerate(texts):
            with db.transaction() as session:
                session.execute(
                    insert(Chunk),
                    [
                        {
                            "id": f"new{i:05d}",
                            "video_id": "v00000",
                            "start_ms": 0,
                            "end_ms": 1,
                            "text": text,
                            "enriched_text": text,
                            "chunking_version": "bench",
                        }
                    ],
                )
            started = time.perf_counter()
            assert f"new{i:05d}" in ours(text)
            following.append(time.perf_counter() - started)
        conn = fts5_reference(root / f"n{n}" / "metadata.db")
        for text in texts[:5]:
            fts5_ranked(conn, text)
        fts_times, fts_results = timed(lambda t, conn=conn: fts5_ranked(conn, t), texts)
        overlap = statistics.mean(
            len(set(a) & set(b)) / len(b) for a, b in zip(index_results, fts_results, strict=True) if b
        )
        row = {
            "n": n,
            "first": first,
            "rss_mb": grown_kb / 1024,
            "p50": statistics.median(index_times),
            "p95": percentile(index_times, 0.95),
            "follow_p50": statistics.median(following),
            "follow_p95": percentile(following, 0.95),
            "fts_p50": statistics.median(fts_times),
            "fts_p95": percentile(fts_times, 0.95),
            "overlap": overlap,
        }
        rows.append(row)
        print(
            f"{n:>7} chunks · index: first search {row['first']:.2f} s (+{row['rss_mb']:.0f} MB peak RSS), "
            f"p50 {row['p50'] * 1000:.2f} ms, p95 {row['p95'] * 1000:.2f} ms; with a chunk written before each "
            f"query p50 {row['follow_p50'] * 1000:.2f} ms, p95 {row['follow_p95'] * 1000:.2f} ms · FTS5: p50 "
            f"{row['fts_p50'] * 1000:.1f} ms, p95 {row['fts_p95'] * 1000:.1f} ms · top-20 overlap {overlap:.2f}",
            flush=True,
        )
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print(
            f"p95 growth {small['n']} → {large['n']} chunks: index {large['p95'] / small['p95']:.2f}× "
            f"(FTS5 {large['fts_p95'] / small['fts_p95']:.2f}×); at {large['n']} the index's p95 is "
            f"{large['fts_p95'] / large['p95']:.0f}× below FTS5's"
        )
    print(f"databases in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
