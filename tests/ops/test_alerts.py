"""Alerts: each problem kind from the state that causes it, what clears it, and how the CLI
(`opsbench status --check`) and the dashboard show the list."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import add_run, dataset_row, mini_corpus_spec
from sqlalchemy import select

from opslib.corpus.loader import load_corpus
from opslib.db.models import (
    ExecutionStatus,
    FailureType,
    MessageOutcome,
    MLPipelineRun,
    OpsMessage,
    RunStage,
    RunStatus,
    ScheduleTick,
    ServingEndpoint,
    StageExecution,
    TickStatus,
    TrainingDataset,
    VectorIndexEntry,
    utcnow,
)
from opslib.execution.schedule import latest_tick
from opslib.infra.workspace import Workspace
from opslib.ops.alerts import Problem, ProblemKind, problems
from opslib.ops.cli import main
from opslib.ops.dashboard import Dashboard, shown_html
from opslib.settings import Settings

INDEX = "idx-tiny-base"


def _with(ws: Workspace, **settings: object) -> Workspace:
    return Workspace(Settings(**{**ws.settings.model_dump(), **settings}))


def _lines(ws: Workspace, now: datetime | None = None) -> list[str]:
    return [p.line() for p in problems(ws, now)]


def _run(ws: Workspace, status: RunStatus, **fields: object) -> int:
    with ws.db.transaction() as session:
        return add_run(session, status, trace_id="t", **fields).id


def _execution(ws: Workspace, stage: str, status: ExecutionStatus, **fields: object) -> int:
    with ws.db.transaction() as session:
        row = StageExecution(
            stage=stage, notebook=f"{stage}.ipynb", parameters={}, status=status, trace_id="t", **fields
        )
        session.add(row)
        session.flush()
        return row.id


def _env(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ws fixture's settings as the CLI reads them (OPS_*)."""
    s = ws.settings
    for key, value in {
        "OPS_WORKSPACE": str(s.workspace),
        "OPS_RUNS_DIR": str(s.runs_dir),
        "OPS_DB_URL": s.resolved_db_url,
        "OPS_BASE_MODEL_PATH": str(s.base_model_path),
        "OPS_BASE_MODEL_VERSION": s.base_model_version,
        "OPS_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, value)


def test_a_clean_workspace_has_no_problems(ws: Workspace) -> None:
    assert problems(ws) == []


def test_problem_lines_explain_themselves() -> None:
    problem = Problem(ProblemKind.NOT_READY, "endpoint a:8000", "live but not ready: loading")
    assert problem.line() == "NOT READY endpoint a:8000: live but not ready: loading"
    assert problem.as_dict()["line"] == problem.line() and problem.as_dict()["kind"] == "NOT READY"


# Runs and stage executions ------------------------------------------------------------------------
def test_a_stalled_run_and_a_stalled_stage_execution_alert(ws: Workspace) -> None:
    now = utcnow()
    beat = now - timedelta(hours=1)
    run = _run(ws, RunStatus.RUNNING, heartbeat_at=beat)
    execution = _execution(ws, "30_train_candidate", ExecutionStatus.RUNNING, run_id=run, heartbeat_at=beat)
    _execution(ws, "10_feedback_health", ExecutionStatus.RUNNING, heartbeat_at=now)
    assert _lines(ws, now) == [
        f"STALLED run {run}: no heartbeat since {beat:%Y-%m-%dT%H:%MZ} (stall limit 900 s): is a worker running? "
        "its next pass resumes the run or fails it",
        f"STALLED stage execution {execution} (30_train_candidate, run {run}): no heartbeat since "
        f"{beat:%Y-%m-%dT%H:%MZ} (stall limit 900 s): its process died or hangs; the next scheduler or worker "
        "pass marks it ABANDONED",
    ]
    assert _lines(ws, beat + timedelta(minutes=10)) == []  # within the stall limit: alive


def test_a_failed_run_alerts_until_a_later_run_passes_or_the_window_ends(ws: Workspace) -> None:
    now = utcnow()
    _run(ws, RunStatus.READY_FOR_RELEASE)
    fail = _run(
        ws,
        RunStatus.FAILED,
        failed_stage=RunStage.EVALUATION,
        failure_type=FailureType.FAIL,
        failure_reason="recall_at_5 dropped",
    )
    error = _run(
        ws, RunStatus.FAILED, failed_stage=RunStage.TRAINING, failure_type=FailureType.ERROR, failure_reason="OOM"
    )
    lines = _lines(ws, now)
    assert [line.split(",")[0] for line in lines] == [
        f"FAILED run {fail}: FAIL (quality below the criteria) at EVALUATION",
        f"FAILED run {error}: ERROR (a system error) at TRAINING",
    ]
    assert lines[0].endswith(": recall_at_5 dropped") and lines[1].endswith(": OOM")
    # Past the incident window, an unanswered failure stops alerting.
    assert _lines(ws, now + timedelta(hours=73)) == []
    assert _lines(_with(ws, alert_incident_window_h=100), now + timedelta(hours=73)) != []
    # A run that passes later clears them.
    _run(ws, RunStatus.READY_FOR_RELEASE)
    assert _lines(ws, now) == []


def test_an_abandoned_execution_alerts_until_the_stage_succeeds_again(ws: Workspace) -> None:
    now = utcnow()
    abandoned = _execution(
        ws,
        "20_build_dataset",
        ExecutionStatus.ABANDONED,
        finished_at=now,
        output_ipynb="runs/x.ipynb",
        error={"ename": "ExecutionAbandoned", "evalue": "no heartbeat since 10:00: the process running it died"},
    )
    _execution(ws, "10_feedback_health", ExecutionStatus.SUCCEEDED)  # another stage: clears nothing
    assert _lines(ws, now) == [
        f"ABANDONED stage execution {abandoned} (20_build_dataset): ended {now:%Y-%m-%dT%H:%MZ}: no heartbeat since "
        "10:00: the process running it died; its partial notebook is runs/x.ipynb"
    ]
    assert _lines(ws, now + timedelta(hours=73)) == []
    _execution(ws, "20_build_dataset", ExecutionStatus.SUCCEEDED)
    assert _lines(ws, now) == []


# Schedules ----------------------------------------------------------------------------------------
def _tick(ws: Workspace, schedule: str, due_at: datetime, status: TickStatus, **fields: object) -> None:
    with ws.db.transaction() as session:
        session.add(ScheduleTick(schedule=schedule, due_at=due_at, status=status, trace_id="t", **fields))


def test_schedules_alert_when_overdue_stalled_or_failed_once_a_scheduler_runs(ws: Workspace) -> None:
    s = ws.settings
    now = datetime(2026, 12, 9, 12, 0, tzinfo=UTC)  # a Wednesday, 21:00 in Seoul
    assert _lines(ws, now) == []  # no scheduler has ever run here: nobody expects a tick
    dataset_due = latest_tick(s.dataset_schedule, s.schedule_timezone, now)
    training_due = latest_tick(s.training_schedule, s.schedule_timezone, now)
    stale = dataset_due - timedelta(days=2)
    _tick(ws, "dataset", stale, TickStatus.DONE, finished_at=stale)
    _tick(ws, "training", training_due, TickStatus.DONE, finished_at=training_due)
    assert _lines(ws, now) == [
        f"OVERDUE schedule dataset: the tick due {dataset_due:%Y-%m-%dT%H:%MZ} ('0 3 * * *', Asia/Seoul) was not "
        f"claimed within 3600 s; its last claimed tick is {stale:%Y-%m-%dT%H:%MZ} (DONE): is `opsbench schedule` "
        "running?"
    ]
    # Within the grace, a tick just due is not overdue yet: only the one before it counts.
    _tick(ws, "dataset", dataset_due - timedelta(days=1), TickStatus.DONE)
    assert _lines(ws, dataset_due + timedelta(minutes=30)) == []
    # The due tick claimed by a scheduler that then died: STALLED.
    _tick(ws, "dataset", dataset_due, TickStatus.STARTED, started_at=dataset_due, heartbeat_at=dataset_due)
    assert _lines(ws, now) == [
        f"STALLED schedule dataset: the tick due {dataset_due:%Y-%m-%dT%H:%MZ} is STARTED with no heartbeat since "
        f"{dataset_due:%Y-%m-%dT%H:%MZ} (stall limit 900 s): its scheduler died; the next pass takes it over"
    ]
    with ws.db.transaction() as session:
        row = session.scalars(select(ScheduleTick).where(ScheduleTick.due_at == dataset_due)).one()
        row.status, row.finished_at, row.outcome = TickStatus.FAILED, now, "20_build_dataset execution 7 FAILED"
    assert _lines(ws, now) == [
        f"FAILED schedule dataset: the tick due {dataset_due:%Y-%m-%dT%H:%MZ} failed (not retried; the next tick or "
        "an on-demand run is): 20_build_dataset execution 7 FAILED"
    ]
    _tick(ws, "dataset", dataset_due + timedelta(days=1), TickStatus.DONE)  # the next tick ran: cleared
    assert _lines(ws, now + timedelta(days=1)) == []


# Datasets -----------------------------------------------------------------------------------------
def test_dataset_lag_and_unusable_datasets_alert(ws: Workspace) -> None:
    dataset_row(ws, "20261201-aaaaaaaaaaaa", hours_ago=40)
    (line,) = _lines(ws)
    assert line.startswith("LAGGING datasets: the newest eligible dataset, 20261201-aaaaaaaaaaaa, covers feedback up")
    assert "40 h ago (limit 30 h)" in line
    assert _lines(_with(ws, alert_dataset_lag_h=48)) == []
    dataset_row(ws, "20261202-bbbbbbbbbbbb", hours_ago=2)
    assert _lines(ws) == []
    with ws.db.transaction() as session:
        row = session.get(TrainingDataset, "20261202-bbbbbbbbbbbb")
        assert row is not None
        row.unusable_at, row.unusable_reason = utcnow(), "train.jsonl: sha256 differs from its manifest"
    assert [line.split(":")[0] for line in _lines(ws)] == ["LAGGING datasets", "UNUSABLE dataset 20261202-bbbbbbbbbbbb"]
    assert _lines(ws)[1].endswith("train.jsonl: sha256 differs from its manifest; it is never picked again")


def test_no_eligible_dataset_alerts_only_once_datasets_are_built(ws: Workspace) -> None:
    dataset_row(ws, "20261201-aaaaaaaaaaaa", eligible=False, hours_ago=1)
    (line,) = _lines(ws)
    assert line.startswith("LAGGING datasets: no eligible dataset: the newest, 20261201-aaaaaaaaaaaa (window ending")
    assert line.endswith("is ineligible: groups 3 < 10")


# Indexes ------------------------------------------------------------------------------------------
def test_an_index_missing_vectors_or_its_collection_alerts(ws: Workspace) -> None:
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    assert problems(ws) == []
    with ws.db.read() as session:
        two = list(
            session.scalars(select(VectorIndexEntry.chunk_id).where(VectorIndexEntry.index_name == INDEX).limit(2))
        )
    ws.vectors.delete(INDEX, two)
    (line,) = _lines(ws)
    assert line.startswith(f"MISMATCH index {INDEX} (active): the store holds")
    assert "2 listed vectors are not there" in line and "docs/reliability.md (Verified reads)" in line
    ws.vectors.drop(INDEX)
    (line,) = _lines(ws)
    assert line.startswith(f"MISSING index {INDEX} (active): no collection in the vector store")


# Endpoints ----------------------------------------------------------------------------------------
def _endpoint(ws: Workspace, endpoint_id: str, **fields: object) -> None:
    now = utcnow()
    values: dict[str, object] = {
        "address": f"http://{endpoint_id}",
        "loaded_versions": ["tiny-base"],
        "serving_model_version": "tiny-base",
        "serving_index_name": INDEX,
        "ready": True,
        "started_at": now - timedelta(hours=1),
        "heartbeat_at": now,
    }
    with ws.db.transaction() as session:
        session.add(ServingEndpoint(endpoint_id=endpoint_id, **{**values, **fields}))


def test_endpoints_alert_when_not_ready_behind_silent_or_too_few(ws: Workspace) -> None:
    now = utcnow()
    _endpoint(ws, "ok:1")
    _endpoint(ws, "loading:1", ready=False, ready_reason="loading tiny-base", started_at=now)  # still starting
    _endpoint(ws, "stopped:1", heartbeat_at=now - timedelta(days=3), stopped_at=now - timedelta(days=3))
    _endpoint(ws, "gone:1", heartbeat_at=now - timedelta(days=3))  # silent for longer than alerted
    assert _lines(ws, now) == []
    _endpoint(ws, "broken:1", ready=False, ready_reason="model tiny-base failed its smoke encode")
    _endpoint(ws, "old:1", serving_model_version="tiny-old")
    silent = now - timedelta(minutes=5)
    _endpoint(ws, "killed:1", heartbeat_at=silent)
    assert _lines(ws, now) == [
        "NOT READY endpoint broken:1 (http://broken:1): live but not ready since it started "
        f"{now - timedelta(hours=1):%Y-%m-%dT%H:%MZ}: model tiny-base failed its smoke encode",
        f"SILENT endpoint killed:1 (http://killed:1): no heartbeat since {silent:%Y-%m-%dT%H:%MZ} (limit 15 s) and "
        "no clean stop: killed or hung; restart it (alerted for 24 h, then counted as removed)",
        "BEHIND endpoint old:1 (http://old:1): serves tiny-old, the release row says tiny-base (switched —): it "
        "does not follow the release row",
    ]
    # Endpoints are optional unless a setting says how many must serve.
    assert not any(line.startswith("TOO FEW") for line in _lines(_with(ws, alert_endpoints_expected=1), now))
    assert _lines(_with(ws, alert_endpoints_expected=2), now)[-1] == (
        "TOO FEW endpoints: 1 live, ready and in step; OPS_ALERT_ENDPOINTS_EXPECTED says 2: start `opsbench serve` "
        "replicas"
    )


# Queue --------------------------------------------------------------------------------------------
def test_a_parked_message_alerts_within_the_incident_window(ws: Workspace) -> None:
    now = utcnow()
    with ws.db.transaction() as session:
        message = OpsMessage(
            message_type="TRAINING_REQUEST",
            payload={},
            trace_id="t",
            attempt=5,
            acked_at=now,
            outcome=MessageOutcome.PARKED,
            outcome_reason="delivered 5 times without an ack",
        )
        session.add(message)
        session.add(
            OpsMessage(
                message_type="TRAINING_REQUEST", payload={}, trace_id="t", acked_at=now, outcome=MessageOutcome.DONE
            )
        )
        session.flush()
        message_id = message.id
    assert _lines(ws, now) == [
        f"PARKED message {message_id} (TRAINING_REQUEST): parked as poison {now:%Y-%m-%dT%H:%MZ} after 5 deliveries, "
        "never redelivered: delivered 5 times without an ack; request it again once the cause is fixed"
    ]
    assert _lines(ws, now + timedelta(hours=73)) == []


# The command line and the dashboard --------------------------------------------------------------
def test_status_check_exits_1_with_one_line_per_problem_and_0_without(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(ws, monkeypatch)
    assert main(["status", "--check"]) == 0
    assert capsys.readouterr().out == "OK: no problems\n"
    assert main(["status"]) == 0
    assert capsys.readouterr().out.startswith("problems: none\nworkspace: ")

    run = _run(ws, RunStatus.RUNNING, heartbeat_at=utcnow() - timedelta(hours=1))
    dataset_row(ws, "20261201-aaaaaaaaaaaa", hours_ago=40)
    assert main(["status", "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [f"STALLED run {run}", "LAGGING datasets"]
    assert out == [p.line() for p in problems(ws)]

    assert main(["status"]) == 0  # without --check, status still exits 0: it is a summary
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "problems (2):" and shown[1:3] == [f"  {line}" for line in out]
    assert shown[3].startswith("workspace: ")

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [p["line"] for p in status["problems"]] == out and status["release"]["active_model_version"] == "tiny-base"
    assert main(["status", "--check", "--json"]) == 1
    assert [p["kind"] for p in json.loads(capsys.readouterr().out)] == ["STALLED", "LAGGING"]


def test_status_check_on_a_folder_without_a_workspace_exits_2_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv("OPS_WORKSPACE", str(folder / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(folder / "runs"))
    assert main(["status", "--check"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("the workspace is not initialised: run `opsbench init`\n")
    assert list(folder.iterdir()) == []


def test_the_dashboard_shows_the_problem_list_first(ws: Workspace) -> None:
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    assert dashboard.widget.children[1] is dashboard.problems  # under the header, above the tabs
    assert dashboard.widget.children[2] is dashboard.tabs
    assert "no problems" in shown_html(dashboard.problems)

    run = _run(ws, RunStatus.RUNNING, heartbeat_at=utcnow() - timedelta(hours=1))
    dataset_row(ws, "20261201-aaaaaaaaaaaa", hours_ago=40)
    dashboard.refresh()
    box = shown_html(dashboard.problems)
    assert "2 problem(s)" in box and "#b3261e" in box  # red: a stalled run is not for later
    assert f">STALLED</span> run {run}: no heartbeat since" in box and ">LAGGING</span> datasets: " in box

    with ws.db.transaction() as session:
        stalled = session.get(MLPipelineRun, run)
        assert stalled is not None
        stalled.status = RunStatus.SUPERSEDED
    dashboard.refresh()
    box = shown_html(dashboard.problems)
    assert "1 problem(s)" in box and "#b35c00" in box and "STALLED" not in box  # amber: only lagging
