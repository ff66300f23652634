"""The run index (runs/index.html): rows from the Metadata DB, relative links, escaping, offline."""

import logging
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
from helpers import PageLinks

from opslib.control.release import current_release
from opslib.db.models import (
    Decision,
    ExecutionStatus,
    FailureType,
    MLPipelineRun,
    ModelEvaluation,
    ModelVersion,
    ReleaseEvent,
    RunStage,
    RunStatus,
    StageExecution,
    TrainingDataset,
    TriggerSource,
)
from opslib.execution import run_index
from opslib.execution.context import OutputsError, StageContext, record_outputs
from opslib.execution.run_index import build_run_index, collect_run_index
from opslib.execution.runner import _rebuild_run_index, run_stage
from opslib.infra.workspace import Workspace
from opslib.ops.cli import main

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
HOSTILE = "<script>alert('x')</script>"
OFFLINE_BREAKERS = re.compile(r"<script|<link|@import|url\(|https?://", re.I)


def _links(page: str) -> list[str]:
    return PageLinks(page).hrefs


def _row_html(page: str, execution_id: int) -> str:
    return page.split(f'<tr id="execution-{execution_id}">', 1)[1].split('<tr id="execution-', 1)[0]


def _archive(ws: Workspace, name: str, body: str = "<html>report</html>") -> str:
    folder = ws.settings.runs_dir / "20261201"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    return str(path)


def _execution(
    session,
    stage: str,
    minute: int,
    *,
    status=ExecutionStatus.SUCCEEDED,
    run_id=None,
    params=None,
    html: str | None = None,
    error=None,
    trace_id: str = "t",
    duration_s: int = 50,
) -> StageExecution:
    row = StageExecution(
        run_id=run_id,
        stage=stage,
        notebook=f"{stage}.ipynb",
        parameters=params or {},
        status=status,
        output_html=html,
        error=error,
        started_at=T0 + timedelta(minutes=minute),
        finished_at=None if status is ExecutionStatus.RUNNING else T0 + timedelta(minutes=minute, seconds=duration_s),
        trace_id=trace_id,
    )
    session.add(row)
    session.flush()
    return row


def _dataset(
    version: str, start: datetime, end: datetime, created: datetime, eligible: bool, reasons: list[str] | None = None
) -> TrainingDataset:
    return TrainingDataset(
        dataset_version=version,
        storage_path=f"file:///datasets/{version}",
        generation_rule_version="retrieval-group-v1",
        source_window_start=start,
        source_window_end=end,
        eligible=eligible,
        ineligible_reasons=reasons or [],
        counts={"trainable_groups": 42, "positives": 60, "negatives": 77},
        created_at=created,
    )


def _quality(base: float, cand: float) -> dict:
    metrics = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
    return {
        "baseline": {m: base for m in metrics},
        "candidate": {m: cand for m in metrics},
        "delta": {m: cand - base for m in metrics},
        "ci95": {m: [-0.1, 0.1] for m in metrics},
    }


def _evaluation(
    run_id: int, decision: Decision, base: float, cand: float, created: datetime, fail_reason: str | None = None
) -> ModelEvaluation:
    return ModelEvaluation(
        run_id=run_id,
        candidate_model_version=f"cand-r{run_id}",
        baseline_model_version="tiny-base",
        evaluation_dataset_ref="eval-0123456789abcdef",
        sample_count=40,
        quality_metrics=_quality(base, cand),
        pass_criteria={"metrics": ["recall_at_5", "mrr_at_5", "ndcg_at_5"], "rule": "candidate >= baseline"},
        overall_decision=decision,
        fail_reason=fail_reason,
        detail_artifact_path="file:///detail.jsonl",
        created_at=created,
    )


def _run(status: RunStatus, run_trace: str, **extra) -> MLPipelineRun:
    return MLPipelineRun(
        status=status,
        trigger_source=TriggerSource.MANUAL,
        trace_id=run_trace,
        baseline_model_version="tiny-base",
        dataset_version="20261201-aaaaaaaaaaaa",
        **extra,
    )


def test_empty_db_gives_a_readable_page(ws: Workspace) -> None:
    path = build_run_index(ws)
    assert path == ws.settings.runs_dir / "index.html"
    page = path.read_text()
    assert "No stage has been executed yet" in page
    assert "tiny-base" in page and "STABLE" in page  # the serving model from ModelRelease
    assert "executions</dt><dd>0" in page
    assert not OFFLINE_BREAKERS.search(page)
    assert not list(ws.settings.runs_dir.glob(".index-*"))  # no temporary file left behind


def test_rows_show_verdicts_metrics_and_relative_links(ws: Workspace) -> None:
    eval_params = {"run_id": 0, "evaluation_dataset_ref": "eval-0123456789abcdef", "bootstrap_samples": 1000}
    with ws.db.transaction() as session:
        passed = _run(RunStatus.READY_FOR_RELEASE, "trace-run-pass", candidate_model_version="cand-r1")
        failed = _run(
            RunStatus.FAILED,
            "trace-run-fail",
            candidate_model_version="cand-r2",
            failed_stage=RunStage.EVALUATION,
            failure_type=FailureType.FAIL,
            failure_reason="below",
        )
        errored = _run(
            RunStatus.FAILED,
            "trace-run-err",
            candidate_model_version="cand-r3",
            failed_stage=RunStage.EVALUATION,
            failure_type=FailureType.ERROR,
        )
        session.add_all([passed, failed, errored])
        session.flush()
        session.add(
            ModelVersion(
                model_version="cand-r1",
                artifact_path="file:///m",
                base_model_version="tiny-base",
                run_id=passed.id,
                sha256="0" * 64,
            )
        )
        # 20 with an explicit as_of: tied by its window (a dataset built earlier, same content)
        end = datetime(2026, 11, 30, tzinfo=UTC)
        session.add(_dataset("20261130-bbbbbbbbbbbb", end - timedelta(days=30), end, T0 - timedelta(days=1), True))
        ds_explicit = _execution(
            session,
            "20_build_dataset",
            1,
            params={"as_of": "2026-11-30", "source_window_days": 30, "seed": 0},
            html=_archive(ws, "a.html"),
        )
        # 20 with as_of=None: the window ended while the execution ran; ineligible with reasons
        now_end = T0 + timedelta(minutes=2, seconds=5)
        session.add(
            _dataset(
                "20261201-cccccccccccc",
                now_end - timedelta(days=7),
                now_end,
                T0 + timedelta(minutes=2, seconds=30),
                False,
                ["groups 3 < 10"],
            )
        )
        ds_now = _execution(
            session,
            "20_build_dataset",
            2,
            params={"as_of": None, "source_window_days": 7, "seed": 0},
            html=_archive(ws, "b c.html"),
        )
        # 20 whose window two datasets share (different seeds): ambiguous, and said so
        end2 = datetime(2026, 10, 1, tzinfo=UTC)
        for v in ("20261001-dddddddddddd", "20261001-eeeeeeeeeeee"):
            session.add(_dataset(v, end2 - timedelta(days=30), end2, T0 - timedelta(days=5), True))
        ds_ambiguous = _execution(
            session, "20_build_dataset", 3, params={"as_of": "2026-10-01", "source_window_days": 30, "seed": 3}
        )
        train = _execution(
            session,
            "30_train_candidate",
            4,
            run_id=passed.id,
            params={"run_id": passed.id},
            html=_archive(ws, "train.html"),
        )
        ev_pass = _execution(
            session,
            "40_evaluate_candidate",
            5,
            run_id=passed.id,
            params={**eval_params, "run_id": passed.id},
            html=_archive(ws, "eval-pass.html"),
        )
        session.add(_evaluation(passed.id, Decision.PASS, 0.5, 0.625, T0 + timedelta(minutes=5, seconds=20)))
        ev_fail = _execution(
            session,
            "40_evaluate_candidate",
            6,
            run_id=failed.id,
            params={**eval_params, "run_id": failed.id},
            html=_archive(ws, "eval-fail.html"),
        )
        session.add(
            _evaluation(
                failed.id,
                Decision.FAIL,
                0.5,
                0.375,
                T0 + timedelta(minutes=6, seconds=20),
                fail_reason="recall_at_5 0.3750 < 0.5000",
            )
        )
        ev_error = _execution(
            session,
            "40_evaluate_candidate",
            7,
            run_id=errored.id,
            status=ExecutionStatus.FAILED,
            params={**eval_params, "run_id": errored.id},
            error={"cell_index": 2, "ename": "EvaluationError", "evalue": "no query"},
            html=_archive(ws, "eval-error.html"),
        )
        cutover = _execution(
            session,
            "60_cutover",
            8,
            run_id=passed.id,
            params={"run_id": passed.id},
            trace_id="exec-trace",
            html=_archive(ws, "cutover.html"),
        )
        release = current_release(session)
        session.add(
            ReleaseEvent(
                release_id=release.id,
                kind="CUTOVER",
                before={},
                actor="op",
                after={"active_model_version": "cand-r1"},
                trace_id="trace-run-pass",
                at=T0 + timedelta(minutes=8, seconds=10),
            )
        )
        # a transition under the same trace but outside the execution's time is not this execution's
        session.add(
            ReleaseEvent(
                release_id=release.id,
                kind="ABORT_CANDIDATE",
                before={},
                actor="op",
                after={"active_model_version": "x"},
                trace_id="trace-run-pass",
                at=T0 + timedelta(hours=2),
            )
        )
        no_html = _execution(
            session,
            "10_feedback_health",
            9,
            params={"window_days": 7},
            html=str(ws.settings.runs_dir / "20261201" / "never-rendered.html"),
        )
        running = _execution(
            session, "10_feedback_health", 10, status=ExecutionStatus.RUNNING, params={"window_days": 7}
        )
        ids = {
            name: row.id
            for name, row in [
                ("ds_explicit", ds_explicit),
                ("ds_now", ds_now),
                ("ds_ambiguous", ds_ambiguous),
                ("train", train),
                ("ev_pass", ev_pass),
                ("ev_fail", ev_fail),
                ("ev_error", ev_error),
                ("cutover", cutover),
                ("no_html", no_html),
                ("running", running),
            ]
        }

    rows, summary = collect_run_index(ws, now=T0 + timedelta(minutes=11))
    by_id = {r.execution_id: r for r in rows}
    assert [r.execution_id for r in rows] == sorted(ids.values(), reverse=True)  # newest first
    assert by_id[ids["ds_explicit"]].verdict == "ELIGIBLE"
    assert "20261130-bbbbbbbbbbbb (already existed (same content))" in " ".join(by_id[ids["ds_explicit"]].headline)
    assert by_id[ids["ds_now"]].verdict == "INELIGIBLE"
    assert any("20261201-cccccccccccc (built)" in line for line in by_id[ids["ds_now"]].headline)
    assert any("groups 3 < 10" in line for line in by_id[ids["ds_now"]].headline)
    assert by_id[ids["ds_ambiguous"]].verdict == "—"
    assert "2 datasets share this window" in by_id[ids["ds_ambiguous"]].headline[0]
    assert by_id[ids["train"]].verdict == "TRAINED" and "candidate cand-r1" in by_id[ids["train"]].headline[0]
    assert by_id[ids["ev_pass"]].verdict == "PASS"
    assert by_id[ids["ev_pass"]].metrics == [
        ("recall@5", "0.5000", "0.6250", "+0.1250"),
        ("MRR@5", "0.5000", "0.6250", "+0.1250"),
        ("nDCG@5", "0.5000", "0.6250", "+0.1250"),
    ]
    assert by_id[ids["ev_fail"]].verdict == "FAIL"
    assert any("recall_at_5 0.3750 < 0.5000" in line for line in by_id[ids["ev_fail"]].headline)
    assert by_id[ids["ev_error"]].verdict == "ERROR"  # a system error, distinct from FAIL
    assert "EvaluationError: no query" in by_id[ids["ev_error"]].headline[0]
    assert by_id[ids["cutover"]].verdict == "RELEASED"
    assert not any("ABORT" in line for line in by_id[ids["cutover"]].headline)
    assert by_id[ids["no_html"]].report_href is None
    assert by_id[ids["running"]].verdict == "RUNNING"
    assert summary.by_status == {"SUCCEEDED": 8, "FAILED": 1, "RUNNING": 1}
    assert summary.active_model_version == "tiny-base"

    page = build_run_index(ws).read_text()
    assert not OFFLINE_BREAKERS.search(page)
    hrefs = _links(page)
    reports = [h for h in hrefs if not h.startswith("history/")]
    assert len(reports) == 7 and "b%20c.html" in " ".join(reports)
    # The header's history pages and each existing run's lineage page (runs 1-3 have rows).
    assert sorted(set(hrefs) - set(reports)) == [
        "history/compare.html",
        *(f"history/run-{i}.html" for i in (1, 2, 3)),
        "history/trend.html",
    ]
    for href in hrefs:
        assert not href.startswith(("/", "file:")), href  # relative: the folder can be copied or served
        assert (ws.settings.runs_dir / unquote(href)).is_file(), href
    assert 'href="20261201/eval-pass.html"' in _row_html(page, ids["ev_pass"])
    assert "HTML report missing" in _row_html(page, ids["no_html"])
    assert "running…" in _row_html(page, ids["running"])
    assert "v-error" in _row_html(page, ids["ev_error"]) and "v-bad" in _row_html(page, ids["ev_fail"])
    assert "<td>0.6250</td>" in _row_html(page, ids["ev_pass"])
    assert "SUCCEEDED 8" in page and "FAILED 1" in page


def test_a_recorded_dataset_version_ties_the_row_exactly(ws: Workspace) -> None:
    end = datetime(2026, 10, 1, tzinfo=UTC)
    with ws.db.transaction() as session:  # two datasets share the window: only the record can tell
        for v in ("20261001-dddddddddddd", "20261001-eeeeeeeeeeee"):
            session.add(_dataset(v, end - timedelta(days=30), end, T0 - timedelta(days=5), True))
        params = {"as_of": "2026-10-01", "source_window_days": 30, "seed": 3}
        built = _execution(session, "20_build_dataset", 1, status=ExecutionStatus.RUNNING, params=params)
        reused = _execution(session, "20_build_dataset", 2, status=ExecutionStatus.RUNNING, params=params)
        lost = _execution(session, "20_build_dataset", 3, status=ExecutionStatus.RUNNING, params=params)
        ids = (built.id, reused.id, lost.id)
    assert record_outputs(ws, ids[0], {"dataset_version": "20261001-eeeeeeeeeeee"})
    assert record_outputs(ws, ids[0], {"dataset_created": True})  # merged with what is there
    assert record_outputs(ws, ids[1], {"dataset_version": "20261001-dddddddddddd", "dataset_created": False})
    assert record_outputs(ws, ids[2], {"dataset_version": "20261001-ffffffffffff"})
    with ws.db.transaction() as session:
        for row_id in ids:
            session.get(StageExecution, row_id).status = ExecutionStatus.SUCCEEDED

    rows, _ = collect_run_index(ws, now=T0 + timedelta(minutes=5))
    by_id = {r.execution_id: r for r in rows}
    assert by_id[ids[0]].verdict == "ELIGIBLE"
    assert by_id[ids[0]].headline[0] == "dataset 20261001-eeeeeeeeeeee (built)"
    assert by_id[ids[1]].headline[0] == "dataset 20261001-dddddddddddd (already existed (same content))"
    assert by_id[ids[2]].verdict == "—" and "not in the Metadata DB" in by_id[ids[2]].headline[0]


def test_an_abandoned_execution_shows_as_such_and_a_silent_running_one_as_stalled(ws: Workspace) -> None:
    """ABANDONED rows (their process died; the reconciler ended them) are never shown as running;
    a RUNNING row without a heartbeat for run_stall_after_s is flagged STALLED until then."""
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    why = "no heartbeat since 2026-12-01T03:01:00+00:00 (stall limit 900 s): the process running it died"
    with ws.db.transaction() as session:
        abandoned = _execution(
            session,
            "30_train_candidate",
            1,
            status=ExecutionStatus.ABANDONED,
            error={"cell_index": None, "execution_count": None, "ename": "ExecutionAbandoned", "evalue": why},
        ).id
        silent = _execution(session, "10_feedback_health", 2, status=ExecutionStatus.RUNNING)
        silent.heartbeat_at = T0 + timedelta(minutes=3)
        silent_id = silent.id
    rows, summary = collect_run_index(ws, now=T0 + timedelta(minutes=3) + stall - timedelta(seconds=1))
    by_id = {r.execution_id: r for r in rows}
    assert (by_id[abandoned].status, by_id[abandoned].verdict) == ("ABANDONED", "ABANDONED")
    assert by_id[abandoned].headline[0] == f"abandoned: {why}"
    assert by_id[silent_id].verdict == "RUNNING"  # its heartbeat is within the limit
    assert summary.by_status == {"ABANDONED": 1, "RUNNING": 1}
    rows, _ = collect_run_index(ws, now=T0 + timedelta(minutes=3) + stall + timedelta(seconds=1))
    stalled = next(r for r in rows if r.execution_id == silent_id)
    assert stalled.verdict == "STALLED" and stalled.headline[0].startswith("no heartbeat since 2026-12-01 03:03:00 UTC")

    page = build_run_index(ws).read_text()
    row = _row_html(page, abandoned)
    assert 'class="s-ABANDONED">ABANDONED' in row and "v-abandoned" in row and "the process running it died" in row
    assert "no report: its process died" in row and "HTML report missing" not in row and "running…" not in row
    assert "v-stalled" in _row_html(page, silent_id)


def test_outputs_are_recorded_only_on_a_running_execution(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        done = _execution(session, "20_build_dataset", 1, params={})
        running = _execution(session, "20_build_dataset", 2, status=ExecutionStatus.RUNNING, params={})
        done_id, running_id = done.id, running.id
    with pytest.raises(OutputsError, match="SUCCEEDED, its record is closed"):
        record_outputs(ws, done_id, {"dataset_version": "x"})
    with pytest.raises(OutputsError, match="no such StageExecution"):
        record_outputs(ws, 10_000, {"dataset_version": "x"})
    with pytest.raises(OutputsError, match="'when': not a JSON value"):
        record_outputs(ws, running_id, {"dataset_version": "x", "when": T0})
    with pytest.raises(OutputsError, match="'score': not a JSON value"):
        record_outputs(ws, running_id, {"score": float("nan")})
    with ws.db.read() as session:  # a refused record writes nothing
        assert session.get(StageExecution, done_id).outputs is None
        assert session.get(StageExecution, running_id).outputs is None
    by_hand = StageContext(ws, "20_build_dataset", None, None, None, "t")  # type: ignore[arg-type]
    assert by_hand.record_outputs(dataset_version="x") is False


def test_links_follow_a_moved_runs_folder(ws: Workspace, tmp_path: Path) -> None:
    """The DB holds absolute paths; if runs/ was moved, the same <day>/<file> under runs_dir is used."""
    _archive(ws, "moved.html")
    with ws.db.transaction() as session:
        row = _execution(session, "10_feedback_health", 1, html=str(tmp_path / "old-runs" / "20261201" / "moved.html"))
    (only,) = collect_run_index(ws)[0]
    assert only.execution_id == row.id and only.report_href == "20261201/moved.html"


def test_hostile_text_is_escaped(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        run = _run(RunStatus.FAILED, HOSTILE, candidate_model_version=HOSTILE)
        session.add(run)
        session.flush()
        ev = _execution(
            session,
            "40_evaluate_candidate",
            1,
            run_id=run.id,
            params={"run_id": run.id, "evaluation_dataset_ref": HOSTILE},
            html=_archive(ws, '"><script>x.html'),
        )
        evaluation = _evaluation(
            run.id, Decision.FAIL, 0.5, 0.4, T0 + timedelta(minutes=1, seconds=5), fail_reason=HOSTILE
        )
        evaluation.evaluation_dataset_ref = HOSTILE
        evaluation.quality_metrics = {"candidate": {"recall_at_5": HOSTILE}, "baseline": "not a dict"}
        session.add(evaluation)
        _execution(
            session,
            HOSTILE,
            2,
            status=ExecutionStatus.FAILED,
            error={"cell_index": HOSTILE, "ename": "<b>", "evalue": "<img src=x onerror=alert(1)>"},
        )
        _execution(session, "20_build_dataset", 3, params={"as_of": HOSTILE})
        eval_id = ev.id
    page = build_run_index(ws).read_text()
    assert "<script" not in page.lower() and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    row = _row_html(page, eval_id)
    assert "<td>—</td>" in row  # a non-numeric metric is not shown as a number
    (href,) = [h for h in _links(page) if not h.startswith("history/")]
    assert (ws.settings.runs_dir / unquote(href)).is_file()


def test_a_failed_write_keeps_the_old_page(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    old = build_run_index(ws).read_text()
    with ws.db.transaction() as session:
        _execution(session, "10_feedback_health", 1)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(run_index.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        build_run_index(ws)
    assert (ws.settings.runs_dir / "index.html").read_text() == old
    assert not list(ws.settings.runs_dir.glob(".index-*"))


def test_a_failed_rebuild_never_fails_the_stage(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_ws: Workspace) -> Path:
        raise RuntimeError("index broke")

    monkeypatch.setattr(run_index, "build_run_index", broken)
    with caplog.at_level(logging.ERROR, logger="opslib.execution.runner"):
        _rebuild_run_index(ws)  # logged, not raised
    assert any("run index not rebuilt" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.slow
def test_run_stage_rebuilds_the_index(ws: Workspace) -> None:
    result = run_stage(ws, "10_feedback_health", {"window_days": 3})
    assert result.ok, result.error
    page = (ws.settings.runs_dir / "index.html").read_text()
    row = _row_html(page, result.execution_id)
    assert "10_feedback_health" in row and "SUCCEEDED" in row
    # No feedback at all: the notebook's WARN and its numbers, recorded on the execution.
    assert "WARN" in row and "window 3 days: 0 events" in row and "0 events in the window" in row
    (href,) = [h for h in _links(row) if h.endswith(".html")]
    assert (ws.settings.runs_dir / unquote(href)).resolve() == result.output_html.resolve()


def test_cli_report(ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    s = ws.settings
    for key, value in {
        "OPS_WORKSPACE": s.workspace,
        "OPS_RUNS_DIR": s.runs_dir,
        "OPS_DB_URL": s.db_url,
        "OPS_BASE_MODEL_PATH": s.base_model_path,
        "OPS_BASE_MODEL_VERSION": s.base_model_version,
        "OPS_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, str(value))
    with ws.db.transaction() as session:
        _execution(session, "10_feedback_health", 1, html=_archive(ws, "r.html"))
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert f"run index rebuilt: {s.runs_dir / 'index.html'}" in out
    assert 'href="20261201/r.html"' in (s.runs_dir / "index.html").read_text()


def test_cli_report_needs_a_migrated_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(tmp_path / "runs"))
    assert main(["report"]) == 2
    assert "the workspace is not initialised: run `opsbench init`" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "index.html").exists()


def test_cli_report_help() -> None:
    done = subprocess.run([sys.executable, "-m", "opslib.ops.cli", "report", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "rebuild runs/index.html" in done.stdout


def test_a_feedback_health_row_shows_its_verdict_and_numbers(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        ok, warn, old = (
            _execution(session, "10_feedback_health", minute, params={"window_days": 7}) for minute in (1, 2, 3)
        )
        ok.outputs = {
            "health_verdict": "OK",
            "health_reasons": [],
            "events": 1200,
            "rejected_lines": 3,
            "rejected_share": 0.0025,
            "unreadable_lines": 0,
            "duplicate_rate": 0.01,
        }
        warn.outputs = {
            "health_verdict": "WARN",
            "health_reasons": ["0 events in the window (fewer than 1)"],
            "events": 0,
            "rejected_lines": 0,
            "rejected_share": 0.0,
            "unreadable_lines": 0,
            "duplicate_rate": 0.0,
        }
        ids = ok.id, warn.id, old.id
    rows, summary = collect_run_index(ws)
    by_id = {r.execution_id: r for r in rows}
    assert by_id[ids[0]].verdict == "OK" and by_id[ids[0]].headline == [
        "window 7 days: 1200 events, 3 rejected lines (0.2%), 0 unreadable, duplicate rate 1.0%"
    ]
    assert by_id[ids[1]].verdict == "WARN"
    assert by_id[ids[1]].headline[1] == "WARN: 0 events in the window (fewer than 1)"
    assert by_id[ids[2]].verdict == "—" and by_id[ids[2]].headline[0].startswith("window 7 days (")
    assert summary.by_verdict == {"OK": 1, "WARN": 1}
