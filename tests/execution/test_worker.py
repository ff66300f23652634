"""The worker end to end (real notebooks, tiny model): requests, runs, failures, the reconciler.

Verdicts are fixed by design, not by how a random tiny model happens to rank. A PASS has a blind
base (``blind_wws``): it cannot read the passages, so it ranks them all alike (evaluation's tie
order, chunk id) and scores 0 on this corpus, where no reserved query's answer is among the first
five chunks of its project, while the candidate trained from it reads them. A FAIL trains the
tiny base — which finds every answer by its words (1.0 on every metric) — on the shuffled control
(every query paired with another query's answer), so it can only lose.
"""

from datetime import timedelta
from pathlib import Path

import pytest
from helpers import dataset_row, loop_ready
from sqlalchemy import select, update
from tiny_model import build_blind_model

from opslib.control.messages import new_training_request
from opslib.control.queue import publish
from opslib.control.release import current_release
from opslib.control.runs import get_run, latest_eligible_dataset, request_run
from opslib.db.models import (
    Decision,
    ExecutionStatus,
    FailureType,
    MessageOutcome,
    MLPipelineRun,
    ModelEvaluation,
    OpsMessage,
    RunStage,
    RunStatus,
    StageExecution,
    TrainingDataset,
    utcnow,
)
from opslib.execution.worker import Worker
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.control import register_shuffled_control
from opslib.lifecycle.evaluation.metrics import METRICS
from opslib.lifecycle.evaluation.sets import (
    records_from_corpus,
    register_evaluation_set,
)
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings

pytestmark = pytest.mark.slow

WORKER_SETTINGS = {
    "heartbeat_interval_s": 1.0,
    "run_stall_after_s": 30.0,
    "training_batch_size": 8,
    "training_max_seq_length": 32,  # the whole of a mini-corpus passage
    "bootstrap_samples": 200,
}


@pytest.fixture
def wws(ws: Workspace) -> Workspace:
    return Workspace(Settings(**{**ws.settings.model_dump(), **WORKER_SETTINGS}))


@pytest.fixture(scope="session")
def blind_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blind_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny-blind")


@pytest.fixture
def blind_wws(settings: Settings, blind_model_dir: Path) -> Workspace:
    """Bootstrapped on a base that reads no text: any candidate that reads the passages beats it."""
    blind = {"base_model_path": blind_model_dir, "base_model_version": "tiny-blind"}
    workspace = Workspace(Settings(**{**settings.model_dump(), **WORKER_SETTINGS, **blind}))
    init_workspace(workspace)
    return workspace


def _ready_loop(ws: Workspace, title: str = "") -> str:
    loop_ready(ws, title=title)
    return register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved").evaluation_dataset_ref


def _message(ws: Workspace, message_id: int) -> OpsMessage:
    with ws.db.read() as session:
        return session.get(OpsMessage, message_id)


def _executions(ws: Workspace, run_id: int) -> list[StageExecution]:
    with ws.db.read() as session:
        return list(session.query(StageExecution).filter_by(run_id=run_id).order_by(StageExecution.id))


def test_a_request_is_trained_evaluated_and_judged(blind_wws: Workspace) -> None:
    """Must PASS: the candidate reads the passages its blind base could not, and is released."""
    wws = blind_wws
    _ready_loop(wws)
    message_id = publish(wws.db, new_training_request(trace_id="trace-e2e"))
    report = Worker(wws, name="w1").run_once()
    (run_id,) = report.runs
    run = get_run(wws.db, run_id)
    assert run.trace_id == "trace-e2e" and run.request_message_id == message_id
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.READY_FOR_RELEASE, None, None)
    assert report.runs[run_id] == RunStatus.READY_FOR_RELEASE.value
    with wws.db.read() as session:
        evaluation = session.get(ModelEvaluation, run.evaluation_id)
        release = current_release(session)
    assert evaluation is not None
    assert (evaluation.overall_decision, evaluation.fail_reason) == (Decision.PASS, None)
    quality = evaluation.quality_metrics
    assert all(quality["candidate"][m] > quality["baseline"][m] for m in METRICS)  # beaten, not merely tied
    # Released at once (auto_cutover, the default): 50 and 60 follow 30 and 40, and it serves.
    assert report.released == {run_id: "cut over: now serving"}
    assert release is not None and release.active_model_version == run.candidate_model_version
    executions = _executions(wws, run_id)
    assert [(e.stage, e.status) for e in executions] == [
        ("30_train_candidate", ExecutionStatus.SUCCEEDED),
        ("40_evaluate_candidate", ExecutionStatus.SUCCEEDED),
        ("50_reindex_candidate", ExecutionStatus.SUCCEEDED),
        ("60_cutover", ExecutionStatus.SUCCEEDED),
    ]
    assert all(e.trace_id == "trace-e2e" for e in executions)
    html = Path(executions[1].output_html).read_text()
    assert "PASS" in html and "recall_at_5" in html and "Provenance" in html
    assert "Model–corpus fit" in html and "keyword recall@5 (no model)" in html  # both models' fit
    assert '"level": ' not in html  # the kernel's JSON logs go to the .log beside the report, not into it
    assert Path(executions[1].output_html).with_suffix(".log").is_file()
    assert "data:image/png;base64" in Path(executions[0].output_html).read_text()  # the loss curve
    message = _message(wws, message_id)
    assert message.outcome is MessageOutcome.DONE and f"run {run_id}" in message.outcome_reason
    assert Worker(wws).run_once().runs == {}  # nothing left to do


def test_a_candidate_trained_on_wrong_answers_fails_evaluation(wws: Workspace) -> None:
    """Must FAIL: the base answers every reserved query; the candidate is trained on the shuffled
    control (each query paired with another's answer) hard enough to learn it. Nothing is released."""
    wws = Workspace(Settings(**{**wws.settings.model_dump(), "training_learning_rates": [1e-3], "training_epochs": 1}))
    _ready_loop(wws)
    with wws.db.read() as session:
        (dataset,) = session.scalars(select(TrainingDataset.dataset_version))
    register_shuffled_control(wws, dataset, seed=0)
    message_id = publish(wws.db, new_training_request(trace_id="trace-fail"))
    report = Worker(wws).run_once()
    (run_id,) = report.runs
    run = get_run(wws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (
        RunStatus.FAILED,
        RunStage.EVALUATION,
        FailureType.FAIL,
    )
    assert report.runs[run_id] == RunStatus.FAILED.value and report.released == {}
    with wws.db.read() as session:
        evaluation = session.get(ModelEvaluation, run.evaluation_id)
        release = current_release(session)
    assert evaluation is not None and evaluation.overall_decision is Decision.FAIL
    assert run.failure_reason == evaluation.fail_reason and "candidate below baseline" in run.failure_reason
    quality = evaluation.quality_metrics
    assert all(quality["candidate"][m] < quality["baseline"][m] for m in METRICS)
    assert release is not None and release.active_model_version == "tiny-base"
    executions = _executions(wws, run_id)
    assert [(e.stage, e.status) for e in executions] == [
        ("30_train_candidate", ExecutionStatus.SUCCEEDED),
        ("40_evaluate_candidate", ExecutionStatus.SUCCEEDED),
    ]
    assert "FAIL" in Path(executions[1].output_html).read_text()
    # "run failed" is a WARNING: it is in the kernel's log beside the report, with the trace
    assert '"trace_id": "trace-fail"' in Path(executions[1].output_html).with_suffix(".log").read_text()
    assert _message(wws, message_id).outcome is MessageOutcome.DONE


def test_no_eligible_dataset_refuses_the_request(wws: Workspace) -> None:
    message_id = publish(wws.db, new_training_request())
    report = Worker(wws).run_once()
    assert report.runs == {}
    message = _message(wws, message_id)
    assert message.outcome is MessageOutcome.REFUSED and "no eligible training dataset" in message.outcome_reason


def test_a_redelivered_request_creates_no_second_run(wws: Workspace) -> None:
    _ready_loop(wws)
    message_id = publish(wws.db, new_training_request())
    # A worker took the message, started the run and died before acking it.
    first = request_run(wws.db, trigger_source="manual", trace_id="t", request_message_id=message_id)
    report = Worker(wws).run_once()
    assert report.runs == {}  # the run is another worker's (fresh heartbeat): not driven twice
    with wws.db.read() as session:
        assert session.query(MLPipelineRun).count() == 1
    assert _message(wws, message_id).outcome is MessageOutcome.DONE
    assert get_run(wws.db, first.run_id).status is RunStatus.RUNNING


def test_the_reconciler_resumes_a_stalled_run_with_intact_inputs(blind_wws: Workspace, tiny_candidate_dir) -> None:  # type: ignore[no-untyped-def]
    """Its worker died after training: the resumed run is evaluated, not trained again (and
    passes: the candidate reads, its blind base does not)."""
    from opslib.infra.model_artifacts import register_model

    wws = Workspace(Settings(**{**blind_wws.settings.model_dump(), "auto_cutover": False}))
    _ready_loop(wws)
    run_id = request_run(wws.db, trigger_source="manual", trace_id="t").run_id
    run = get_run(wws.db, run_id)
    register_model(
        wws,
        run.candidate_model_version,
        tiny_candidate_dir,
        base_model_version=run.baseline_model_version,
        run_id=run_id,
    )  # what 30_train_candidate had published before the worker died
    with wws.db.transaction() as session:
        session.execute(
            update(MLPipelineRun).where(MLPipelineRun.id == run_id).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    report = Worker(wws).run_once()
    assert report.reconciled == [(run_id, "resumed")]
    assert [e.stage for e in _executions(wws, run_id)] == ["40_evaluate_candidate"]
    assert get_run(wws.db, run_id).status is RunStatus.READY_FOR_RELEASE


def test_the_reconciler_fails_a_stalled_run_whose_inputs_are_gone(wws: Workspace) -> None:
    dataset = loop_ready(wws)
    run_id = request_run(wws.db, trigger_source="manual", trace_id="t").run_id
    wws.objects.local_path(f"datasets/{dataset}/train.jsonl").write_text("tampered\n")
    with wws.db.transaction() as session:
        session.execute(
            update(MLPipelineRun).where(MLPipelineRun.id == run_id).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    report = Worker(wws).run_once()
    run = get_run(wws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.FAILED, RunStage.TRAINING, FailureType.ERROR)
    assert "stalled: no heartbeat since" in run.failure_reason and "fails its checksum" in run.failure_reason
    assert report.reconciled[0][1].startswith("failed: stalled")


def test_an_exception_in_training_fails_the_run_with_error(wws: Workspace) -> None:
    _ready_loop(wws)
    # Stored as written (it verifies: a hand-edited one never reaches training, see
    # tests/lifecycle/test_verified_reads.py), but not what training can read.
    # (Its window ends a minute ahead: after loop_ready's, which ends a second after it was built.)
    broken = dataset_row(wws, "20991231-notjsonatall", hours_ago=-1 / 60, artifact=b"not json at all\n")
    with wws.db.read() as session:
        assert latest_eligible_dataset(session).dataset_version == broken
    publish(wws.db, new_training_request())
    report = Worker(wws).run_once()
    (run_id,) = report.runs
    run = get_run(wws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.FAILED, RunStage.TRAINING, FailureType.ERROR)
    assert "30_train_candidate failed at cell" in run.failure_reason
    (execution,) = _executions(wws, run_id)
    assert execution.status is ExecutionStatus.FAILED and execution.error["cell_index"] is not None
    assert Path(execution.output_html).read_text()  # archived, failing cell and all


def test_a_stage_that_cannot_start_fails_the_run_instead_of_leaving_it_running(wws: Workspace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dataset_row(wws, artifact=b"")  # the worker verifies it; nothing reads it
    broken = Workspace(
        Settings(
            **{
                **wws.settings.model_dump(),
                "notebooks_dir": tmp_path / "no-notebooks",
                "evaluation_dataset_ref": "eval-0123456789abcdef",
            }
        )
    )
    publish(broken.db, new_training_request())
    (run_id,) = Worker(broken).run_once().runs
    run = get_run(broken.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.FAILED, RunStage.TRAINING, FailureType.ERROR)
    assert "30_train_candidate could not start" in run.failure_reason and "missing" in run.failure_reason


def test_no_evaluation_set_is_an_error_of_the_evaluation_stage(wws: Workspace) -> None:
    dataset_row(wws, artifact=b"")  # the worker verifies it; nothing reads it
    publish(wws.db, new_training_request())
    (run_id,) = Worker(wws).run_once().runs
    run = get_run(wws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (
        RunStatus.FAILED,
        RunStage.EVALUATION,
        FailureType.ERROR,
    )
    assert "no evaluation dataset registered" in run.failure_reason and "nothing was trained" in run.failure_reason
    assert _executions(wws, run_id) == []  # failed before a single stage ran


@pytest.mark.sqlite_only(
    reason="the point is the report's ERROR banner; the failed-run bookkeeping it shares is checked on "
    "PostgreSQL by test_an_exception_in_training_fails_the_run_with_error"
)
def test_the_report_shows_error_when_evaluation_cannot_run(wws: Workspace, tiny_model_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An unfair evaluation set (it shares queries with the training data) → ERROR banner, run ERROR."""
    import opslib.lifecycle.evaluation.sets as sets
    from opslib.execution.runner import run_stage
    from opslib.infra.model_artifacts import register_model
    from opslib.lifecycle.dataset.builder import read_groups
    from opslib.lifecycle.evaluation.sets import EvalRecord

    loop_ready(wws)
    run_id = request_run(wws.db, trigger_source="manual", trace_id="t").run_id
    run = get_run(wws.db, run_id)
    register_model(wws, run.candidate_model_version, tiny_model_dir, base_model_version="tiny-base", run_id=run_id)
    group = next(iter(read_groups(wws, run.dataset_version)))
    monkeypatch.setattr(sets, "traffic_overlap", lambda ws_, records: [])
    ref = sets.register_evaluation_set(
        wws, [EvalRecord(group["query_text"], group["project_id"], ("x",))], source="leak"
    ).evaluation_dataset_ref
    result = run_stage(
        wws,
        "40_evaluate_candidate",
        {"run_id": run_id, "evaluation_dataset_ref": ref, "bootstrap_samples": 200},
        run_id=run_id,
    )
    assert not result.ok and result.error["ename"] == "EvaluationError"
    html = result.output_html.read_text()
    assert "ERROR</b> — evaluation did not complete" in html and "shares 1 queries with training" in html
    run = get_run(wws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (
        RunStatus.FAILED,
        RunStage.EVALUATION,
        FailureType.ERROR,
    )


def test_the_worker_ends_a_dead_processs_stage_execution(ws: Workspace) -> None:
    from opslib.db.models import ExecutionStatus, StageExecution, utcnow

    long_ago = utcnow() - timedelta(seconds=ws.settings.run_stall_after_s + 60)
    with ws.db.transaction() as session:
        row = StageExecution(
            stage="10_feedback_health",
            notebook="10_feedback_health.ipynb",
            parameters={},
            status=ExecutionStatus.RUNNING,
            started_at=long_ago,
            heartbeat_at=long_ago,
            trace_id="killed",
        )
        session.add(row)
        session.flush()
        execution_id = row.id
    assert Worker(ws, name="w").run_once().abandoned_executions == [execution_id]
    with ws.db.read() as session:
        assert session.get(StageExecution, execution_id).status is ExecutionStatus.ABANDONED  # type: ignore[union-attr]
    assert Worker(ws, name="w").run_once().abandoned_executions == []  # ended once, for good
