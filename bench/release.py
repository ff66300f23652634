"""Benchmark: the release stages' costs, measured side by side in one run.

(a) reindex throughput: ``build_index`` (the 50_reindex_candidate pipeline: SOT reads, content
    hashes, encode, Chroma upsert, VectorIndexEntry writes) vs raw ``SentenceTransformer.encode``
    of the same texts *at the same precision* (the one recorded for the version, chosen by
    ``OPS_ENCODE_PRECISION`` when it is registered; printed), alternated ``--repeat`` times;
    target ratio ≥ 0.95. The gain of that precision over fp32 is bench/encode.py's subject.
(b) a second reindex of the unchanged corpus with the same model (a new index: every vector is
    reused by content hash) vs the first; target ratio ≤ 0.02.
(c) the cutover and rollback switch transactions (``CutoverReport.switch_ms``,
    ``RollbackReport.switch_ms``) with 10k vs 100k chunks (synthetic vectors); target: no growth
    with size and ≤ 50 ms.

Medians are quoted: the machine is shared and noisy.

    .venv/bin/python bench/release.py [--dataset BEIR_FOLDER] [--repeat 3]
                                      [--sizes 10000,100000] [--switches 5] [--skip-reindex]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_THROUGHPUT = 0.95
TARGET_SECOND_REINDEX = 0.02
TARGET_SWITCH_MS = 50.0


def _workspace(root: Path, **extra):  # type: ignore[no-untyped-def]
    from opslib.infra.workspace import Workspace
    from opslib.settings import Settings

    return Workspace(Settings(workspace=root, runs_dir=root / "runs", log_level="WARNING", **extra))


def _median(values: list[float]) -> float:
    return statistics.median(values)


# (a) and (b) ---------------------------------------------------------------------------------
def bench_reindex(root: Path, dataset: Path | None, repeat: int) -> None:
    from sqlalchemy import select

    from opslib.corpus.indexing import build_index, remove_chunks, servable_chunk_ids
    from opslib.corpus.loader import load_corpus
    from opslib.db.models import Chunk
    from opslib.infra.embedding import Purpose, load_sentence_transformer
    from opslib.infra.model_artifacts import register_model
    from opslib.ops.bootstrap import init_workspace, packaged_model_path

    ws = _workspace(root)
    init_workspace(ws, progress=True)
    if dataset is not None and dataset.is_dir():
        from opslib.corpus.beir import read_beir

        spec, source = read_beir(dataset, "bench"), str(dataset)
    else:
        from opslib.corpus.builtin import build_demo_corpus

        spec, source = build_demo_corpus("bench"), "built-in stdlib corpus"
    print(f"corpus: {source}")
    load_corpus(ws, spec, progress=True)
    # A second version with the same weights: nothing of it is indexed yet, so the pipeline must
    # embed every chunk (no reuse from the base model's index, which is another version).
    version = "bench-reindex"
    register_model(ws, version, packaged_model_path(), base_model_version=ws.settings.base_model_version)
    ws.embeddings.load(version)
    chunk_ids = servable_chunk_ids(ws)
    with ws.db.read() as session:
        by_id = dict(session.execute(select(Chunk.id, Chunk.enriched_text).where(Chunk.id.in_(chunk_ids))).all())
    texts = [by_id[c] for c in chunk_ids]
    # The limit the pipeline is held to: the same weights at the same precision and device.
    record = ws.embeddings.load(version)
    model = load_sentence_transformer(record.path, record.device, record.precision)
    model.encode(texts[:64], batch_size=64, normalize_embeddings=True)  # warm-up: first calls pick kernels
    batch = ws.settings.reindex_batch_size
    print(
        f"(a) {len(texts)} chunks, reindex batch {batch}, {repeat} alternated repeats; "
        f"{version} encodes at {record.precision} on {record.device} (pipeline and raw encode alike)"
    )

    raw_s, pipeline_s = [], []
    for i in range(repeat):
        started = time.perf_counter()
        model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
        raw_s.append(time.perf_counter() - started)
        index_name = f"idx-bench-first-{i}"
        started = time.perf_counter()
        report = build_index(
            ws, index_name=index_name, model_version=version, purpose=Purpose.REINDEX, batch_size=batch
        )
        pipeline_s.append(time.perf_counter() - started)
        assert report.embedded == len(chunk_ids), report
        print(
            f"    repeat {i + 1}: raw encode at {record.precision} {raw_s[-1]:.1f} s, "
            f"pipeline at {record.precision} {pipeline_s[-1]:.1f} s"
        )
        if i < repeat - 1:  # leave the last index as the donor for (b)
            remove_chunks(ws, chunk_ids, index_name=index_name)
            ws.vectors.drop(index_name)
    raw, pipeline = _median(raw_s), _median(pipeline_s)
    # Paired: each repeat's pipeline against the raw encode run just before it, so the machine's
    # drift between repeats cancels; the median of those ratios is quoted.
    ratio_a = _median([r / p for r, p in zip(raw_s, pipeline_s, strict=True)])
    print(
        f"(a) at {record.precision}: raw {len(texts) / raw:.1f} chunks/s, pipeline {len(texts) / pipeline:.1f} "
        f"chunks/s (medians) → "
        f"throughput ratio {ratio_a:.3f}, median of the paired repeats (target ≥ {TARGET_THROUGHPUT})"
    )

    second_s = []
    for i in range(repeat):
        started = time.perf_counter()
        report = build_index(
            ws, index_name=f"idx-bench-second-{i}", model_version=version, purpose=Purpose.REINDEX, batch_size=batch
        )
        second_s.append(time.perf_counter() - started)
        assert report.embedded == 0 and report.reused == len(chunk_ids), report
    again_s = []
    for _ in range(repeat):  # the same index again: every entry is unchanged
        started = time.perf_counter()
        report = build_index(
            ws,
            index_name=f"idx-bench-first-{repeat - 1}",
            model_version=version,
            purpose=Purpose.REINDEX,
            batch_size=batch,
        )
        again_s.append(time.perf_counter() - started)
        assert report.unchanged == len(chunk_ids), report
    ratio_b = _median(second_s) / pipeline
    print(
        f"(b) second reindex into a new index (all reused) {_median(second_s):.2f} s vs first {pipeline:.1f} s "
        f"→ ratio {ratio_b:.4f} (target ≤ {TARGET_SECOND_REINDEX}); "
        f"same index again (all unchanged) {_median(again_s):.2f} s → ratio {_median(again_s) / pipeline:.4f}"
    )


# (c) -------------------------------------------------------------------------------------------
def _synthetic_release(root: Path, chunks: int, dimension: int = 384, seed: int = 0):  # type: ignore[no-untyped-def]
    """A workspace with ``chunks`` READY chunks in the active index and in a ready candidate's."""
    from sqlalchemy import insert

    from opslib.control.release import apply
    from opslib.control.runs import get_run, mark_ready, request_run
    from opslib.corpus.indexing import content_hash
    from opslib.db.models import (
        Chunk,
        TrainingDataset,
        VectorIndexEntry,
        Video,
        VideoStatus,
        utcnow,
    )
    from opslib.infra.model_artifacts import register_model
    from opslib.lifecycle.reindex import open_candidate
    from opslib.ops.bootstrap import init_workspace, packaged_model_path

    ws = _workspace(root)
    base = init_workspace(ws)
    now = utcnow() - timedelta(hours=1)
    per_video = 50
    videos = [
        {
            "id": f"v{v:06d}",
            "user_id": "owner",
            "project_id": f"p{v % 20}",
            "title": f"video {v}",
            "status": VideoStatus.READY,
            "created_at": now,
            "updated_at": now,
        }
        for v in range(chunks // per_video)
    ]
    rows = [
        {
            "id": f"v{c // per_video:06d}-c{c % per_video:03d}",
            "video_id": f"v{c // per_video:06d}",
            "start_ms": c * 1000,
            "end_ms": c * 1000 + 1000,
            "text": f"synthetic chunk {c}",
            "enriched_text": f"synthetic chunk {c}",
            "chunking_version": "bench",
            "created_at": now,
        }
        for c in range(chunks)
    ]
    with ws.db.transaction() as session:
        session.execute(insert(Video), videos)
        session.execute(insert(Chunk), rows)
        session.add(
            TrainingDataset(
                dataset_version="bench-dataset",
                storage_path="none",
                generation_rule_version="retrieval-group-v1",
                source_window_start=now,
                source_window_end=now,
                counts={},
                eligible=True,
                ineligible_reasons=[],
            )
        )
    run_id = request_run(ws.db, trigger_source="manual", trace_id="bench-release").run_id
    assert run_id is not None
    run = get_run(ws.db, run_id)
    register_model(
        ws, run.candidate_model_version, packaged_model_path(), base_model_version=base.model_version, run_id=run_id
    )
    rng = np.random.default_rng(seed)
    targets = [(base.index_name, base.model_version), (run.candidate_index_name, run.candidate_model_version)]
    for index_name, version in targets:
        for start in range(0, chunks, 5000):
            part = rows[start : start + 5000]
            vectors = rng.standard_normal((len(part), dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ws.vectors.upsert(
                index_name,
                ids=[r["id"] for r in part],
                embeddings=vectors,
                metadatas=[
                    {"chunk_id": r["id"], "video_id": r["video_id"], "user_id": "owner", "project_id": "p0"}
                    for r in part
                ],
            )
        with ws.db.transaction() as session:
            session.execute(
                insert(VectorIndexEntry),
                [
                    {
                        "index_name": index_name,
                        "chunk_id": r["id"],
                        "embedding_model_version": version,
                        "content_hash": content_hash(r["enriched_text"]),
                        "created_at": now,
                    }
                    for r in rows
                ],
            )
    from opslib.db.models import Decision, ModelEvaluation
    from opslib.lifecycle.evaluation.evaluate import PASS_CRITERIA

    with ws.db.transaction() as session:  # a stand-in verdict: the release stages only need the run
        evaluation = ModelEvaluation(
            run_id=run_id,
            candidate_model_version=run.candidate_model_version,
            baseline_model_version=run.baseline_model_version,
            evaluation_dataset_ref="bench",
            sample_count=0,
            quality_metrics={},
            pass_criteria=PASS_CRITERIA,
            overall_decision=Decision.PASS,
            detail_artifact_path="none",
        )
        session.add(evaluation)
        session.flush()
        mark_ready(session, run_id, evaluation_id=evaluation.id)
    open_candidate(ws, run_id, actor="bench")
    with ws.db.transaction() as session:
        apply(
            session,
            "CANDIDATE_READY",
            actor="bench",
            trace_id="bench-release",
            changes={"candidate_ready_at": utcnow()},
        )
    return ws, run_id, run.candidate_model_version


def bench_switches(root: Path, sizes: list[int], switches: int) -> None:
    from opslib.control.messages import new_rollback_request
    from opslib.lifecycle.cutover import cutover
    from opslib.lifecycle.rollback import roll_back

    medians: dict[int, tuple[float, float]] = {}
    for size in sizes:
        print(f"(c) preparing {size:,} chunks (synthetic vectors) …")
        cut_ms, back_ms = [], []
        for i in range(switches):
            ws, run_id, candidate = _synthetic_release(root / f"switch-{size}-{i}", size, seed=i)
            report = cutover(ws, run_id)
            assert report.missing == 0 and report.switch_ms is not None
            back = roll_back(ws, new_rollback_request(candidate, reason="bench"))
            assert back.outcome == "rolled back" and back.switch_ms is not None
            cut_ms.append(report.switch_ms)
            back_ms.append(back.switch_ms)
            print(
                f"    {size:>7,} chunks, try {i + 1}: cutover switch {report.switch_ms:.1f} ms, "
                f"rollback switch {back.switch_ms:.1f} ms"
            )
        medians[size] = (_median(cut_ms), _median(back_ms))
    small, large = min(sizes), max(sizes)
    for what, k in (("cutover", 0), ("rollback", 1)):
        a, b = medians[small][k], medians[large][k]
        print(
            f"(c) {what} switch: median {a:.1f} ms at {small:,} vs {b:.1f} ms at {large:,} chunks → "
            f"growth ratio {b / a:.2f} (target ≈ 1, no growth); worst {max(a, b) / TARGET_SWITCH_MS:.2f} "
            f"of the {TARGET_SWITCH_MS:.0f} ms budget"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="BEIR folder for (a)/(b) (e.g. one `opsbench export-builtin DIR` wrote); default: the built-in corpus",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--switches", type=int, default=3, help="cutover + rollback pairs per size")
    parser.add_argument("--skip-reindex", action="store_true")
    parser.add_argument("--skip-switch", action="store_true")
    parser.add_argument("--workspace", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    if args.dataset is not None and not args.dataset.is_dir():
        parser.error(f"--dataset {args.dataset}: not a folder (a BEIR folder: corpus.jsonl, queries.jsonl, qrels.tsv)")
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        root = args.workspace or Path(tmp)
        if not args.skip_reindex:
            bench_reindex(root / "reindex", args.dataset, args.repeat)
        if not args.skip_switch:
            bench_switches(root, [int(s) for s in args.sizes.split(",")], args.switches)


if __name__ == "__main__":
    main()
