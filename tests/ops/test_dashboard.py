"""The ops dashboard: panels show the DB's state; buttons drive the guarded actions."""

from __future__ import annotations

import threading
from datetime import timedelta
from html import escape
from pathlib import Path

import pytest
from helpers import add_run, dataset_row
from sqlalchemy import select

from opslib.db.models import (
    AuditLog,
    Decision,
    ExecutionStatus,
    FailureType,
    MessageOutcome,
    MLPipelineRun,
    ModelEvaluation,
    ModelRelease,
    OpsMessage,
    ReleaseEvent,
    RunStage,
    RunStatus,
    StageExecution,
    TrainingDataset,
    TriggerSource,
    utcnow,
)
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.evaluate import PASS_CRITERIA
from opslib.ops import actions, monitor
from opslib.ops.dashboard import (
    Dashboard,
    open_dashboard,
    render_release_diagram,
    shown_html,
)
from opslib.settings import Settings

DATASET = "20261201-aaaaaaaaaaaa"


def _as(ws: Workspace, role: str = "admin") -> Workspace:
    return Workspace(Settings(**{**ws.settings.model_dump(), "operator": "ana", "operator_role": role}))


def _dataset(ws: Workspace, version: str = DATASET, eligible: bool = True, hours_ago: int = 0) -> None:
    dataset_row(ws, version, eligible=eligible, hours_ago=hours_ago)


def _audit(ws: Workspace) -> list[AuditLog]:
    with ws.db.read() as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))


def test_every_panel_renders_an_empty_workspace(ws: Workspace) -> None:
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    assert "no runs yet" in shown_html(dashboard.outputs["Runs"])
    assert "schedule dataset</b> (0 3 * * *, Asia/Seoul)" in shown_html(dashboard.outputs["Runs"])
    release = shown_html(dashboard.outputs["Release"])
    assert "<svg" in release and "STABLE" in release and "nothing in flight" in release
    assert "no rollback snapshot" in release
    assert "no datasets yet" in shown_html(dashboard.outputs["Datasets"])
    assert "no evaluations yet" in shown_html(dashboard.outputs["Evaluations"])
    assert "backlog</b>: empty" in shown_html(dashboard.outputs["Queue"])
    assert "no endpoint registered" in shown_html(dashboard.outputs["Serving"])
    assert "tiny-base" in shown_html(dashboard.outputs["Embedding endpoint"])
    assert "no operator actions yet" in shown_html(dashboard.outputs["Audit"])
    assert "not possible now" in shown_html(dashboard.training.preview)  # no eligible dataset
    assert dashboard.training.button.disabled and dashboard.rollback.button.disabled
    assert "your role is viewer" in shown_html(dashboard.training.preview)
    assert [dashboard.tabs.get_title(i) for i in range(len(Dashboard.PANELS))] == list(Dashboard.PANELS)


def test_runs_panel_tells_fail_error_and_stalled_apart_and_links_reports(ws: Workspace, tmp_path: Path) -> None:
    report = tmp_path / "runs" / "20261201" / "x-40_evaluate_candidate.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>report</html>")
    with ws.db.transaction() as session:
        quality = add_run(
            session,
            RunStatus.FAILED,
            failed_stage=RunStage.EVALUATION,
            failure_type=FailureType.FAIL,
            failure_reason="recall_at_5 0.5 < 0.6",
        )
        system = add_run(
            session,
            RunStatus.FAILED,
            failed_stage=RunStage.TRAINING,
            failure_type=FailureType.ERROR,
            failure_reason="30_train_candidate failed at cell 3: OSError",
        )
        add_run(session, RunStatus.RUNNING, heartbeat_at=utcnow() - timedelta(hours=2), dataset_version=DATASET)
        held = add_run(session, RunStatus.READY_FOR_RELEASE, release_hold="not significant: ndcg_at_5 delta +0.0100")
        promoted = add_run(session, RunStatus.READY_FOR_RELEASE, release_hold="not significant", promoted_at=utcnow())
        session.add(
            StageExecution(
                run_id=quality.id,
                stage="40_evaluate_candidate",
                notebook="40.ipynb",
                parameters={},
                status=ExecutionStatus.SUCCEEDED,
                trace_id="t",
                output_html=str(report),
            )
        )
    view = monitor.runs_view(ws)
    outcomes = {r.id: r.outcome for r in view.recent}
    assert outcomes[quality.id] == "FAIL" and outcomes[system.id] == "ERROR"
    assert (outcomes[held.id], outcomes[promoted.id]) == ("HELD", "PASS")  # a promote lifts the hold
    assert view.running is not None and view.running.stalled and view.running.outcome == "STALLED"
    dashboard = Dashboard(ws, background=False, link_base=tmp_path)
    dashboard.refresh()
    html = shown_html(dashboard.outputs["Runs"])
    assert "quality below criteria" in html and "system error" in html and "STALLED" in html
    assert "held for a promote — not significant: ndcg_at_5 delta +0.0100" in html
    assert 'href="runs/20261201/x-40_evaluate_candidate.html"' in html


def test_under_jupyter_reports_link_where_the_server_serves_runs(ws: Workspace, tmp_path: Path) -> None:
    """With Settings.lab_runs_url (set for its kernels by opslib.ops.lab_runs), every link into
    runs/ is its URL there (a page of its own in a new tab, whose relative links work); a file
    outside runs/ keeps its relative path."""
    served = Workspace(Settings(**{**ws.settings.model_dump(), "lab_runs_url": "/user/ana/ops/runs/"}))
    report = served.settings.runs_dir / "20261201" / "x 1-40_evaluate_candidate.html"
    elsewhere = tmp_path / "elsewhere" / "y-30_train_candidate.html"
    for path in (report, elsewhere):
        path.parent.mkdir(parents=True)
        path.write_text("<html>report</html>")
    with served.db.transaction() as session:
        run = add_run(session, RunStatus.FAILED, failed_stage=RunStage.EVALUATION, failure_type=FailureType.FAIL)
        for stage, path in (("40_evaluate_candidate", report), ("30_train_candidate", elsewhere)):
            session.add(
                StageExecution(
                    run_id=run.id,
                    stage=stage,
                    notebook=f"{stage[:2]}.ipynb",
                    parameters={},
                    status=ExecutionStatus.SUCCEEDED,
                    trace_id="t",
                    output_html=str(path),
                )
            )
    dashboard = Dashboard(served, background=False, link_base=tmp_path)
    dashboard.refresh()
    header = shown_html(dashboard.header)
    assert '<a href="/user/ana/ops/runs/index.html" target="_blank">run index (all reports)</a>' in header
    runs = shown_html(dashboard.outputs["Runs"])
    assert '<a href="/user/ana/ops/runs/20261201/x%201-40_evaluate_candidate.html" target="_blank">40</a>' in runs
    assert '<a href="elsewhere/y-30_train_candidate.html" target="_blank">30</a>' in runs
    # Without the server extension (a plain kernel): paths relative to the notebook's folder.
    plain = Dashboard(ws, background=False, link_base=tmp_path)
    plain.refresh()
    assert '<a href="runs/index.html" target="_blank">' in shown_html(plain.header)
    assert 'href="runs/20261201/x 1-40_evaluate_candidate.html"' in shown_html(plain.outputs["Runs"])


def test_datasets_panel_shows_eligibility_and_the_lag(ws: Workspace) -> None:
    _dataset(ws, "20261128-bbbbbbbbbbbb", hours_ago=72)
    _dataset(ws, "20261130-cccccccccccc", eligible=False, hours_ago=24)
    _dataset(ws, DATASET)
    with ws.db.transaction() as session:
        add_run(session, RunStatus.READY_FOR_RELEASE, dataset_version="20261128-bbbbbbbbbbbb")
    view = monitor.datasets_view(ws)
    assert (view.newest_eligible, view.last_used) == (DATASET, "20261128-bbbbbbbbbbbb")
    assert view.lag.startswith("1 newer eligible dataset(s)") and "72 h more feedback" in view.lag
    html = Dashboard(ws, background=False)
    html.refresh()
    assert "no: groups 3 &lt; 10" in shown_html(html.outputs["Datasets"])


def test_evaluations_and_queue_panels(ws: Workspace) -> None:
    quality = {
        "baseline": {m: 0.5 for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")},
        "candidate": {m: 0.6 for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")},
        "delta": {m: 0.1 for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")},
        "ci95": {m: [0.02, 0.18] for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")},
    }
    with ws.db.transaction() as session:
        run = add_run(session, RunStatus.READY_FOR_RELEASE)
        session.add(
            ModelEvaluation(
                run_id=run.id,
                candidate_model_version="cand",
                baseline_model_version="tiny-base",
                evaluation_dataset_ref="eval-0123456789abcdef",
                sample_count=40,
                quality_metrics=quality,
                pass_criteria=PASS_CRITERIA,
                overall_decision=Decision.PASS,
                detail_artifact_path="x",
            )
        )
        session.add(
            OpsMessage(
                message_type="TRAINING_REQUEST",
                payload={},
                trace_id="a",
                attempt=2,
                issued_at=utcnow() - timedelta(minutes=30),
                visible_at=utcnow(),
            )
        )
        session.add(
            OpsMessage(
                message_type="TRAINING_REQUEST",
                payload={},
                trace_id="b",
                attempt=1,
                issued_at=utcnow(),
                visible_at=utcnow(),
                acked_at=utcnow(),
                outcome=MessageOutcome.REFUSED,
                outcome_reason="unsupported payload_version 'v9'",
            )
        )
        session.add(
            OpsMessage(
                message_type="ROLLBACK_REQUEST",
                payload={},
                trace_id="c",
                attempt=5,
                issued_at=utcnow(),
                visible_at=utcnow(),
                acked_at=utcnow(),
                outcome=MessageOutcome.PARKED,
                outcome_reason="failed on delivery 5 of 5: OSError: disk full",
            )
        )
    from opslib.control.leases import RELEASE_LEASE, acquire

    acquire(ws.db, RELEASE_LEASE, "worker-7", purpose="60_cutover for run 3", stale_after_s=60)
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    evaluations = shown_html(dashboard.outputs["Evaluations"])
    assert "PASS" in evaluations and "[+0.0200, +0.1800]" in evaluations and "eval-0123456789abcdef" in evaluations
    queue = shown_html(dashboard.outputs["Queue"])
    assert "TRAINING_REQUEST: 1" in queue and "30 min ago" in queue and "still unacked</b>: 1" in queue
    assert "unsupported payload_version" in queue
    assert "parked (poison" in queue and "failed on delivery 5 of 5: OSError: disk full" in queue
    assert "worker-7 for 60_cutover for run 3 (token 1" in queue and "live" in queue
    status = monitor.workspace_status(ws)  # `opsbench status` says the same
    assert status["queue"]["parked"] == [
        {"id": 3, "type": "ROLLBACK_REQUEST", "attempt": 5, "reason": "failed on delivery 5 of 5: OSError: disk full"}
    ]
    assert status["release_driver"].startswith("worker-7 for 60_cutover for run 3")


def test_a_button_click_performs_the_action_and_shows_the_result(ws: Workspace) -> None:
    _dataset(ws)
    admin = _as(ws)
    dashboard = Dashboard(admin, background=False)
    dashboard.refresh()
    assert DATASET in dashboard.training.confirm.placeholder
    assert not dashboard.training.button.disabled and "your role" not in shown_html(dashboard.training.preview)
    dashboard.training.reason.value = "new feedback"
    dashboard.training.confirm.value = DATASET
    dashboard.training.button.click()
    assert "done" in shown_html(dashboard.training.result)
    (row,) = _audit(admin)
    assert row.action == "retrigger-training" and row.result.startswith("queued TRAINING_REQUEST")
    assert "retrigger-training" in shown_html(dashboard.outputs["Audit"])  # refreshed after the action


def test_a_viewer_is_refused_in_the_panel_and_audited(ws: Workspace) -> None:
    _dataset(ws)
    viewer = _as(ws, role="viewer")
    dashboard = Dashboard(viewer, background=False)
    dashboard.refresh()
    dashboard.training.reason.value = "curious"
    dashboard.training.confirm.value = DATASET
    dashboard.training.button.click()
    assert "refused" in shown_html(dashboard.training.result) and "needs" in shown_html(dashboard.training.result)
    (row,) = _audit(viewer)
    assert row.role == "viewer" and row.result.startswith("refused")
    with viewer.db.read() as session:
        assert session.query(OpsMessage).count() == 0


def test_errors_show_in_the_panel_instead_of_vanishing(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(ws)
    dashboard = Dashboard(_as(ws), background=False)
    dashboard.refresh()

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the database went away")

    monkeypatch.setattr(actions, "retrigger_training", broken)
    dashboard.training.button.click()
    assert "error: RuntimeError: the database went away" in shown_html(dashboard.training.result)
    assert not dashboard.training.button.disabled  # usable again


def test_a_second_click_while_in_flight_does_nothing(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(ws)
    admin = _as(ws)
    dashboard = Dashboard(admin, background=True)
    dashboard.refresh(background=False)
    release = threading.Event()
    calls = []
    real = actions.retrigger_training

    def slow(ws, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        release.wait(10)
        return real(ws, **kwargs)

    monkeypatch.setattr(actions, "retrigger_training", slow)
    dashboard.training.reason.value = "twice?"
    dashboard.training.confirm.value = DATASET
    dashboard.training.button.click()
    dashboard.training.button.click()  # in flight: ignored
    assert dashboard.training.button.disabled
    release.set()
    dashboard.wait()
    assert len(calls) == 1 and len(_audit(admin)) == 1


def test_release_diagram_marks_the_current_state() -> None:
    svg = render_release_diagram("CANDIDATE_REINDEXING")
    assert svg.count("<rect") == 3 and 'aria-label="release state CANDIDATE_REINDEXING"' in svg


def test_open_dashboard_uses_the_settings(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ws.settings.as_env().items():
        monkeypatch.setenv(key, value)
    dashboard = open_dashboard(background=False)
    assert dashboard.ws.settings.workspace == ws.settings.workspace
    assert "STABLE" in shown_html(dashboard.outputs["Release"])


# Every form, clicked by someone it must refuse ------------------------------------------------
def _make_possible(ws: Workspace, form: str) -> None:
    """A state in which the form's action is possible, so only the guard can say no."""
    if form == "training":
        _dataset(ws)
    elif form == "rollback":
        with ws.db.transaction() as session:
            release = session.query(ModelRelease).one()
            release.rollback_snapshot_active_model_version = "tiny-old"
            release.rollback_snapshot_active_index_name = "idx-tiny-old"
            release.rollback_snapshot_captured_at = utcnow()
    elif form == "promote":
        with ws.db.transaction() as session:
            add_run(
                session,
                RunStatus.READY_FOR_RELEASE,
                dataset_version=DATASET,
                baseline_model_version="tiny-base",
                candidate_model_version="cand-1",
                candidate_index_name="idx-cand-1",
            )
    # "dataset": generating a dataset is always possible


def _state(ws: Workspace) -> dict[str, object]:
    """What any of the four actions would change."""
    with ws.db.read() as session:
        release = session.query(ModelRelease).one()
        return {
            "messages": session.query(OpsMessage).count(),
            "executions": session.query(StageExecution).count(),
            "datasets": sorted(session.scalars(select(TrainingDataset.dataset_version))),
            "runs": [(r.id, r.status, r.promoted_at, r.promoted_by) for r in session.query(MLPipelineRun)],
            "release": {c.key: getattr(release, c.key) for c in ModelRelease.__table__.columns},
        }


@pytest.mark.parametrize("form_name", ["training", "dataset", "rollback", "promote"])
@pytest.mark.parametrize("who", ["viewer", "admin with a wrong confirmation"])
def test_every_action_form_refuses_and_changes_nothing(ws: Workspace, form_name: str, who: str) -> None:
    _make_possible(ws, form_name)
    operator = _as(ws, role="viewer" if who == "viewer" else "admin")
    dashboard = Dashboard(operator, background=False)
    dashboard.refresh()
    form = getattr(dashboard, form_name)
    target = form.preview_fn().target
    assert target is not None and form.confirm.placeholder == f"type {target}"  # possible now
    assert not form.button.disabled  # the button can be clicked
    before = _state(operator)
    if who == "viewer":
        why = (
            "operator 'ana' has role 'viewer'; this action needs 'admin' (to act as admin: set "
            'OPS_OPERATOR_ROLE=admin, or operator_role = "admin" in the config file)'
        )
        assert "your role is viewer" in shown_html(form.preview)
        form.confirm.value = target  # even the right confirmation does not help
    else:
        why = f"confirmation 'not-{target}' does not match '{target}'"
        form.confirm.value = f"not-{target}"
    form.reason.value = "checking the guard"
    form.button.click()
    shown = shown_html(form.result)
    assert f'<p class="ops-refused">refused: {escape(why)}</p>' == shown
    assert not form.button.disabled and form.confirm.value  # usable again; what was typed stays
    (row,) = _audit(operator)  # the refusal is audited, nothing else
    assert (row.operator, row.role, row.action, row.target) == (
        "ana",
        operator.settings.operator_role,
        form.preview_fn().action.value,
        target,
    )
    assert (row.reason, row.result) == ("checking the guard", f"refused: {why}")
    assert _state(operator) == before  # no message, execution, dataset, approval or release change
    assert not operator.settings.runs_dir.exists() or not any(operator.settings.runs_dir.rglob("*.ipynb"))
    assert "refused: " in shown_html(dashboard.outputs["Audit"])  # refreshed after the click


def test_the_endpoint_panel_shows_each_versions_precision_and_where_it_runs(ws: Workspace) -> None:
    recorded = ws.embeddings.precision("tiny-base")
    ws.embeddings.unload("tiny-base")
    row = monitor.endpoint_view(ws).models.set_index("model_version").loc["tiny-base"]
    assert (row["loaded here"], row["precision"], row["device"]) == ("no", recorded, "")
    assert monitor.check_endpoint(ws) == [("tiny-base", True, f"dimension 32, {recorded} on cpu")]
    row = monitor.endpoint_view(ws).models.set_index("model_version").loc["tiny-base"]
    assert (row["loaded here"], row["precision"], row["device"]) == ("yes", recorded, "cpu")


def test_serving_panel_shows_endpoints_their_lag_and_the_like_rate(ws: Workspace) -> None:
    from datetime import timedelta

    from opslib.control.endpoints import EndpointReport, report_endpoint
    from opslib.db.models import ServingEndpoint, utcnow
    from opslib.lifecycle.feedback.events import ingest_feedback, make_event

    report_endpoint(
        ws.db, EndpointReport("a:8000", "http://127.0.0.1:9", ["tiny-base"], "tiny-base", "idx", True, None)
    )
    report_endpoint(ws.db, EndpointReport("b:8000", "http://127.0.0.1:9", ["old"], "old", "idx-old", False, "loading"))
    with ws.db.transaction() as session:
        session.get(ServingEndpoint, "b:8000").heartbeat_at = utcnow() - timedelta(minutes=5)  # type: ignore[union-attr]
    events = [
        make_event(
            user_id="u",
            project_id="p",
            req_id=f"r{i}",
            query_text="q",
            rating="LIKE" if i % 3 else "DISLIKE",
            topk_ids=["c"],
            used_ids=["c"],
            active_model_version="tiny-base",
            active_index_name="idx-tiny-base",
            created_at=utcnow() - timedelta(days=i % 3),
            trace_id="t",
        )
        for i in range(9)
    ]
    ingest_feedback(ws.objects, events)
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    panel = shown_html(dashboard.outputs["Serving"])
    assert "a:8000" in panel and "in step" in panel and "live" in panel
    assert "unreachable" in panel  # its /metrics could not be read (nothing listens there)
    assert "b:8000" in panel and "stale" in panel and "behind: serves old" in panel and "no — loading" in panel
    assert "data:image/png;base64," in panel  # the like-rate plot, inline
    listed = {e["endpoint"]: e for e in monitor.workspace_status(ws)["endpoints"]}  # `opsbench status`
    assert listed["a:8000"]["state"] == "live" and listed["a:8000"]["release row"] == "in step"
    assert listed["b:8000"]["state"] == "stale" and listed["b:8000"]["ready"] == "no — loading"


def test_runs_panel_shows_a_stage_whose_process_died_as_abandoned(ws: Workspace, tmp_path: Path) -> None:
    with ws.db.transaction() as session:
        run = add_run(
            session,
            RunStatus.FAILED,
            failed_stage=RunStage.TRAINING,
            failure_type=FailureType.ERROR,
            failure_reason="stalled: no heartbeat since …",
        )
        session.add(
            StageExecution(
                run_id=run.id,
                stage="30_train_candidate",
                notebook="30.ipynb",
                parameters={},
                status=ExecutionStatus.ABANDONED,
                trace_id="t",
                error={"ename": "ExecutionAbandoned", "evalue": "no heartbeat since …: the process running it died"},
            )
        )
    (row,) = monitor.runs_view(ws).recent
    assert row.abandoned == ["30_train_candidate"]
    dashboard = Dashboard(ws, background=False, link_base=tmp_path)
    dashboard.refresh()
    html = shown_html(dashboard.outputs["Runs"])
    assert ">ABANDONED</span>" in html and "30 <span" in html


def _history_runs(ws: Workspace, report: Path) -> tuple[int, int, int]:
    """Three runs: released (its 40 report archived), failed, and a newest PASS; the release cut
    over to the first."""
    metrics = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
    ids = []
    with ws.db.transaction() as session:
        for n, (status, decision, cand) in enumerate(
            (
                (RunStatus.READY_FOR_RELEASE, Decision.PASS, 0.6),
                (RunStatus.FAILED, Decision.FAIL, 0.4),
                (RunStatus.READY_FOR_RELEASE, Decision.PASS, 0.7),
            )
        ):
            run = MLPipelineRun(
                status=status,
                trigger_source=TriggerSource.MANUAL,
                trace_id=f"t-history-{n}",
                baseline_model_version="tiny-base",
                candidate_model_version=f"cand-{n}",
                dataset_version=DATASET,
                created_at=utcnow() - timedelta(hours=3 - n),
            )
            session.add(run)
            session.flush()
            session.add(
                ModelEvaluation(
                    run_id=run.id,
                    candidate_model_version=f"cand-{n}",
                    baseline_model_version="tiny-base",
                    evaluation_dataset_ref="eval-0123456789abcdef",
                    sample_count=40,
                    quality_metrics={
                        "baseline": {m: 0.5 for m in metrics},
                        "candidate": {m: cand for m in metrics},
                        "delta": {m: cand - 0.5 for m in metrics},
                        "ci95": {m: [cand - 0.55, cand - 0.45] for m in metrics},
                    },
                    pass_criteria=PASS_CRITERIA,
                    overall_decision=decision,
                    detail_artifact_path="file:///detail.jsonl",
                    created_at=utcnow() - timedelta(hours=3 - n, minutes=-5),
                )
            )
            ids.append(run.id)
        session.add(
            StageExecution(
                run_id=ids[0],
                stage="40_evaluate_candidate",
                notebook="40.ipynb",
                parameters={"run_id": ids[0]},
                status=ExecutionStatus.SUCCEEDED,
                trace_id="t",
                output_html=str(report),
                started_at=utcnow() - timedelta(hours=3),
                finished_at=utcnow() - timedelta(hours=3) + timedelta(seconds=95),
            )
        )
        release = session.scalars(select(ModelRelease)).one()
        session.add(
            ReleaseEvent(
                release_id=release.id,
                kind="CUTOVER",
                before={"candidate_run_id": ids[0], "active_model_version": "tiny-base"},
                after={"active_model_version": "cand-0"},
                actor="worker",
                trace_id="t-history-0",
                at=utcnow() - timedelta(hours=2, minutes=30),
            )
        )
    return ids[0], ids[1], ids[2]


def test_history_tab_compares_two_runs_plots_the_trend_and_shows_a_lineage(ws: Workspace, tmp_path: Path) -> None:
    report = tmp_path / "runs" / "20261201" / "x-40_evaluate_candidate.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>report</html>")
    released, failed, newest = _history_runs(ws, report)
    dashboard = Dashboard(ws, background=False, link_base=tmp_path)
    assert dashboard.tabs.get_title(Dashboard.PANELS.index("History")) == "History"
    dashboard.refresh()
    # The newest two by default, side by side (the same table as runs/history/compare.html).
    assert (dashboard.compare_a.value, dashboard.compare_b.value) == (failed, newest)
    compare = shown_html(dashboard.compare_out)
    assert f'data-run="{failed}"' in compare and f'data-run="{newest}"' in compare
    assert f'data-run="{released}"' not in compare
    assert "-0.1000 [-0.1500, -0.0500]" in compare and "+0.2000 [+0.1500, +0.2500]" in compare
    dashboard.compare_a.value = released  # another pick re-renders from what was collected
    compare = shown_html(dashboard.compare_out)
    assert f'data-run="{released}"' in compare and "RELEASED" in compare and f'data-run="{failed}"' not in compare
    assert 'href="runs/20261201/x-40_evaluate_candidate.html"' in compare  # relative to the notebook
    trend = shown_html(dashboard.outputs["History"])
    assert trend.count("data:image/png;base64,") == 1 and "CUTOVER" in trend
    assert trend.count("eval-0123456789abcdef") == 3  # one point per evaluation
    dashboard.lineage_choice.value = released
    lineage = shown_html(dashboard.lineage_out)
    assert "feedback window" not in lineage  # the dataset row does not exist: said, not invented
    assert "not in the Metadata DB" in lineage and "CUTOVER" in lineage
    assert 'href="runs/20261201/x-40_evaluate_candidate.html"' in lineage
    # A refresh keeps the reader's picks.
    dashboard.refresh()
    assert dashboard.compare_a.value == released and dashboard.lineage_choice.value == released


def test_history_tab_with_no_runs_says_so(ws: Workspace) -> None:
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    assert "two runs are needed" in shown_html(dashboard.compare_out)
    assert "No evaluation yet." in shown_html(dashboard.outputs["History"])
    assert "no runs yet" in shown_html(dashboard.lineage_out)
