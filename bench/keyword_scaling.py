"""Benchmark: what the SQLite keyword query costs on a large corpus, and what leaving common terms
out of the match would save and change.

Runs on a workspace ``bench/serve.py`` built (its ``--root`` folder, e.g. ``/tmp/kwb/n100000``),
with the same synthetic queries. For each query: the serving path's keyword query as it is (exact
bm25 over every match), and variants that leave out terms whose document frequency, estimated on
the newest ``--window`` chunks, is above a cutoff; the time and the overlap of their top 20 with
the exact one.

    .venv/bin/python bench/keyword_scaling.py /tmp/kwb/n100000 [--queries 200] [--cutoffs 0.5,0.2,0.1,0.05]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve import PROJECT, percentile, queries

from opslib.corpus.search import KEYWORD_K, query_terms

SERVING_QUERY = (
    "SELECT c.id FROM chunk_fts JOIN chunks c ON c.rowid = chunk_fts.rowid JOIN videos v ON v.id = c.video_id "
    "WHERE chunk_fts MATCH ? AND v.project_id = ? ORDER BY bm25(chunk_fts), c.id LIMIT ?"
)


def match_of(terms: list[str]) -> str:
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a bench/serve.py workspace folder (holding ws/metadata.db)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cutoffs", default="0.5,0.2,0.1,0.05")
    parser.add_argument("--window", type=int, default=2048, help="newest chunks a term's frequency is estimated on")
    args = parser.parse_args()
    db = sqlite3.connect(args.folder / "ws" / "metadata.db")
    newest = db.execute("SELECT max(rowid) FROM chunk_fts").fetchone()[0]
    chunks = db.execute("SELECT count(*) FROM chunk_fts").fetchone()[0]
    texts = queries(args.queries)

    def ranked(terms: list[str]) -> list[str]:
        return [row[0] for row in db.execute(SERVING_QUERY, (match_of(terms), PROJECT, KEYWORD_K))]

    def frequency(term: str) -> float:
        sql = "SELECT count(*) FROM chunk_fts WHERE chunk_fts MATCH ? AND rowid > ?"
        return db.execute(sql, (match_of([term]), newest - args.window)).fetchone()[0] / args.window

    exact: list[list[str]] = []
    times: list[float] = []
    for text in texts:
        terms = [t for t in query_terms(text) if len(t) >= 3]
        started = time.perf_counter()
        exact.append(ranked(terms))
        times.append(time.perf_counter() - started)
    print(f"{chunks} chunks, {len(texts)} queries")
    print(
        f"exact                p50 {percentile(times, 0.5) * 1000:6.1f} ms  p95 {percentile(times, 0.95) * 1000:6.1f} ms"
    )
    for cutoff in (float(c) for c in args.cutoffs.split(",")):
        times, overlaps = [], []
        for text, reference in zip(texts, exact, strict=True):
            terms = [t for t in query_terms(text) if len(t) >= 3]
            started = time.perf_counter()
            kept = [t for t in terms if frequency(t) <= cutoff] or terms
            top = ranked(kept)
            times.append(time.perf_counter() - started)
            overlaps.append(len(set(top) & set(reference)) / max(1, len(reference)))
        print(
            f"drop terms > {cutoff:4.0%}   p50 {percentile(times, 0.5) * 1000:6.1f} ms  "
            f"p95 {percentile(times, 0.95) * 1000:6.1f} ms  overlap with exact top {KEYWORD_K}: {statistics.mean(overlaps):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
