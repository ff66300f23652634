"""The demo: an empty workspace to an archived, executed stage report in one command.

With ``serve`` (the default) the managed embedding endpoint runs beside it for the whole demo
(``opsbench serve`` on a free loopback port, no token: loopback only): the simulated users search
and give feedback over HTTP, and the searches shown before and after the release go over HTTP too.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
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
from opslib.execution.context import recorded_outputs
from opslib.execution.runner import StageResult, run_stage
from opslib.execution.worker import Worker, WorkerReport
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import (
    records_from_corpus,
    register_evaluation_set,
)
from opslib.lifecycle.feedback.intake import flush_outbox
from opslib.lifecycle.feedback.simulate import SimulationReport, TrafficChannel, simulate_traffic
from opslib.ops.bootstrap import BootstrapReport, init_workspace
from opslib.ops.progress import StageProgress
from opslib.service.client import EndpointChannel, EndpointClient
from opslib.service.server import ServerProcess, spawn_server

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
    endpoint_url: str | None = None  # the demo's HTTP endpoint while it ran

    @property
    def ok(self) -> bool:
        return (
            self.feedback_health.ok
            and self.build_dataset.ok
            and (self.dataset is None or not self.dataset.eligible or self.evaluation is not None)
        )


@contextlib.contextmanager
def _endpoint(ws: Workspace, serve: bool, say: Callable[[str], None]) -> Iterator[ServerProcess | None]:
    if not serve:
        yield None
        return
    log_path = ws.settings.workspace / "logs" / "serve.log"
    server = spawn_server(ws.settings.model_copy(update={"log_file": log_path}), log_path, allow_anonymous=True)
    say(f"      endpoint serving on {server.url} (log {server.log_path}); try:")
    say(
        f"      curl -s {server.url}/v1/search -H 'Content-Type: application/json' "
        """-d '{"project_id": "stdlib-text", "user_id": "me", "query": "encode bytes as base64"}'"""
    )
    try:
        yield server
    finally:
        code = server.stop()
        # uvicorn re-raises SIGTERM once its graceful shutdown is done: -15 is a clean stop too.
        how = "cleanly" if code in (0, -signal.SIGTERM) else f"with exit code {code}"
        say(f"      endpoint stopped {how}; pending feedback flushed")


def run_demo(
    ws: Workspace,
    *,
    requests: int = 300,
    seed: int = 7,
    rollback: bool = False,
    serve: bool = True,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Initialise, bootstrap, load the built-in corpus, simulate traffic, run 10 and 20, then
    train and evaluate a candidate through the worker (which releases it on a PASS), show a
    search, and with ``rollback`` roll the release back and search again. With ``serve`` the
    traffic and the searches shown go over HTTP to an endpoint the demo runs meanwhile."""
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
    with _endpoint(ws, serve, say) as server:
        client = EndpointClient(server.url) if server is not None else None
        try:
            return _loop(ws, boot, corpus, client, requests=requests, seed=seed, rollback=rollback, say=say)
        finally:
            if client is not None:
                client.close()


def _loop(
    ws: Workspace,
    boot: BootstrapReport,
    corpus: CorpusReport | None,
    client: EndpointClient | None,
    *,
    requests: int,
    seed: int,
    rollback: bool,
    say: Callable[[str], None],
) -> DemoReport:
    channel: TrafficChannel | None = EndpointChannel(client) if client is not None else None
    say(f"[3/6] simulating {requests} search requests with feedback" + (f" over HTTP ({client.url})" if client else ""))
    traffic = simulate_traffic(
        ws,
        DEMO_CORPUS,
        requests=requests,
        seed=seed,
        progress=True,
        start=utcnow() - timedelta(days=6),
        spread=timedelta(days=6),
        channel=channel,
    )
    if client is not None:
        written = flush_outbox(ws, force=True)  # what the endpoint has not flushed yet
        say(
            f"      {traffic.likes} likes, {traffic.dislikes} dislikes; relevant chunk in top-5 for "
            f"{traffic.hit_rate:.0%} of requests; {traffic.ingest.accepted} feedback events acknowledged (202), "
            f"now in raw_logs/ ({written.flushed} flushed just now)"
        )
    else:
        say(
            f"      {traffic.likes} likes, {traffic.dislikes} dislikes; relevant chunk in top-5 for "
            f"{traffic.hit_rate:.0%} of requests; {len(traffic.ingest.raw_files)} raw log file(s)"
        )
    _show_search(ws, client, say)  # before the loop: the base model serves
    say("[4/6] running stage 10_feedback_health")
    health = run_stage(ws, "10_feedback_health", {"window_days": 7}, progress=True)
    recorded = recorded_outputs(ws, health.execution_id)
    if "health_verdict" in recorded:
        reasons = "; ".join(recorded.get("health_reasons") or []) or "within every threshold"
        say(f"      feedback health {recorded['health_verdict']}: {recorded.get('events')} events — {reasons}")
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
    report = DemoReport(boot, corpus, traffic, health, build, dataset, endpoint_url=client.url if client else None)
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
    # The worker's stages run in notebook kernels whose output reaches no console: the watcher
    # prints each stage's start and end and, while one runs, what it is doing.
    with StageProgress(ws, say):
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
    report.served_by = _show_search(ws, client, say)
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
            with StageProgress(ws, say):
                report.rollback = Worker(ws, name="demo-worker").run_once()
            for message_id, what in report.rollback.rollbacks:
                say(f"      rollback message {message_id}: {what}")
            report.served_by = _show_search(ws, client, say)
    return report


def _show_search(ws: Workspace, client: EndpointClient | None, say: Callable[[str], None]) -> str:
    query = next(iter(read_queries(ws, DEMO_CORPUS, "reserved")))
    if client is not None:
        answer = client.search(query.query_text, query.project_id, "demo-user")
        model, index = answer["active_model_version"], answer["active_index_name"]
        refs = [c["ref"] for c in answer["chunks"]]
        how = "over HTTP "
    else:
        response = search(ws, query.query_text, project_id=query.project_id, user_id="demo-user")
        model, index, refs, how = response.active_model_version, response.active_index_name, response.refs, ""
    say(
        f"      search {how}{query.query_text[:60]!r} → served by {model} ({index}); top hit {refs[0] if refs else '—'}"
    )
    return str(model)
