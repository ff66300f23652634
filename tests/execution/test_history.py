"""History views (runs/history/): compare runs, metric trend, lineage — from the Metadata DB."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from helpers import PageLinks

from opslib.control.release import current_release
from opslib.db.models import (
    Decision,
    ExecutionStatus,
    FailureType,
    MLPipelineRun,
    ModelEvaluation,
    ReleaseEvent,
    RunStage,
    RunStatus,
    StageExecution,
    TrainingDataset,
    TriggerSource,
    VectorIndexEntry,
)
from opslib.execution import history, history_pages
from opslib.execution.run_index import build_run_index
from opslib.infra.model_artifacts import register_model
from opslib.infra.workspace import Workspace

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
DATASET = "20261201-aaaaaaaaaaaa"
HOSTILE = "<script>alert('x')</script>"
# The run index's offline check, less inline <script> blocks (compare.html has one, without src).
OFFLINE_BREAKERS = re.compile(r"<script[^>]*\ssrc=|<link|@import|url\(|https?://", re.I)


def _links(page: str) -> PageLinks:
    return PageLinks(page)


def _archive(ws: Workspace, stem: str) -> str:
    """An archived execution: .html, .ipynb and .log side by side, as the runner writes them."""
    folder = ws.settings.runs_dir / "20261201"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".html", ".ipynb", ".log"):
        (folder / f"{stem}{suffix}").write_text(f"{stem}{suffix}")
    return str(folder / f"{stem}.html")


def _execution(
    ws: Workspace, session, stage: str, minute: int, run_id: int | None, *, params=None, trace="t", seconds=90, **kw
):
    html = _archive(ws, f"{minute:02d}-{stage}")
    row = StageExecution(
        run_id=run_id,
        stage=stage,
        notebook=f"{stage}.ipynb",
        parameters=params if params is not None else {"run_id": run_id},
        status=kw.pop("status", ExecutionStatus.SUCCEEDED),
        output_html=html,
        output_ipynb=html.replace(".html", ".ipynb"),
        started_at=T0 + timedelta(minutes=minute),
        finished_at=T0 + timedelta(minutes=minute, seconds=seconds),
        trace_id=trace,
        **kw,
    )
    session.add(row)
    session.flush()
    return row


def _quality(base: float, cand: float, ci: tuple[float, float]) -> dict:
    metrics = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
    return {
        "baseline": {m: base for m in metrics},
        "candidate": {m: cand for m in metrics},
        "delta": {m: cand - base for m in metrics},
        "ci95": {m: list(ci) for m in metrics},
        "release": {"automatic": False, "hold": None},
    }


def _event(session, kind: str, at: datetime, before: dict, after: dict, trace: str) -> None:
    release = current_release(session)
    session.add(
        ReleaseEvent(
            release_id=release.id, kind=kind, before=before, after=after, actor="worker", trace_id=trace, at=at
        )
    )


@dataclass
class Seeded:
    released: int  # run 1: PASS, cut over, then rolled back
    failed: int  # run 2: FAIL at evaluation


def _seed(ws: Workspace, tiny_model_dir: Path) -> Seeded:
    train_params = {"run_id": 0, "epochs": 3, "batch_size": 16, "learning_rates": [2e-05, 5e-05], "seed": 0}
    with ws.db.transaction() as session:
        session.add(
            TrainingDataset(
                dataset_version=DATASET,
                storage_path="file:///store/datasets/" + DATASET,
                generation_rule_version="retrieval-group-v1",
                source_window_start=T0 - timedelta(days=30),
                source_window_end=T0,
                counts={"raw_files": 9, "input_events": 500, "trainable_groups": 42, "positives": 60, "negatives": 77},
                eligible=True,
                ineligible_reasons=[],
                created_at=T0,
            )
        )
        _execution(ws, session, "20_build_dataset", 0, None, params={"seed": 0}, outputs={"dataset_version": DATASET})
        runs = []
        for n, trace in ((1, "trace-run-1"), (2, "trace-run-2")):
            run = MLPipelineRun(
                status=RunStatus.RUNNING if n == 1 else RunStatus.PENDING,  # one of each at a time
                trigger_source=TriggerSource.SCHEDULE if n == 1 else TriggerSource.MANUAL,
                trace_id=trace,
                baseline_model_version="tiny-base",
                candidate_model_version=f"cand-r{n}",
                dataset_version=DATASET,
                created_at=T0 + timedelta(minutes=10 * n),
            )
            session.add(run)
            session.flush()
            runs.append(run)
        first, second = runs
    # The candidates, with manifests recording what training chose.
    for run, rate in ((first, 5e-05), (second, 2e-05)):
        register_model(
            ws,
            f"cand-r{run.id}",
            tiny_model_dir,
            base_model_version="tiny-base",
            dataset_version=DATASET,
            run_id=run.id,
            training_parameters={"epochs": 3, "loss": "mnrl", "learning_rate": rate, "selected_epoch": 2},
        )
    with ws.db.transaction() as session:
        first, second = session.get(MLPipelineRun, first.id), session.get(MLPipelineRun, second.id)
        for run, minute, decision, cand, ci in (
            (first, 11, Decision.PASS, 0.625, (0.05, 0.2)),
            (second, 21, Decision.FAIL, 0.375, (-0.2, -0.05)),
        ):
            _execution(ws, session, "30_train_candidate", minute, run.id, params={**train_params, "run_id": run.id})
            # Run 1's evaluation was attempted twice: an ERROR, then the one that counts.
            if run is first:
                _execution(ws, session, "40_evaluate_candidate", minute + 1, run.id, status=ExecutionStatus.FAILED)
            _execution(
                ws,
                session,
                "40_evaluate_candidate",
                minute + 2,
                run.id,
                params={"run_id": run.id, "evaluation_dataset_ref": "eval-0123456789abcdef"},
                seconds=200,
            )
            evaluation = ModelEvaluation(
                run_id=run.id,
                candidate_model_version=run.candidate_model_version,
                baseline_model_version="tiny-base",
                evaluation_dataset_ref="eval-0123456789abcdef",
                sample_count=40,
                quality_metrics=_quality(0.5, cand, ci),
                pass_criteria={"metrics": ["recall_at_5"]},
                overall_decision=decision,
                fail_reason=None if decision is Decision.PASS else "recall_at_5 0.3750 < 0.5000",
                detail_artifact_path=f"file:///store/evaluations/run-{run.id}/detail.jsonl",
                created_at=T0 + timedelta(minutes=minute + 2, seconds=100),
            )
            session.add(evaluation)
            session.flush()
            run.evaluation_id = evaluation.id
        first.status = RunStatus.READY_FOR_RELEASE
        first.candidate_index_name = "idx-cand-r1"
        second.status = RunStatus.FAILED
        second.failed_stage = RunStage.EVALUATION
        second.failure_type = FailureType.FAIL
        second.failure_reason = "recall_at_5 0.3750 < 0.5000"
        session.add_all(
            VectorIndexEntry(
                index_name="idx-cand-r1", chunk_id=f"c{i}", embedding_model_version="cand-r1", content_hash="h"
            )
            for i in range(3)
        )
        _execution(ws, session, "50_reindex_candidate", 15, first.id, trace="trace-run-1")
        _execution(ws, session, "60_cutover", 17, first.id, trace="trace-run-1")
        _execution(ws, session, "70_rollback", 40, None, params={"message_id": 7}, trace="trace-rollback")
        candidate = {"candidate_run_id": first.id, "active_model_version": "tiny-base"}
        _event(
            session,
            "OPEN_CANDIDATE",
            T0 + timedelta(minutes=15, seconds=5),
            {"active_model_version": "tiny-base"},
            candidate,
            "trace-run-1",
        )
        _event(
            session,
            "CUTOVER",
            T0 + timedelta(minutes=17, seconds=30),
            candidate,
            {"active_model_version": "cand-r1"},
            "trace-run-1",
        )
        _event(
            session,
            "PREPARE_ROLLBACK",
            T0 + timedelta(minutes=40, seconds=5),
            {"active_model_version": "cand-r1"},
            {"active_model_version": "cand-r1"},
            "trace-rollback",
        )
        _event(
            session,
            "COMPLETE_ROLLBACK",
            T0 + timedelta(minutes=40, seconds=50),
            {"active_model_version": "cand-r1"},
            {"active_model_version": "tiny-base"},
            "trace-rollback",
        )
        return Seeded(first.id, second.id)


def _page_links_resolve(page: Path) -> list[str]:
    hrefs = _links(page.read_text()).hrefs
    for href in hrefs:
        assert not href.startswith(("/", "file:")), href  # relative: runs/ can be copied or served
        assert (page.parent / unquote(href)).resolve().is_file(), f"{page.name}: {href}"
    return hrefs


def test_compare_rows_hold_both_runs_values(ws: Workspace, tiny_model_dir: Path) -> None:
    seeded = _seed(ws, tiny_model_dir)
    runs = history.collect_run_histories(ws, now=T0 + timedelta(hours=1))
    assert [r.run_id for r in runs] == [seeded.failed, seeded.released]  # newest first
    frame = history.compare_frame(runs)
    one, two = f"run {seeded.released}", f"run {seeded.failed}"
    assert frame.loc["outcome", one] == "RELEASED" and frame.loc["outcome", two] == "FAIL"
    assert frame.loc["trigger", one] == "schedule" and frame.loc["trigger", two] == "manual"
    assert frame.loc["failed stage / reason", two] == "EVALUATION (FAIL): recall_at_5 0.3750 < 0.5000"
    assert frame.loc["dataset", one] == DATASET
    assert frame.loc["dataset counts", one] == "raw files 9 · events 500 · groups 42 · positives 60 · negatives 77"
    assert frame.loc["candidate model", two] == "cand-r2"
    assert frame.loc["parameter · learning_rates", one] == "2e-05, 5e-05"  # from the 30 execution
    assert "run_id" not in " ".join(frame.index)  # bookkeeping, not a training parameter
    assert frame.loc["trained with · learning_rate", one] == "5e-05"  # from the manifest
    assert frame.loc["trained with · learning_rate", two] == "2e-05"
    assert frame.loc["recall@5 candidate", one] == "0.6250" and frame.loc["recall@5 candidate", two] == "0.3750"
    assert frame.loc["recall@5 Δ (95 % CI)", one] == "+0.1250 [+0.0500, +0.2000]"
    assert frame.loc["nDCG@5 Δ (95 % CI)", two] == "-0.1250 [-0.2000, -0.0500]"
    assert frame.loc["decision", one] == "PASS" and frame.loc["decision", two].startswith("FAIL: recall_at_5")
    assert frame.loc["candidate index", one] == "idx-cand-r1 (3 entries)"
    assert frame.loc["duration · 40_evaluate_candidate", one] == "3 min 20 s (SUCCEEDED; 2 attempts)"
    assert frame.loc["duration · 30_train_candidate", two] == "1 min 30 s (SUCCEEDED)"
    assert frame.loc["duration · 60_cutover", two] == "—"
    assert frame.loc["release events", one].split("; ")[0].startswith("OPEN_CANDIDATE")
    assert [e.kind for e in runs[1].events] == ["OPEN_CANDIDATE", "CUTOVER", "PREPARE_ROLLBACK", "COMPLETE_ROLLBACK"]
    assert runs[0].events == ()  # a failed run's candidate never reached the release
    # Each release event is tied to the stage execution that wrote it (the rollback's has no run).
    assert [e.stage for e in runs[1].events] == ["50_reindex_candidate", "60_cutover", "70_rollback", "70_rollback"]


def test_trend_has_one_point_per_evaluation_and_the_release_markers(ws: Workspace, tiny_model_dir: Path) -> None:
    seeded = _seed(ws, tiny_model_dir)
    trend = history.collect_trend(ws)
    assert list(trend.points["run_id"]) == [seeded.released, seeded.failed]  # oldest first
    assert list(trend.points["decision"]) == ["PASS", "FAIL"]
    assert list(trend.points["ndcg_at_5_candidate"]) == [0.625, 0.375]
    assert list(trend.points["ndcg_at_5_baseline"]) == [0.5, 0.5]
    assert list(trend.points["recall_at_5_ci95_low"]) == [0.05, -0.2]
    assert list(trend.markers["kind"]) == ["CUTOVER", "COMPLETE_ROLLBACK"]  # OPEN/PREPARE are not marked
    assert list(trend.markers["serving"]) == ["cand-r1", "tiny-base"]
    assert trend.markers["run_id"].iloc[0] == seeded.released and pd.isna(trend.markers["run_id"].iloc[1])
    table = history_pages.trend_table(trend)
    assert len(table.columns) == 10  # one column per metric: the table fits a page's width
    assert table["nDCG@5: baseline → candidate, Δ (95 % CI)"].iloc[0].startswith("0.5000 → 0.6250, +0.1250 [")
    figure = history_pages.trend_figure(trend)
    assert len(figure.axes) == 3  # a panel per metric
    # Each panel: a vertical line per marker, at the marker's time.
    assert len([line for line in figure.axes[0].lines if len(set(line.get_xdata())) == 1]) >= 2
    assert figure._repr_png_().startswith(b"\x89PNG")


def test_pages_are_built_with_the_index_offline_escaped_and_linked(ws: Workspace, tiny_model_dir: Path) -> None:
    seeded = _seed(ws, tiny_model_dir)
    index = build_run_index(ws)
    folder = ws.settings.runs_dir / "history"
    compare, trend = folder / "compare.html", folder / "trend.html"
    lineage = folder / f"run-{seeded.released}.html"
    assert compare.is_file() and trend.is_file() and lineage.is_file()
    assert (folder / f"run-{seeded.failed}.html").is_file()
    assert not list(folder.glob(".*part"))  # no temporary file left behind
    index_links = _page_links_resolve(index)
    assert {"history/compare.html", "history/trend.html", f"history/run-{seeded.released}.html"} <= set(index_links)
    for page in (compare, trend, lineage, folder / f"run-{seeded.failed}.html"):
        text = page.read_text()
        assert not OFFLINE_BREAKERS.search(text), page.name
        assert all(src.startswith("data:image/png;base64,") for src in _links(text).srcs), page.name
        _page_links_resolve(page)
    # compare: every run a column; the picker defaults to the newest two and is optional.
    text = compare.read_text()
    assert text.count('<th data-run="') == 2
    assert '<form id="pick" hidden>' in text and "<script>" in text
    assert f'<option value="{seeded.failed}" selected>' in text.split('id="run-b"')[1].split("</select>")[0]
    assert "+0.1250 [+0.0500, +0.2000]" in text and "-0.1250 [-0.2000, -0.0500]" in text
    hrefs = _links(text).hrefs
    assert f"run-{seeded.released}.html" in hrefs  # a run's header opens its lineage
    assert "../20261201/12-40_evaluate_candidate.log" in hrefs  # a log per attempt, the failed one too
    # trend: the plot inline, the points and the markers listed.
    text = trend.read_text()
    assert text.count("data:image/png;base64,") == 1
    assert "COMPLETE_ROLLBACK" in text and "+0.1250 [+0.0500, +0.2000]" in text
    # lineage: the chain in order, each node with its report or its record.
    text = lineage.read_text()
    kinds = re.findall(r'<span class="kind">([^<]+)</span>', text)
    assert kinds[:6] == ["feedback window", "dataset", "run", "candidate model", "evaluation", "index"]
    assert kinds[6:] == ["release event"] * 4
    hrefs = _links(text).hrefs
    for report in ("00-20_build_dataset", "11-30_train_candidate", "13-40_evaluate_candidate", "15-50_reindex_candidate",
                   "17-60_cutover", "40-70_rollback"):  # fmt: skip
        assert f"../20261201/{report}.html" in hrefs, report
    assert "file:///store/evaluations/run-1/detail.jsonl" in text  # a record outside runs/ named, not linked
    assert "raw files</dt><dd>9" in text and "idx-cand-r1" in text and "entries</dt><dd>3" in text


def test_hostile_text_is_escaped_on_every_history_page(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        run = MLPipelineRun(
            status=RunStatus.FAILED,
            trigger_source=TriggerSource.MANUAL,
            trace_id=HOSTILE,
            failed_stage=RunStage.TRAINING,
            failure_type=FailureType.ERROR,
            failure_reason=HOSTILE,
            dataset_version=HOSTILE,
            candidate_model_version=HOSTILE,
        )
        session.add(run)
        session.flush()
        session.add(
            StageExecution(
                run_id=run.id,
                stage=HOSTILE,
                notebook="x",
                parameters={"run_id": run.id, HOSTILE: HOSTILE},
                status=ExecutionStatus.FAILED,
                started_at=T0,
                trace_id="t",
            )
        )
        session.add(
            ModelEvaluation(
                run_id=run.id,
                candidate_model_version=HOSTILE,
                baseline_model_version=HOSTILE,
                evaluation_dataset_ref=HOSTILE,
                sample_count=1,
                quality_metrics={"candidate": {"recall_at_5": HOSTILE}, "ci95": {"recall_at_5": "bad"}},
                pass_criteria={},
                overall_decision=Decision.FAIL,
                fail_reason=HOSTILE,
                detail_artifact_path=HOSTILE,
                created_at=T0,
            )
        )
    history_pages.build_history_pages(ws)
    for page in (ws.settings.runs_dir / "history").glob("*.html"):
        text = page.read_text()
        assert HOSTILE not in text and "&lt;script&gt;" in text, page.name
    runs = history.collect_run_histories(ws)
    assert runs[0].evaluation is not None and runs[0].evaluation.metrics[0].candidate is None  # not a number


def test_an_empty_workspace_gets_readable_pages(ws: Workspace) -> None:
    paths = history_pages.build_history_pages(ws)
    assert [p.name for p in paths] == ["compare.html", "trend.html"]
    assert "No run yet." in paths[0].read_text() and "No evaluation yet." in paths[1].read_text()
    assert "<script>" not in paths[0].read_text()  # nothing to pick from


def test_an_unreadable_manifest_is_said_and_the_rest_still_shows(ws: Workspace, tiny_model_dir: Path) -> None:
    seeded = _seed(ws, tiny_model_dir)
    manifest = Path(ws.models.local_path("cand-r1")) / "model_manifest.json"
    manifest.write_text("{}")
    run = next(r for r in history.collect_run_histories(ws) if r.run_id == seeded.released)
    assert run.training_note and "cand-r1" in run.training_note and run.training_selected == {}
    assert run.training_parameters["epochs"] == 3 and run.evaluation is not None  # the DB's part is unaffected


@pytest.mark.parametrize("seconds,text", [(42, "42 s"), (200, "3 min 20 s"), (3725, "1 h 02 min"), (None, "—")])
def test_durations_read_as_people_say_them(seconds: float | None, text: str) -> None:
    assert history.fmt_duration(seconds) == text
