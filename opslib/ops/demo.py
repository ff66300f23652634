"""The demo: an empty workspace to an archived, executed stage report in one command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from opslib.control.messages import new_rollback_request, new_training_request
from opslib.control.queue import publish
from opslib.control.release import current_release
from opslib.control.runs import get_run
from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.loader import CorpusReport, load_corpus, read_queries
from opslib.corpus.search import search
from opslib.db.models import (
    CorpusImport,
    ModelEvaluation,
    StageExecution,
    TrainingDataset,
    utcnow,
)
from opslib.execution.runner import StageResult, run_stage
from opslib.execution.worker import Worker, WorkerReport
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import (
    records_from_corpus,
    register_evaluation_set,
)
from opslib.lifecycle.feedback.simulate import SimulationReport, simulate_traffic
from opslib.ops.bootstrap import BootstrapReport, init_workspace

DEMO_CORPUS = "stdlib"


@dataclass
class DemoReport:
    bootstrap: BootstrapReport
    corpus: CorpusReport | None
    traffic: SimulationReport
    feedback_health: StageResult
    build_dataset: StageResult
    dataset: TrainingDataset | None
    worker: WorkerReport | None = None
    evaluation: ModelEvaluation | None = None
    evaluation_report: str | None = None
    served_by: str | None = None  # the model a search after the loop was served by
    rollback: WorkerReport | None = None

    @property
    def ok(self) -> bool:
        return (
            self.feedback_health.ok
            and self.build_dataset.ok
            and (self.dataset is None or not self.dataset.eligible or self.evaluation is not None)
        )


def run_demo(
    ws: Workspace, *, requests: int = 300, seed: int = 7, rollback: bool = False, say: Callable[[str], None] = print
) -> DemoReport:
    """Initialise, bootstrap, load the built-in corpus, simulate traffic, run 10 and 20, then
    train and evaluate a candidate through the worker (which releases it on a PASS), show a
    search, and with ``rollback`` roll the release back and search again."""
    say("[1/6] initialising the workspace and bootstrapping the base model + its index")
    boot = init_workspace(ws, progress=True)
    say(f"      serving {boot.model_version} on index {boot.index_name}")
    with ws.db.read() as session:
        imported = session.get(CorpusImport, DEMO_CORPUS) is not None
    corpus = None
    if imported:
        say(f"[2/6] built-in corpus {DEMO_CORPUS!r} already loaded")
    else:
        say("[2/6] building the built-in corpus from the standard library's docstrings")
        corpus = load_corpus(ws, build_demo_corpus(DEMO_CORPUS), progress=True)
        say(
            f"      {corpus.chunks} chunks in {corpus.videos} videos of {corpus.projects} projects; "
            f"{corpus.traffic_queries} traffic queries, {corpus.reserved_queries} reserved for evaluation"
        )
    say(f"[3/6] simulating {requests} search requests with feedback")
    traffic = simulate_traffic(
        ws,
        DEMO_CORPUS,
        requests=requests,
        seed=seed,
        progress=True,
        start=utcnow() - timedelta(days=6),
        spread=timedelta(days=6),
    )
    say(
        f"      {traffic.likes} likes, {traffic.dislikes} dislikes; relevant chunk in top-5 for "
        f"{traffic.hit_rate:.0%} of requests; {len(traffic.ingest.raw_files)} raw log file(s)"
    )
    say("[4/6] running stage 10_feedback_health")
    health = run_stage(ws, "10_feedback_health", {"window_days": 7}, progress=True)
    say(f"      {health.status.value}: report {health.output_html}")
    say("[5/6] running stage 20_build_dataset (source window: the last 30 days)")
    build = run_stage(ws, "20_build_dataset", {"source_window_days": 30}, progress=True)
    dataset = None
    with ws.db.read() as session:
        if build.ok:  # the newest dataset is the one this execution built or found
            dataset = session.scalars(
                select(TrainingDataset).order_by(TrainingDataset.created_at.desc()).limit(1)
            ).first()
    if dataset is not None:
        verdict = (
            "ELIGIBLE for training" if dataset.eligible else "NOT eligible: " + "; ".join(dataset.ineligible_reasons)
        )
        say(
            f"      dataset {dataset.dataset_version}: {dataset.counts['trainable_groups']} groups, "
            f"{dataset.counts['negatives']} negatives — {verdict}"
        )
    say(f"      {build.status.value}: report {build.output_html}")
    report = DemoReport(boot, corpus, traffic, health, build, dataset)
    if dataset is None or not dataset.eligible:
        say("[6/6] no eligible dataset: nothing to train (simulate more traffic and run the demo again)")
        return report
    say(
        "[6/6] the loop: TRAINING_REQUEST → worker: 30_train_candidate, 40_evaluate_candidate, and on PASS "
        "50_reindex_candidate + 60_cutover"
    )
    evaluation_set = register_evaluation_set(
        ws, records_from_corpus(ws, DEMO_CORPUS), source=f"corpus {DEMO_CORPUS}: reserved queries"
    )
    say(f"      evaluation set {evaluation_set.evaluation_dataset_ref}: {evaluation_set.sample_count} reserved queries")
    publish(ws.db, new_training_request(reason="demo"))
    report.worker = Worker(ws, name="demo-worker").run_once()
    for run_id, status in report.worker.runs.items():
        run = get_run(ws.db, run_id)
        with ws.db.read() as session:
            report.evaluation = session.get(ModelEvaluation, run.evaluation_id) if run.evaluation_id else None
            last = session.scalars(
                select(StageExecution)
                .where(StageExecution.run_id == run_id, StageExecution.stage == "40_evaluate_candidate")
                .order_by(StageExecution.id.desc())
                .limit(1)
            ).first()
        report.evaluation_report = last.output_html if last else None
        if report.evaluation is not None:
            q = report.evaluation.quality_metrics
            say(
                f"      run {run_id}: {status} — verdict {report.evaluation.overall_decision.value}; recall@5 "
                f"{q['baseline']['recall_at_5']:.3f} → {q['candidate']['recall_at_5']:.3f}, nDCG@5 "
                f"{q['baseline']['ndcg_at_5']:.3f} → {q['candidate']['ndcg_at_5']:.3f}"
            )
        else:
            say(f"      run {run_id}: {status} — {run.failed_stage} {run.failure_type}: {run.failure_reason}")
        if run.release_hold and run_id not in report.worker.released:
            say(f"      held, not released: {run.release_hold} (`opsbench promote {run_id}`)")
        say(f"      evaluation report: {report.evaluation_report}")
    for run_id, what in report.worker.released.items():
        say(f"      release of run {run_id} (50_reindex_candidate → 60_cutover): {what}")
    report.served_by = _show_search(ws, say)
    if rollback:
        with ws.db.read() as session:
            release = current_release(session)
            assert release is not None  # init_workspace bootstrapped it
            active, snapshot = release.active_model_version, release.rollback_snapshot_active_model_version
        if snapshot is None:
            say("      rollback: no cutover happened, so there is no snapshot to roll back to")
        else:
            say(f"      rollback requested: {active} → {snapshot} (70_rollback)")
            publish(ws.db, new_rollback_request(active, reason="demo --rollback"))
            report.rollback = Worker(ws, name="demo-worker").run_once()
            for message_id, what in report.rollback.rollbacks:
                say(f"      rollback message {message_id}: {what}")
            report.served_by = _show_search(ws, say)
    return report


def _show_search(ws: Workspace, say: Callable[[str], None]) -> str:
    query = next(iter(read_queries(ws, DEMO_CORPUS, "reserved")))
    response = search(ws, query.query_text, project_id=query.project_id, user_id="demo-user")
    say(
        f"      search {query.query_text[:60]!r} → served by {response.active_model_version} "
        f"({response.active_index_name}); top hit {response.refs[0] if response.refs else '—'}"
    )
    return response.active_model_version
