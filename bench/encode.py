"""Benchmark: encode precision on this machine — speed and quality, measured side by side in one run.

On the same texts (the passages of the BEIR folder ``--dataset`` names, when given, and the
built-in corpus), each repeat runs every variant once, in a rotated order, so the machine's drift
cancels. docs/benchmarks.md quotes runs on faq-dev, a FAQ collection of 937 passages; the built-in
corpus as a BEIR folder comes from ``opsbench export-builtin DIR``:

- raw fp32 ``SentenceTransformer.encode`` (batch 64, normalised);
- raw encode at the precision ``choose_precision("auto", …)`` picks here (printed with its reason);
- the reindex pipeline (``build_index``: SOT reads, content hashes, encode, Chroma upsert, entry
  writes) into a fresh index for a freshly registered version at that precision (nothing reused);
- with ``--sizes``, the pipeline on random subsets of the ``--dataset`` passages (time vs corpus size).

Then the query-encode p50 for one query through ``ws.embeddings.embed([q], version, Purpose.SEARCH)``
at each precision (alternated), and recall@5 / nDCG@5 on ``--dataset`` at each precision (exact search
over all passages; the passages' vectors are the raw fp32 encode's and the pipeline's index).
Finally one training epoch on the demo's dataset (built as ``opsbench demo`` builds it) with
``encode_precision="fp32"`` vs ``"auto"``, and the two candidates' recall@5 / MRR@5 / nDCG@5 on the
demo's reserved queries with bootstrap CIs (``opslib.lifecycle.evaluation.evaluate``).

Targets (this machine): pipeline ≥ 2.0× raw fp32 and ≥ 0.95× raw encode at the same precision;
recall@5 and nDCG@5 within 0.5 points of fp32; a training epoch ≥ 1.5× faster, the candidate's
metrics inside fp32's bootstrap CI. Medians of the paired repeats are quoted.

    .venv/bin/python bench/encode.py [--dataset BEIR_FOLDER] [--repeat 3]
                                     [--sizes 0.25,0.5] [--queries 40] [--skip-training]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_VS_FP32 = 2.0
TARGET_VS_SAME = 0.95
TARGET_POINTS = 0.5  # recall@5 / nDCG@5, in points (1 point = 0.01)
TARGET_TRAINING = 1.5
K = 5


def _workspace(root: Path, **extra: Any) -> Any:
    from opslib.infra.workspace import Workspace
    from opslib.settings import Settings

    return Workspace(Settings(workspace=root, runs_dir=root / "runs", log_level="WARNING", **extra))


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@dataclass
class Corpus:
    label: str
    spec: Any
    ws: Any
    chunk_ids: list[str]  # servable, in the pipeline's (text-length) order
    texts: list[str]
    times: dict[str, list[float]] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # last repeat's, per variant


def _prepare(root: Path, label: str, spec: Any) -> Corpus:
    from sqlalchemy import select

    from opslib.corpus.indexing import servable_chunk_ids
    from opslib.corpus.loader import load_corpus
    from opslib.db.models import Chunk
    from opslib.ops.bootstrap import init_workspace

    ws = _workspace(root / label, encode_precision="auto")
    init_workspace(ws, progress=True)
    load_corpus(ws, spec, progress=True)
    chunk_ids = servable_chunk_ids(ws, by_length=True)
    with ws.db.read() as session:
        by_id = dict(session.execute(select(Chunk.id, Chunk.enriched_text).where(Chunk.id.in_(chunk_ids))).all())
    return Corpus(label, spec, ws, chunk_ids, [by_id[c] for c in chunk_ids])


class Versions:
    """Freshly registered versions of the packaged weights at a fixed precision (no check re-run)."""

    def __init__(self, choice: Any) -> None:
        self.choice = choice
        self.count = 0

    def new(self, ws: Any, tag: str) -> str:
        from opslib.infra.model_artifacts import register_model
        from opslib.ops.bootstrap import packaged_model_path

        self.count += 1
        version = f"bench-{self.choice.precision}-{tag}-{self.count}"
        register_model(ws, version, packaged_model_path(), base_model_version=None, precision=self.choice)
        ws.embeddings.load(version)  # loaded + smoke encode outside the timing, as a serving endpoint is
        return version


def _pipeline(ws: Any, version: str, chunk_ids: list[str] | None) -> float:
    """Seconds for ``build_index`` (all chunks) or ``index_chunks`` (a subset, same order) into a new index."""
    from opslib.corpus.indexing import build_index, index_chunks
    from opslib.infra.embedding import Purpose

    index_name = f"idx-{version}"
    batch = ws.settings.reindex_batch_size
    if chunk_ids is None:
        elapsed, report = _timed(
            lambda: build_index(
                ws, index_name=index_name, model_version=version, purpose=Purpose.REINDEX, batch_size=batch
            )
        )
    else:
        elapsed, report = _timed(
            lambda: index_chunks(
                ws, chunk_ids, index_name=index_name, model_version=version, purpose=Purpose.REINDEX, batch_size=batch
            )
        )
    assert report.reused == 0 and report.unchanged == 0 and not report.missing, report
    return elapsed


def _unload(ws: Any, version: str) -> None:
    """Drop a bench version's weights from the process-wide cache (memory stays flat over repeats)."""
    from opslib.infra import embedding

    record = ws.embeddings.load(version)
    ws.embeddings.unload(version)
    with embedding._weights_lock:
        embedding._weights.pop((record.path, record.device, record.precision), None)


# Encode speed ----------------------------------------------------------------------------------
def bench_speed(corpora: list[Corpus], choice: Any, repeat: int, sizes: list[float]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from opslib.infra.embedding import load_sentence_transformer
    from opslib.infra.precision import PrecisionChoice
    from opslib.ops.bootstrap import packaged_model_path

    precision = choice.precision
    path = packaged_model_path()
    raw = {p: load_sentence_transformer(path, choice.device, p) for p in dict.fromkeys(("fp32", precision))}
    for model in raw.values():  # warm-up: first calls pick kernels
        model.encode(corpora[0].texts[:64], batch_size=64, normalize_embeddings=True)
    versions = Versions(choice)
    results: dict[str, Any] = {"sizes": {}}

    for corpus in corpora:
        subsets: dict[str, list[str]] = {}
        if sizes and corpus is corpora[0]:
            rng = np.random.default_rng(0)
            for share in sizes:
                n = max(1, round(share * len(corpus.chunk_ids)))
                picked = set(rng.choice(len(corpus.chunk_ids), size=n, replace=False).tolist())
                subsets[f"pipeline@{n}"] = [c for i, c in enumerate(corpus.chunk_ids) if i in picked]

        def raw_variant(p: str, corpus: Corpus = corpus) -> Callable[[], float]:
            def run() -> float:
                elapsed, vectors = _timed(
                    lambda: raw[p].encode(corpus.texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
                )
                corpus.vectors[f"raw-{p}"] = np.asarray(vectors, dtype=np.float32)
                return elapsed

            return run

        def pipeline_variant(ids: list[str] | None, corpus: Corpus = corpus) -> Callable[[], float]:
            def run() -> float:
                version = versions.new(corpus.ws, corpus.label)
                elapsed = _pipeline(corpus.ws, version, ids)
                if ids is None:
                    corpus.vectors["pipeline-version"] = np.array([version])
                _unload(corpus.ws, version)
                return elapsed

            return run

        variants: dict[str, Callable[[], float]] = {"raw-fp32": raw_variant("fp32")}
        if precision != "fp32":
            variants[f"raw-{precision}"] = raw_variant(precision)
        variants["pipeline"] = pipeline_variant(None)
        for name, ids in subsets.items():
            variants[name] = pipeline_variant(ids)
        names = list(variants)
        corpus.times = {name: [] for name in names}
        print(f"\n[{corpus.label}] {len(corpus.texts)} chunks; variants {names}; {repeat} repeats, order rotated")
        with tqdm(total=repeat * len(names), desc=f"encode {corpus.label}", unit="run") as bar:
            for i in range(repeat):
                order = names[i % len(names) :] + names[: i % len(names)]
                for name in order:
                    corpus.times[name].append(variants[name]())
                    bar.update(1)
                bar.write(
                    f"    repeat {i + 1}: " + ", ".join(f"{name} {corpus.times[name][-1]:.1f} s" for name in names)
                )
        n = len(corpus.texts)
        t = corpus.times
        same = f"raw-{precision}"
        vs_fp32 = _median([a / b for a, b in zip(t["raw-fp32"], t["pipeline"], strict=True)])
        vs_same = _median([a / b for a, b in zip(t[same], t["pipeline"], strict=True)])
        raw_gain = _median([a / b for a, b in zip(t["raw-fp32"], t[same], strict=True)])
        print(
            f"[{corpus.label}] medians: raw fp32 {n / _median(t['raw-fp32']):.1f} chunks/s "
            f"({_median(t['raw-fp32']):.1f} s), raw {precision} {n / _median(t[same]):.1f} chunks/s "
            f"({_median(t[same]):.1f} s), pipeline at {precision} {n / _median(t['pipeline']):.1f} chunks/s "
            f"({_median(t['pipeline']):.1f} s)"
        )
        print(
            f"[{corpus.label}] paired ratios (median of {repeat}): raw {precision} / raw fp32 = {raw_gain:.2f}×; "
            f"pipeline / raw fp32 = {vs_fp32:.2f}× (target ≥ {TARGET_VS_FP32}: {_verdict(vs_fp32 >= TARGET_VS_FP32)}); "
            f"pipeline / raw {precision} = {vs_same:.3f} (target ≥ {TARGET_VS_SAME}: "
            f"{_verdict(vs_same >= TARGET_VS_SAME)})"
        )
        results[corpus.label] = {"vs_fp32": vs_fp32, "vs_same": vs_same, "raw_gain": raw_gain}
        if subsets:
            points = [(len(ids), _median(t[name])) for name, ids in subsets.items()] + [(n, _median(t["pipeline"]))]
            xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
            slope, intercept = np.polyfit(xs, ys, 1)
            print(
                f"[{corpus.label}] pipeline at {precision} vs corpus size (medians): "
                + ", ".join(f"{x:.0f} chunks {y:.1f} s ({1000 * y / x:.1f} ms/chunk)" for x, y in points)
                + f"; least-squares fit {1000 * slope:.1f} ms/chunk + {intercept:.2f} s"
            )
            results["sizes"] = {"points": points, "ms_per_chunk": 1000 * slope, "constant_s": intercept}
    results["fp32_choice"] = PrecisionChoice("fp32", choice.device, "bench: the fp32 reference")
    return results


# Query latency ---------------------------------------------------------------------------------
def bench_queries(root: Path, choice: Any, queries: list[str], repeat: int, per_repeat: int) -> None:
    """p50 of one query through the search path, each precision in its own workspace whose active
    (bootstrapped) model was registered at it; alternated query by query."""
    from tqdm.auto import tqdm

    from opslib.control.release import current_release
    from opslib.infra.embedding import Purpose
    from opslib.ops.bootstrap import init_workspace

    spaces = {}
    for precision in dict.fromkeys(("fp32", choice.precision)):
        setting = "fp32" if precision == "fp32" else "auto"
        ws = _workspace(root / f"query-{precision}", encode_precision=setting)
        init_workspace(ws)
        with ws.db.read() as session:
            release = current_release(session)
            assert release is not None
            active = release.active_model_version
        assert ws.embeddings.precision(active) == precision, (precision, ws.embeddings.precision(active))
        ws.embeddings.embed(queries[:8], active, Purpose.SEARCH)  # warm-up
        spaces[precision] = (ws, active)
    samples: dict[str, list[list[float]]] = {p: [] for p in spaces}
    with tqdm(total=repeat * per_repeat, desc="query encode", unit="query") as bar:
        for i in range(repeat):
            for p in spaces:
                samples[p].append([])
            for j in range(per_repeat):
                q = queries[(i * per_repeat + j) % len(queries)]
                order = list(spaces) if j % 2 == 0 else list(reversed(spaces))
                for p in order:
                    ws, active = spaces[p]
                    elapsed, _ = _timed(
                        lambda ws=ws, active=active, q=q: ws.embeddings.embed([q], active, Purpose.SEARCH)
                    )
                    samples[p][-1].append(elapsed * 1000)
                bar.update(1)
    p50 = {p: [float(np.median(s)) for s in runs] for p, runs in samples.items()}
    line = ", ".join(
        f"{p} p50 {_median(v):.1f} ms (repeats {', '.join(f'{x:.1f}' for x in v)})" for p, v in p50.items()
    )
    if choice.precision != "fp32":
        ratio = _median([a / b for a, b in zip(p50["fp32"], p50[choice.precision], strict=True)])
        line += f"; fp32 / {choice.precision} = {ratio:.2f}× (median of paired repeats)"
    print(f"\n[query] one query via ws.embeddings.embed(..., Purpose.SEARCH), {per_repeat} per repeat: {line}")


# Retrieval quality -----------------------------------------------------------------------------
def _metrics(query_vectors: np.ndarray, doc_vectors: np.ndarray, chunk_ids: list[str], relevant: list[set[str]]) -> Any:
    from opslib.lifecycle.evaluation.metrics import query_metrics

    scores = query_vectors @ doc_vectors.T
    rows = []
    for i, rel in enumerate(relevant):
        top = np.argsort(-scores[i], kind="stable")[:K]
        rows.append(query_metrics([chunk_ids[j] for j in top], rel))
    return {m: np.array([r[m] for r in rows]) for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")}


def bench_quality(corpus: Corpus, choice: Any, fp32_choice: Any) -> None:
    """recall@5 / nDCG@5 over all of the dataset's queries with qrels, exact search over all passages."""
    from opslib.corpus.loader import chunk_id_for
    from opslib.infra.embedding import Purpose
    from opslib.infra.model_artifacts import register_model
    from opslib.lifecycle.evaluation.metrics import paired_bootstrap
    from opslib.ops.bootstrap import packaged_model_path

    ws = corpus.ws
    queries = [q for q in corpus.spec.queries if q.relevant_doc_ids]
    relevant = [{chunk_id_for(corpus.spec.name, d) for d in q.relevant_doc_ids} for q in queries]
    texts = [q.text for q in queries]
    register_model(ws, "bench-quality-fp32", packaged_model_path(), base_model_version=None, precision=fp32_choice)
    results = {}
    q32 = ws.embeddings.embed(texts, "bench-quality-fp32", Purpose.EVALUATION)
    results["fp32"] = _metrics(q32, corpus.vectors["raw-fp32"], corpus.chunk_ids, relevant)
    if choice.precision != "fp32":
        version = str(corpus.vectors["pipeline-version"][0])
        stored = ws.vectors.get_embeddings(f"idx-{version}", corpus.chunk_ids)
        docs = np.stack([stored[c] for c in corpus.chunk_ids]).astype(np.float32)
        qp = ws.embeddings.embed(texts, version, Purpose.EVALUATION)
        results[choice.precision] = _metrics(qp, docs, corpus.chunk_ids, relevant)
    print(f"\n[quality] {corpus.label}, {len(queries)} queries, exact search over {len(corpus.chunk_ids)} passages")
    base = results["fp32"]
    for p, r in results.items():
        line = ", ".join(f"{m} {r[m].mean():.4f}" for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5"))
        if p != "fp32":
            parts = []
            for m in ("recall_at_5", "ndcg_at_5"):
                delta = 100 * (r[m].mean() - base[m].mean())
                low, high = paired_bootstrap(r[m] - base[m], 1000)
                parts.append(
                    f"{m} Δ {delta:+.2f} points (paired CI [{100 * low:+.2f}, {100 * high:+.2f}]; target |Δ| ≤ "
                    f"{TARGET_POINTS}: {_verdict(abs(delta) <= TARGET_POINTS)})"
                )
            changed = int(sum((r[m] != base[m]).sum() for m in ("recall_at_5",)))
            line += "; " + "; ".join(parts) + f"; queries whose recall@5 changed: {changed}"
        print(f"[quality] {p}: {line}")


# Training --------------------------------------------------------------------------------------
def bench_training(corpus: Corpus, repeat: int, samples: int) -> None:
    """One epoch on the demo's dataset, fp32 vs auto (bf16 autocast where the CPU has it)."""
    from tqdm.auto import tqdm

    from opslib.control.release import current_release
    from opslib.control.runs import fail_run, request_run
    from opslib.db.models import FailureType, RunStage, utcnow
    from opslib.infra.precision import resolve_device, training_mixed_precision
    from opslib.lifecycle.dataset.builder import build_dataset
    from opslib.lifecycle.evaluation.metrics import METRICS, paired_bootstrap, query_metrics
    from opslib.lifecycle.evaluation.retrieval import project_corpora, rank
    from opslib.lifecycle.evaluation.sets import records_from_corpus
    from opslib.lifecycle.feedback.simulate import simulate_traffic
    from opslib.lifecycle.training import TrainingParams, train_candidate

    ws = corpus.ws  # the built-in corpus, loaded as `opsbench demo` loads it, serving at "auto"
    print("\n[training] the demo's dataset: 300 simulated searches (seed 7, over 6 days), 20_build_dataset's build")
    traffic = simulate_traffic(
        ws,
        corpus.spec.name,
        requests=300,
        seed=7,
        progress=True,
        start=utcnow() - timedelta(days=6),
        spread=timedelta(days=6),
    )
    build = build_dataset(ws, source_window_days=30, progress=True)
    print(
        f"[training] traffic {traffic.likes} likes / {traffic.dislikes} dislikes → dataset {build.dataset_version}: "
        f"{build.counts['trainable_groups']} groups, {build.counts['negatives']} negatives, eligible {build.eligible}"
    )
    assert build.eligible, build.ineligible_reasons
    s = ws.settings
    params = TrainingParams(
        epochs=1,
        batch_size=s.training_batch_size,
        learning_rates=tuple(s.training_learning_rates[:1]),
        max_seq_length=s.training_max_seq_length,
        seed=s.training_seed,
    )
    device = resolve_device(s.device)
    spaces = {setting: _workspace(s.workspace, encode_precision=setting) for setting in ("fp32", "auto")}
    mixed = {setting: training_mixed_precision(setting, device) for setting in spaces}
    print(
        f"[training] {params}; device {device}; mixed precision: fp32 setting → {mixed['fp32']}, auto → {mixed['auto']}"
    )
    times: dict[str, list[float]] = {setting: [] for setting in spaces}
    candidates: dict[str, str] = {}
    losses: dict[str, float | None] = {}
    order = list(spaces)
    for i in tqdm(range(repeat), desc="training repeats", unit="pair"):
        for setting in order if i % 2 == 0 else list(reversed(order)):
            tws = spaces[setting]
            run_id = request_run(tws.db, trigger_source="manual", trace_id=f"bench-encode-{setting}-{i}").run_id
            assert run_id is not None
            elapsed, report = _timed(lambda tws=tws, run_id=run_id: train_candidate(tws, run_id, params, progress=True))
            times[setting].append(elapsed)
            candidates[setting] = report.candidate_model_version
            losses[setting] = report.loss_history[-1][1] if report.loss_history else None
            tqdm.write(
                f"    repeat {i + 1}, encode_precision={setting} ({mixed[setting]}): {elapsed:.1f} s, "
                f"{report.steps} steps of {report.rows} rows, final loss {losses[setting]}"
            )
            fail_run(tws.db, run_id, stage=RunStage.EVALUATION, failure_type=FailureType.ERROR, reason="bench: next")
    ratio = _median([a / b for a, b in zip(times["fp32"], times["auto"], strict=True)])
    print(
        f"[training] one epoch: fp32 median {_median(times['fp32']):.1f} s, auto ({mixed['auto']}) median "
        f"{_median(times['auto']):.1f} s → {ratio:.2f}× faster (median of {repeat} paired repeats; target ≥ "
        f"{TARGET_TRAINING}: {_verdict(ratio >= TARGET_TRAINING)}). Times include loading the weights and "
        "registering the candidate (auto also runs the start-up precision check)."
    )

    # The candidates judged as stage 40 judges them: exact search per project over the demo's
    # reserved queries, each model at the precision recorded for it.
    records = records_from_corpus(ws, corpus.spec.name)
    corpora = project_corpora(ws, {r.project_id for r in records})
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None
        base = release.active_model_version
    models = {"base": base, "fp32": candidates["fp32"], "auto": candidates["auto"]}
    per_query: dict[str, dict[str, list[float]]] = {}
    for name, version in models.items():
        ranked = rank(ws, version, records, corpora, progress=False)
        per_query[name] = {m: [] for m in METRICS}
        for record, hits in zip(records, ranked, strict=True):
            rel = set(record.expected_results) & set(corpora[record.project_id].chunk_ids)
            if not rel:
                continue
            metrics = query_metrics([doc for doc, _ in hits], rel)
            for m in METRICS:
                per_query[name][m].append(metrics[m])
    print(
        f"[training] evaluation on {len(per_query['base']['recall_at_5'])} reserved queries, {samples} bootstrap samples:"
    )
    precisions = {name: ws.embeddings.precision(v) for name, v in models.items()}
    inside_all = True
    for m in METRICS:
        b, c32, ca = (np.asarray(per_query[n][m]) for n in ("base", "fp32", "auto"))
        low, high = paired_bootstrap(c32, samples)  # CI of the fp32 candidate's mean (queries resampled)
        d_low, d_high = paired_bootstrap(ca - c32, samples)
        inside = low <= ca.mean() <= high
        inside_all &= inside
        print(
            f"    {m}: base ({precisions['base']}) {b.mean():.4f}; fp32 candidate {c32.mean():.4f} "
            f"(Δ vs base {c32.mean() - b.mean():+.4f}, 95 % CI of its mean [{low:.4f}, {high:.4f}]); "
            f"auto candidate ({precisions['auto']}) {ca.mean():.4f} (Δ vs base {ca.mean() - b.mean():+.4f}; "
            f"auto − fp32 {ca.mean() - c32.mean():+.4f}, paired CI [{d_low:+.4f}, {d_high:+.4f}]) → "
            f"{'inside' if inside else 'OUTSIDE'} fp32's CI"
        )
    print(f"[training] auto candidate's metrics inside the fp32 candidate's bootstrap CI: {_verdict(inside_all)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="a BEIR folder (e.g. one `opsbench export-builtin DIR` wrote); without it the built-in corpus only",
    )
    parser.add_argument("--repeat", type=int, default=3, help="paired repeats of every timed variant")
    parser.add_argument(
        "--sizes", default="0.25,0.5", help="shares of the --dataset passages also indexed per repeat ('' = none)"
    )
    parser.add_argument("--queries", type=int, default=40, help="single-query encodes per precision per repeat")
    parser.add_argument("--training-repeat", type=int, default=None, help="paired training epochs (default --repeat)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the training evaluation")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-encode", action="store_true", help="only the training comparison")
    parser.add_argument("--workspace", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be ≥ 1")
    if args.dataset is not None and not args.dataset.is_dir():
        parser.error(f"--dataset {args.dataset}: not a folder (a BEIR folder: corpus.jsonl, queries.jsonl, qrels.tsv)")

    from opslib.corpus.builtin import build_demo_corpus
    from opslib.infra.precision import choose_precision, resolve_device
    from opslib.ops.bootstrap import packaged_model_path
    from opslib.ops.demo import DEMO_CORPUS

    device = resolve_device("auto")
    choice = choose_precision("auto", device, packaged_model_path())
    print(f"chosen precision on {device}: {choice.precision} — {choice.reason}")
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        root = args.workspace or Path(tmp)
        corpora = []
        faq = None
        if args.dataset is not None and not args.skip_encode:
            from opslib.corpus.beir import read_beir

            label = args.dataset.resolve().name
            faq = _prepare(root, f"{label}-dataset" if label == "builtin" else label, read_beir(args.dataset, "bench"))
            corpora.append(faq)
        elif not args.skip_encode:
            print("no --dataset: the built-in corpus only, no recall/nDCG")
        builtin = _prepare(root, "builtin", build_demo_corpus(DEMO_CORPUS))
        corpora.append(builtin)
        if not args.skip_encode:
            sizes = [float(x) for x in args.sizes.split(",") if x.strip()] if faq else []
            speed = bench_speed(corpora, choice, args.repeat, sizes)
            query_texts = [q.text for q in (faq or builtin).spec.queries]
            bench_queries(root, choice, query_texts, args.repeat, args.queries)
            if faq is not None:
                bench_quality(faq, choice, speed["fp32_choice"])
        if not args.skip_training:
            bench_training(builtin, args.training_repeat or args.repeat, args.bootstrap)


if __name__ == "__main__":
    main()
