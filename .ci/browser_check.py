#!/usr/bin/env python
"""Real-browser check: what reviewers and operators see, in headless Chromium.

1. Builds a throwaway workspace with real reports (the demo on a tiny local model: init, the
   built-in corpus, traffic, stages 10 and 20, then the worker: 30 train, 40 evaluate, and 50/60
   only on a significant PASS — on the tiny random model the run usually ends FAIL or held, and
   the checks follow whatever verdict the DB recorded), then a second run (a TRAINING_REQUEST
   naming the demo's candidate, or the base model if that one serves: stage 40 only, no
   training) so there are two runs to compare, then rebuilds the run index and history pages.
   The checks are about the demo's run.
2. Run index (``runs/index.html``, file://): the evaluation's verdict (PASS/FAIL, from the DB's
   ``ModelEvaluation``) and its metrics table are visible.
3. Evaluation report (the archived HTML of 40_evaluate_candidate): the verdict banner and the
   headline metrics table (recall_at_5, mrr_at_5, ndcg_at_5) are visible; no code cell shows its
   input (none of the input area, prompt, CodeMirror editor or highlighted source nbconvert's lab
   template emits for one); the banner is in the header, after only its links, title and stage
   line, and above every table, figure and cell; every chunk id of the regressions / wins tables
   (the evaluation's per-query detail artifact, read from Object Storage and picked as the
   notebook picks them) is whole in the page's visible text, nothing id-like is cut by an
   ellipsis (every ``<project>:…`` token is a chunk id of the corpus), and no table cell overflows
   its box. Full-page screenshot.
4. History pages (file://): ``compare.html`` has a column per run, shows the newest two by default
   with the DB's metrics, and its picker changes the columns shown ("only rows that differ" hides
   equal rows); ``trend.html``'s plot is loaded and its table has one row per ``ModelEvaluation``,
   in order; the demo run's lineage page shows the DB's nodes; every link on the three pages points
   at a file that exists.
5. JupyterLab (loopback, token, kernel environment pointing at the throwaway workspace, the
   opslib server extension enabled as ``make lab`` does): the dashboard notebook runs and its
   ipywidgets panels render — every tab label is visible, the Runs panel shows the demo's run, the
   Evaluations tab its verdict, the History tab compares the newest two runs (the DB's nDCG@5) and
   shows the trend plot. Then the dashboard's "run index (all reports)" link, clicked inside
   JupyterLab, opens the index in a tab of its own (served by the extension at /ops/runs/), the
   evaluation's report link there opens the report (HTTP 200, its verdict banner; not the
   server's 403 page), the report header's lineage link opens the run's lineage page (its nodes;
   every link on it answers 200 there) and its run-index link leads back to the index.

Screenshots go to ``--out`` (run-index.png, evaluation-report.png, compare.png, trend.png,
lineage.png, dashboard.png, dashboard-history.png, lab-run-index.png, lab-report.png,
lab-lineage.png). Uses the system Chromium (Debian ``chromium``); Playwright never downloads a
browser. Prints one ``PASS``/``FAIL`` line per check; exits 0 only if every check passed.

    .venv/bin/python .ci/browser_check.py [--out runs/browser-check] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# Ours only: stray OPS_* variables must not leak into the throwaway workspace's settings.
for _key in [k for k in os.environ if k.startswith("OPS_")]:
    del os.environ[_key]
os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAB_START_TIMEOUT_S = 120
WIDGETS_TIMEOUT_S = 180
METRICS = ("recall_at_5", "mrr_at_5", "ndcg_at_5")
NOTEBOOK = "notebooks/00_ops_dashboard.ipynb"
SCREENSHOTS = (
    "run-index.png",
    "evaluation-report.png",
    "compare.png",
    "trend.png",
    "lineage.png",
    "dashboard.png",
    "dashboard-history.png",
    "lab-run-index.png",
    "lab-report.png",
    "lab-lineage.png",
)


class CheckFailed(AssertionError):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# 1. The throwaway workspace ------------------------------------------------------------------
class Facts:
    """What the DB says the browser must show."""

    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


def build_workspace(out: Path):  # type: ignore[no-untyped-def]
    from tiny_model import build_tiny_model

    from opslib.execution.run_index import build_run_index
    from opslib.infra.workspace import Workspace
    from opslib.ops.demo import run_demo
    from opslib.settings import Settings

    model = build_tiny_model(out / "models" / "tiny")
    settings = Settings(
        workspace=out / "workspace",
        runs_dir=out / "runs",
        base_model_path=model,
        base_model_version="tiny-base",
        log_level="WARNING",
        training_batch_size=8,
        training_max_seq_length=32,
        bootstrap_samples=200,
    )
    ws = Workspace(settings)
    report = run_demo(ws, requests=40, say=print)
    require(report.ok, "the demo did not complete (see its output above)")
    require(report.worker is not None and bool(report.worker.runs), "the demo started no run")
    assert report.worker is not None
    demo_run = max(report.worker.runs)
    second_run(ws, demo_run)
    index = build_run_index(ws)
    return ws, collect_facts(ws, demo_run, index)


def second_run(ws, demo_run: int) -> int:  # type: ignore[no-untyped-def]
    """A second run, so the comparison has two columns and the trend two points: a TRAINING_REQUEST
    naming a registered model (the demo's candidate, or the base model if that one now serves),
    so the worker skips training and only evaluates it (stage 40, about half a minute)."""
    from opslib.control.messages import new_training_request
    from opslib.control.queue import publish
    from opslib.control.release import current_release
    from opslib.control.runs import get_run
    from opslib.execution.worker import Worker
    from opslib.ops.progress import StageProgress

    run = get_run(ws.db, demo_run)
    with ws.db.read() as session:
        release = current_release(session)
        serving = release.active_model_version if release else None
    candidate = run.candidate_model_version if run.candidate_model_version != serving else run.baseline_model_version
    require(candidate is not None, f"run {demo_run} has no candidate and no baseline to evaluate again")
    print(f"      a second run: evaluating {candidate} again (no training) so there are two runs to compare")
    publish(
        ws.db, new_training_request(reason="browser check: a second run to compare", candidate_model_version=candidate)
    )
    with StageProgress(ws, print):
        worker = Worker(ws, name="browser-check").run_once()
    require(len(worker.runs) == 1, f"the second training request started {len(worker.runs)} runs: {worker.messages}")
    run_id, status = next(iter(worker.runs.items()))
    print(f"      run {run_id}: {status}")
    return run_id


def collect_facts(ws, run_id: int, index: Path) -> Facts:  # type: ignore[no-untyped-def]
    """What the pages must show for the demo's run ``run_id``, read from the DB and Object Storage."""
    from sqlalchemy import select

    from opslib.db.models import Chunk, MLPipelineRun, ModelEvaluation, StageExecution
    from opslib.execution.history import collect_run_histories, lineage_nodes, page_path
    from opslib.lifecycle.evaluation.evaluate import read_details, top_changes

    with ws.db.read() as session:
        execution = session.scalars(
            select(StageExecution)
            .where(StageExecution.stage == "40_evaluate_candidate", StageExecution.run_id == run_id)
            .order_by(StageExecution.id.desc())
            .limit(1)
        ).first()
        require(execution is not None, f"run {run_id} has no 40_evaluate_candidate stage")
        run = session.get(MLPipelineRun, run_id)
        require(run is not None, f"execution {execution.id} has no run")
        evaluation = session.get(ModelEvaluation, run.evaluation_id) if run.evaluation_id else None
        if evaluation is None:
            evaluation = session.scalars(
                select(ModelEvaluation)
                .where(ModelEvaluation.run_id == run.id)
                .order_by(ModelEvaluation.id.desc())
                .limit(1)
            ).first()
        require(evaluation is not None, f"run {run.id} has no ModelEvaluation")
        require(
            bool(execution.output_html) and Path(execution.output_html).is_file(),
            f"execution {execution.id}: HTML report missing ({execution.output_html})",
        )
        evaluations = list(
            session.scalars(select(ModelEvaluation).order_by(ModelEvaluation.created_at, ModelEvaluation.id))
        )
        run_ids = sorted(session.scalars(select(MLPipelineRun.id)))
        chunk_ids = set(session.scalars(select(Chunk.id)))
        detail_uri = evaluation.detail_artifact_path
        facts = Facts(
            index=index,
            execution_id=execution.id,
            report=Path(execution.output_html),
            run_id=run.id,
            run_status=run.status.value,
            candidate=run.candidate_model_version,
            verdict=evaluation.overall_decision.value,
            quality=evaluation.quality_metrics,
            run_ids=run_ids,
            evaluation_ids=[e.id for e in evaluations],
            run_quality={e.run_id: e.quality_metrics for e in evaluations},  # a run's newest evaluation
            chunk_ids=chunk_ids,
        )
    # The chunk ids the report's regressions / wins tables show: the evaluation's per-query detail
    # (ModelEvaluation.detail_artifact_path, an Object Storage URI), picked as the notebook picks them.
    prefix = ws.objects.uri("x")[:-1]
    require(detail_uri.startswith(prefix), f"detail artifact {detail_uri} is not in Object Storage {prefix}")
    regressions, wins = top_changes(read_details(ws, detail_uri[len(prefix) :]))
    facts.shown_ids = sorted(
        {
            chunk
            for d in regressions + wins
            for chunk in [
                *d["expected_results"],
                *(r["chunk_id"] for side in ("baseline", "candidate") for r in d[side]["returned"]),
            ]
        }
    )
    histories = {h.run_id: h for h in collect_run_histories(ws)}
    require(run_id in histories, f"run {run_id} has no history")
    facts.lineage = page_path(ws.settings.runs_dir, run_id)
    facts.lineage_kinds = [node.kind for node in lineage_nodes(histories[run_id])]
    facts.history = ws.settings.runs_dir / "history"
    return facts


# 2. and 3. Static pages ----------------------------------------------------------------------
def check_run_index(page, facts: Facts, out: Path) -> str:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(facts.index.as_uri())
    row = page.locator(f"tr#execution-{facts.execution_id}")
    expect(row).to_be_visible()
    # The verdict cell (the 6th); the run cell may carry a badge of its own (the run's outcome, e.g. HELD).
    verdict = row.locator("xpath=./td[6]").locator("span.v")
    expect(verdict).to_be_visible()
    expect(verdict).to_have_text(facts.verdict)
    table = row.locator("table.m")
    expect(table).to_be_visible()
    for key, label in (("recall_at_5", "recall@5"), ("mrr_at_5", "MRR@5"), ("ndcg_at_5", "nDCG@5")):
        metric_row = table.locator("tr", has=page.get_by_role("cell", name=label, exact=True))
        expect(metric_row).to_be_visible()
        baseline, candidate = facts.quality["baseline"][key], facts.quality["candidate"][key]
        expect(metric_row.locator("td").nth(1)).to_have_text(f"{baseline:.4f}")
        expect(metric_row.locator("td").nth(2)).to_have_text(f"{candidate:.4f}")
    page.screenshot(path=str(out / "run-index.png"), full_page=True)
    return (
        f"run index: execution #{facts.execution_id} shows verdict {facts.verdict} and the recall@5 / "
        "MRR@5 / nDCG@5 table with the DB's baseline and candidate values"
    )


def check_evaluation_report(page, facts: Facts, out: Path) -> str:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(facts.report.as_uri())
    banner = page.locator(".ops-banner")
    expect(banner).to_have_count(1)
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(facts.verdict)
    require(
        banner.locator("b").first.inner_text().strip() == facts.verdict,
        f"banner starts with {banner.locator('b').first.inner_text()!r}, DB says {facts.verdict}",
    )
    table = page.locator("table", has=page.get_by_role("rowheader", name="recall_at_5", exact=True)).first
    if table.count() == 0:  # a pandas index cell may be rendered without a row-header role
        table = page.locator("table", has=page.locator("th", has_text="recall_at_5")).first
    expect(table).to_be_visible()
    for metric in METRICS:
        expect(table.locator("tr", has_text=metric)).to_be_visible()
    page.screenshot(path=str(out / "evaluation-report.png"), full_page=True)
    no_code = report_without_code(page)
    first = banner_first(page)
    whole = ids_whole(page, facts)
    return (
        f"evaluation report {facts.report.name}: banner {facts.verdict} visible; headline table with "
        f"{', '.join(METRICS)} visible; {no_code}; {first}; {whole}"
    )


# What nbconvert's lab template emits for a code cell's input: the input area (prompt, CodeMirror
# editor, Pygments-highlighted source). With exclude_input a code cell is a bare
# `jp-CodeCell jp-mod-noInput` holding its outputs; markdown cells keep their (rendered) input area.
CODE_INPUT_SELECTORS = (
    ".jp-CodeCell .jp-Cell-inputWrapper",
    ".jp-CodeCell .jp-InputArea",
    ".jp-InputPrompt",
    ".jp-CodeMirrorEditor",
    ".jp-InputArea-editor",
    # Pygments-highlighted source outside a markdown cell's rendering (a fenced block there is prose).
    ".jp-InputArea .highlight:not(.jp-RenderedMarkdown .highlight)",
)


def report_without_code(page) -> str:  # type: ignore[no-untyped-def]
    found = {sel: page.locator(sel).count() for sel in CODE_INPUT_SELECTORS}
    require(
        not any(found.values()), "the report shows code input: " + ", ".join(f"{n}× {s}" for s, n in found.items() if n)
    )
    cells = page.locator(".jp-CodeCell")
    with_input = page.locator(".jp-CodeCell:not(.jp-mod-noInput)").count()
    require(cells.count() > 0, "the report has no code cell outputs at all (is it a stage report?)")
    require(with_input == 0, f"{with_input} of {cells.count()} code cells are rendered with their input")
    return f"no code input ({cells.count()} code cells, outputs only)"


def banner_first(page) -> str:  # type: ignore[no-untyped-def]
    """The verdict banner is in the header, after only its links, title and stage line, and above
    every table, figure and notebook cell of the page."""
    layout = page.evaluate(
        """() => {
        const banner = document.querySelector('.ops-banner');
        const header = banner.closest('header.ops-report');
        const before = [];
        for (let el = banner.previousElementSibling; el; el = el.previousElementSibling) {
            before.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : ''));
        }
        const bottom = banner.getBoundingClientRect().bottom;
        const above = [];
        let checked = 0;
        document.querySelectorAll('table, img, svg, .jp-Cell').forEach(el => {
            if (banner.contains(el)) return;
            const box = el.getBoundingClientRect();
            if (box.width === 0 && box.height === 0) return;  // not rendered (an empty parameters cell)
            checked += 1;
            if (box.top < bottom - 1) {
                above.push(el.tagName.toLowerCase() + '.' + el.className + ' at y=' + Math.round(box.top));
            }
        });
        return {inHeader: header !== null, before, bottom: Math.round(bottom), above, checked};
    }"""
    )
    require(layout["inHeader"], "the verdict banner is not in the report's header")
    allowed = {"nav.ops-nav", "h1", "p.ops-about"}
    require(
        set(layout["before"]) <= allowed,
        f"the header shows {layout['before']} before the verdict banner (only {sorted(allowed)} may come first)",
    )
    require(
        not layout["above"],
        f"the verdict banner (bottom at y={layout['bottom']}) is below: {'; '.join(layout['above'][:5])}",
    )
    return f"the banner comes first (above all {layout['checked']} tables, figures and cells)"


CHUNK_ID_TOKEN = r"[^\s,;:()\[\]'\"]+:[^\s,;()\[\]'\"]+"


def ids_whole(page, facts: Facts) -> str:  # type: ignore[no-untyped-def]
    """Every chunk id the regressions / wins tables show (from the evaluation's detail artifact)
    is in the page's visible text whole; nothing id-like is cut with an ellipsis; no table cell
    overflows its box."""
    import re

    text = page.locator("body").inner_text()
    missing = [chunk for chunk in facts.shown_ids if not re.search(rf"(?<![\w.:-]){re.escape(chunk)}(?![\w-])", text)]
    require(
        not missing,
        f"{len(missing)} of the {len(facts.shown_ids)} chunk ids the regressions/wins tables hold are not "
        f"in the page's text whole: {missing[:5]}",
    )
    projects = {chunk.split(":", 1)[0] for chunk in facts.chunk_ids}
    cut = []
    for match in re.finditer(CHUNK_ID_TOKEN, text):
        token = match.group(0)
        if token.split(":", 1)[0] not in projects:
            continue
        if token.endswith(".") and not token.endswith("..") and token[:-1] in facts.chunk_ids:
            token = token[:-1]  # the end of a sentence
        if token not in facts.chunk_ids or "…" in token or "..." in token:
            cut.append(token)
    require(not cut, f"id-like text that is no chunk id (cut?): {sorted(set(cut))[:5]}")
    # An id cut before its project prefix ends ("stdl…") is no id-like token: any text an ellipsis
    # ends that begins a chunk id.
    ellipses = [
        m.group(0)
        for m in re.finditer(r"([^\s,;()\[\]'\"]{3,})(?:\.\.\.|…)", text)
        if any(chunk.startswith(m.group(1)) for chunk in facts.chunk_ids)
    ]
    require(not ellipses, f"an ellipsis cuts an id: {ellipses[:5]}")
    overflow = page.evaluate(
        """() => Array.from(document.querySelectorAll('td, th'))
            .filter(c => c.scrollWidth > c.clientWidth + 1)
            .map(c => c.tagName.toLowerCase() + ' ' + JSON.stringify(c.innerText.slice(0, 60))
                      + ' ' + c.scrollWidth + '>' + c.clientWidth)"""
    )
    require(not overflow, f"{len(overflow)} table cells overflow their box: {overflow[:5]}")
    return (
        f"all {len(facts.shown_ids)} chunk ids of the regressions/wins tables whole in the page's text, "
        "none cut by an ellipsis, no table cell overflowing"
    )


# 4. History pages ----------------------------------------------------------------------------
def visible_runs(page) -> list[int]:  # type: ignore[no-untyped-def]
    """The run ids whose columns the comparison shows now (header cells not hidden)."""
    return sorted(
        int(cell.get_attribute("data-run") or "0")
        for cell in page.locator("#compare thead th[data-run]").all()
        if cell.is_visible()
    )


def links_resolve(page, what: str) -> int:  # type: ignore[no-untyped-def]
    """Every link on a file:// page points at a file that exists (what would be a 404 on a server)."""
    from urllib.parse import unquote, urlparse

    targets = page.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    broken = []
    for url in targets:
        parsed = urlparse(url)
        if parsed.scheme != "file" or not Path(unquote(parsed.path)).is_file():
            broken.append(url)
    require(not broken, f"{what}: {len(broken)} of {len(targets)} links lead nowhere: {broken[:5]}")
    return len(targets)


def check_history(page, facts: Facts, out: Path) -> str:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    from opslib.execution.history import METRICS as LABELS

    # compare.html: the newest two runs by default, the picker changes the columns.
    compare = facts.history / "compare.html"
    page.goto(compare.as_uri())
    expect(page.locator("#compare")).to_be_visible()
    columns = sorted(int(c.get_attribute("data-run") or "0") for c in page.locator("#compare thead th[data-run]").all())
    require(columns == facts.run_ids, f"compare.html has columns for runs {columns}, the DB has runs {facts.run_ids}")
    default = facts.run_ids[-2:]
    require(
        visible_runs(page) == default,
        f"compare.html shows runs {visible_runs(page)} by default, not the newest {default}",
    )
    for run_id in default:
        quality = facts.run_quality.get(run_id)
        for key, label in LABELS:
            for side in ("baseline", "candidate"):
                row = page.locator("#compare tr", has=page.locator("th", has_text=f"{label} {side}"))
                cell = row.locator(f'td[data-run="{run_id}"]')
                expect(cell).to_have_text(f"{quality[side][key]:.4f}" if quality else "—")
    picked = ""
    if len(facts.run_ids) >= 2:
        expect(page.locator("#pick")).to_be_visible()
        older, newest = default
        page.select_option("#run-a", str(newest))
        require(
            visible_runs(page) == [newest],
            f"picking run {newest} twice shows the columns of runs {visible_runs(page)}, not only {newest}",
        )
        page.select_option("#run-a", str(older))
        require(visible_runs(page) == default, f"picking {older} and {newest} again shows {visible_runs(page)}")
        rows = page.locator("#compare tbody tr[data-row]")
        total = rows.count()
        page.check("#diff-only")
        shown = [row for row in rows.all() if row.is_visible()]
        same = [
            row.locator("th").inner_text()
            for row in shown
            if len({c.inner_text() for c in row.locator("td").all() if c.is_visible()}) < 2
        ]
        require(0 < len(shown) < total, f"'only rows that differ' shows {len(shown)} of {total} rows")
        require(not same, f"'only rows that differ' still shows rows whose values are equal: {same}")
        page.uncheck("#diff-only")
        picked = (
            f"; the picker shows only run {newest} when both selects name it, and 'only rows that differ' "
            f"leaves {len(shown)} of {total} rows"
        )
    compare_links = links_resolve(page, "compare.html")
    page.screenshot(path=str(out / "compare.png"), full_page=True)

    # trend.html: the plot is loaded; one table row per evaluation, in the DB's order.
    page.goto((facts.history / "trend.html").as_uri())
    image = page.locator("img").first
    expect(image).to_be_visible()
    width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
    require(width > 0, "trend.html: the metric trend image did not load (naturalWidth 0)")
    table = page.locator("h2", has_text="Evaluations").locator("xpath=following-sibling::*[1]").locator("table")
    expect(table).to_be_visible()
    header = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    require("evaluation" in header, f"trend.html: the evaluations table has no 'evaluation' column: {header}")
    column = header.index("evaluation") + 1
    shown_ids = [int(t) for t in table.locator(f"tbody tr > td:nth-child({column})").all_inner_texts()]
    require(
        shown_ids == facts.evaluation_ids,
        f"trend.html lists evaluations {shown_ids}, the DB has {facts.evaluation_ids}",
    )
    trend_links = links_resolve(page, "trend.html")
    page.screenshot(path=str(out / "trend.png"), full_page=True)

    # run-<id>.html: the lineage nodes, every link to an existing file.
    page.goto(facts.lineage.as_uri())
    nodes = page.locator("section.node")
    expect(nodes.first).to_be_visible()
    kinds = [k.strip().lower() for k in nodes.locator(".kind").all_inner_texts()]
    require(
        kinds == [k.lower() for k in facts.lineage_kinds],
        f"{facts.lineage.name} shows the nodes {kinds}, the DB's lineage is {facts.lineage_kinds}",
    )
    for i in range(nodes.count()):
        expect(nodes.nth(i)).to_be_visible()
    lineage_links = links_resolve(page, facts.lineage.name)
    page.screenshot(path=str(out / "lineage.png"), full_page=True)
    return (
        f"compare.html: columns of runs {facts.run_ids}, runs {default} shown by default with the DB's metrics"
        f"{picked}; trend.html: the plot loaded ({width} px wide), one row per evaluation {facts.evaluation_ids}; "
        f"{facts.lineage.name}: {len(kinds)} nodes ({' → '.join(kinds)}); every link resolves "
        f"({compare_links} + {trend_links} + {lineage_links})"
    )


# 5. JupyterLab -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_settings(root: Path) -> Path:
    """User settings for this Lab only: no news / update popups, no autosave (the repository's
    notebook must not be rewritten with outputs), every cell attached to the DOM."""
    settings = root / "lab-settings"
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
            "doNotDisturbMode": True,
        },
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, content in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return settings


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class JupyterLab:
    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / "jupyterlab.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        jupyter = Path(sys.executable).parent / "jupyter"
        command = [
            str(jupyter),
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={REPO}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # As `make lab`: serves runs/ so the reports link to each other (opslib/ops/lab_runs.py).
            "--ServerApp.jpserver_extensions={'opslib.ops.lab_runs': True}",
        ]
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + LAB_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with self._api("GET", "/api/status", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise CheckFailed(f"JupyterLab did not answer within {LAB_START_TIMEOUT_S}s:\n{self.log_tail()}")

    def _api(self, method: str, path: str, timeout: float = 10):  # type: ignore[no-untyped-def]
        request = urllib.request.Request(
            self.base + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        return urllib.request.urlopen(request, timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Shut kernels and the server down; whatever is left of what we started is killed by pid
        (kernels run in sessions of their own, so the server's process group does not cover them)."""
        if self.proc is None:
            return
        started = [self.proc.pid, *_descendants(self.proc.pid)]
        if self.proc.poll() is None:
            try:
                with self._api("GET", "/api/kernels") as response:
                    kernels = json.load(response)
                for kernel in kernels:
                    with self._api("DELETE", f"/api/kernels/{kernel['id']}", timeout=30):
                        pass
                with self._api("POST", "/api/shutdown"):
                    pass
                self.proc.wait(timeout=30)
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        for pid in started[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


def check_dashboard(browser, ws, facts: Facts, out: Path, scratch: Path) -> str:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    from opslib.ops.dashboard import Dashboard  # its tab labels are what the page must show

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPS_", "JUPYTER"))}
    env.update(ws.settings.as_env())
    config = scratch / "jupyter-config"
    config.mkdir()
    env.update(
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTERLAB_SETTINGS_DIR=str(lab_settings(scratch)),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"),
        JUPYTER_DATA_DIR=str(scratch / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(scratch / "jupyter-runtime"),
        PYTHONUNBUFFERED="1",
    )
    notebook = REPO / NOTEBOOK
    before = notebook.read_bytes()
    checkpoints = notebook.parent / ".ipynb_checkpoints"
    had_checkpoints = checkpoints.exists()
    lab = JupyterLab(env, scratch)
    context = None
    try:
        lab.start()
        print(f"      JupyterLab answering on 127.0.0.1:{lab.port}")
        context = browser.new_context(viewport={"width": 1600, "height": 1200})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{lab.base}/lab/tree/{NOTEBOOK}?token={lab.token}", timeout=120_000)
        cells = page.locator(".jp-NotebookPanel .jp-Cell")
        expect(cells.first).to_be_visible(timeout=120_000)
        # The kernel must be up before "Run All" (otherwise Lab may ask which kernel to use).
        status = page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _dismiss_dialogs(page)
            if status.count() and status.first.get_attribute("data-status") == "idle":
                break
            page.wait_for_timeout(1000)
        else:
            raise CheckFailed("the notebook's kernel did not become idle within 120 s")
        # Run → Run All Cells; again if nothing started (a click can land while Lab is still
        # (re)connecting the kernel's websocket, and is then lost).
        prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt")
        for attempt in range(3):
            page.wait_for_timeout(2000)
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu").get_by_text("Run All Cells", exact=True).click()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                t.strip() not in ("", "[ ]:") for t in prompts.all_inner_texts()
            ):
                _dismiss_dialogs(page)
                page.wait_for_timeout(1000)
            if any(t.strip() not in ("", "[ ]:") for t in prompts.all_inner_texts()):
                break
            print(f"      Run All Cells attempt {attempt + 1}: no cell started; retrying")
        else:
            raise CheckFailed("Run → Run All Cells did not start the notebook's cells (3 attempts)")
        tabs = page.locator(".jp-OutputArea .widget-tab, .jp-OutputArea .jupyter-widget-tab").first
        deadline = time.monotonic() + WIDGETS_TIMEOUT_S
        while time.monotonic() < deadline:
            _dismiss_dialogs(page)
            if tabs.count() and tabs.is_visible():
                break
            errors = page.locator(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]', has_text="Traceback"
            )
            if errors.count():
                raise CheckFailed("a dashboard cell raised:\n" + "\n".join(errors.all_inner_texts())[-3000:])
            page.wait_for_timeout(1000)
        else:
            raise CheckFailed(
                f"no ipywidgets Tab rendered within {WIDGETS_TIMEOUT_S}s; outputs:\n"
                + "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())[-3000:]
            )
        tab_bar = tabs.locator(".lm-TabBar, .p-TabBar").first
        for title in Dashboard.PANELS:
            expect(tab_bar.get_by_role("tab", name=title, exact=True)).to_be_visible()
        # The Runs panel (the first, selected tab) fills in from a background refresh.
        runs_table = tabs.locator(".ops-panel table", has=page.locator("th", has_text="outcome"))
        run_cell = runs_table.locator("tr", has=page.get_by_role("cell", name=str(facts.run_id), exact=True))
        expect(run_cell).to_be_visible(timeout=WIDGETS_TIMEOUT_S * 1000)
        if facts.candidate:
            expect(run_cell).to_contain_text(facts.candidate)
        expect(run_cell).to_contain_text(facts.run_status)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "dashboard.png"))
        errors = page.locator(".jp-OutputArea .ops-error")
        require(errors.count() == 0, "the dashboard shows errors: " + " | ".join(errors.all_inner_texts()))
        # The Evaluations tab shows the same verdict as the DB.
        tab_bar.get_by_role("tab", name="Evaluations", exact=True).click()
        heading = tabs.locator(".ops-panel h4", has_text=f"run {facts.run_id}").first
        expect(heading).to_be_visible(timeout=WIDGETS_TIMEOUT_S * 1000)  # filled by the background refresh
        expect(heading.locator(".ops-badge")).to_have_text(facts.verdict)
        history = check_history_tab(page, tabs, tab_bar, facts, out)
        navigation = check_reports_from_lab(context, page, facts, out)
        return (
            f"JupyterLab dashboard: tabs {', '.join(Dashboard.PANELS)} visible; Runs panel shows run {facts.run_id} "
            f"({facts.run_status}, candidate {facts.candidate}); Evaluations tab shows verdict {facts.verdict}; "
            f"{history}; " + navigation
        )
    except Exception:
        if context is not None:
            try:
                context.pages[0].screenshot(path=str(out / "dashboard.png"))
                print(f"      (screenshot of the failure: {out / 'dashboard.png'})")
            except Exception:
                pass
        print("      JupyterLab log (tail):\n" + lab.log_tail())
        raise
    finally:
        if context is not None:
            context.close()
        lab.stop()
        if notebook.read_bytes() != before:
            print(f"      WARNING: {NOTEBOOK} changed on disk while JupyterLab had it open")
        if not had_checkpoints and checkpoints.is_dir():
            shutil.rmtree(checkpoints, ignore_errors=True)


def check_history_tab(page, tabs, tab_bar, facts: Facts, out: Path) -> str:  # type: ignore[no-untyped-def]
    """The History tab: its label, the comparison of the newest two runs (the dashboard's default)
    with the DB's metrics, and the trend plot."""
    from playwright.sync_api import expect

    label = tab_bar.get_by_role("tab", name="History", exact=True)
    expect(label).to_be_visible()
    label.click()
    compare = tabs.locator(".ops-history table#compare")
    expect(compare).to_be_visible(timeout=WIDGETS_TIMEOUT_S * 1000)  # filled by the background refresh
    newest = facts.run_ids[-2:]
    header = compare.locator("thead th[data-run]")
    expect(header).to_have_count(len(newest))
    shown = sorted(int(h.get_attribute("data-run") or "0") for h in header.all())
    require(shown == newest, f"the History tab compares runs {shown}, not the newest {newest}")
    quality = facts.run_quality.get(facts.run_id)
    if quality:
        row = compare.locator("tr", has=page.locator("th", has_text="nDCG@5 candidate"))
        expect(row.locator(f'td[data-run="{facts.run_id}"]')).to_have_text(f"{quality['candidate']['ndcg_at_5']:.4f}")
    plot = tabs.locator(".ops-history img").first
    expect(plot).to_be_visible()
    require(
        plot.evaluate("img => img.complete ? img.naturalWidth : 0") > 0, "the History tab's trend plot did not load"
    )
    label.evaluate("tab => tab.scrollIntoView({block: 'start'})")  # the tab bar, then the comparison
    page.screenshot(path=str(out / "dashboard-history.png"))
    return f"History tab compares runs {newest} (the DB's nDCG@5) and shows the trend plot"


def check_reports_from_lab(context, page, facts: Facts, out: Path) -> str:  # type: ignore[no-untyped-def]
    """The dashboard's run-index link, clicked in JupyterLab, then a report link in that index:
    each page must be the page itself (HTTP 200), not the server's 403 "Blocking request from
    unknown origin" (what JupyterLab's HTML viewer and /files/ answer to a page's relative link)."""
    from playwright.sync_api import expect

    link = page.locator(".jp-OutputArea a", has_text="run index (all reports)").first
    expect(link).to_be_visible()
    href = link.get_attribute("href") or ""
    require(
        href.startswith("/ops/runs/"),
        f"the dashboard links the run index as {href!r}, not where the server extension serves runs/ "
        "(/ops/runs/…): did the kernel get OPS_LAB_RUNS_URL?",
    )
    with context.expect_page() as opened:
        link.click()
    index = opened.value
    index.set_default_timeout(30_000)
    index.wait_for_load_state()

    def shown(tab, what: str) -> None:  # type: ignore[no-untyped-def]
        body = tab.locator("body").inner_text()
        require(
            "403 : Forbidden" not in body and "Blocking request" not in body,
            f"{what} at {tab.url} is the server's error page: {' '.join(body.split())[:300]}",
        )

    shown(index, "the run index")
    require(index.url.endswith("/ops/runs/index.html"), f"the run index opened at {index.url}")
    row = index.locator(f"tr#execution-{facts.execution_id}")
    expect(row).to_be_visible(timeout=30_000)
    expect(row.locator("xpath=./td[6]").locator("span.v")).to_have_text(facts.verdict)
    index.screenshot(path=str(out / "lab-run-index.png"), full_page=True)
    report_link = row.get_by_role("link", name="report", exact=True)
    expect(report_link).to_be_visible(timeout=30_000)
    with index.expect_navigation() as navigation:
        report_link.click()
    response = navigation.value
    require(
        response is not None and response.status == 200,
        f"the report link answered {response.status if response else 'nothing'} at {index.url}",
    )
    shown(index, "the evaluation report")
    require(index.url.endswith(facts.report.name), f"the report link opened {index.url}, not {facts.report.name}")
    banner = index.locator(".ops-banner")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text(facts.verdict)
    index.screenshot(path=str(out / "lab-report.png"), full_page=True)
    # The report's header: its run's lineage page, then the run index (both served there too).
    nav = index.locator("header.ops-report nav.ops-nav")
    lineage_link = nav.get_by_role("link", name=f"run {facts.run_id} lineage", exact=True)
    expect(lineage_link).to_be_visible()
    with index.expect_navigation() as navigation:
        lineage_link.click()
    response = navigation.value
    require(
        response is not None and response.status == 200,
        f"the report's lineage link answered {response.status if response else 'nothing'} at {index.url}",
    )
    shown(index, "the run's lineage page")
    require(index.url.endswith(f"/ops/runs/history/{facts.lineage.name}"), f"the lineage link opened {index.url}")
    nodes = index.locator("section.node")
    expect(nodes).to_have_count(len(facts.lineage_kinds))
    expect(nodes.first).to_be_visible()
    # Its links (reports, notebooks, logs, the other history pages) answer there as well.
    targets = index.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    refused = []
    for url in targets:
        answer = context.request.get(url, max_redirects=0)
        if answer.status != 200:
            refused.append(f"{url} → {answer.status}")
    require(not refused, f"links on the lineage page in JupyterLab do not answer 200: {refused[:5]}")
    index.screenshot(path=str(out / "lab-lineage.png"), full_page=True)
    index.go_back()
    expect(index.locator(".ops-banner")).to_be_visible(timeout=30_000)
    back = nav.get_by_role("link", name="run index", exact=True)
    expect(back).to_be_visible()
    with index.expect_navigation() as navigation:
        back.click()
    response = navigation.value
    require(response is not None and response.status == 200, f"the report's index link answered {response}")
    shown(index, "the run index (back from the report)")
    require(index.url.endswith("/ops/runs/index.html"), f"the report's index link opened {index.url}")
    expect(index.locator(f"tr#execution-{facts.execution_id}")).to_be_visible(timeout=30_000)
    followed = (
        f"; its header links to run {facts.run_id}'s lineage page ({len(facts.lineage_kinds)} nodes, its "
        f"{len(targets)} links answering 200) and back to the run index work too"
    )
    index.close()
    return (
        f"the run index opened from the dashboard in JupyterLab ({href}) and its report link for execution "
        f"#{facts.execution_id} showed the report (HTTP 200, banner {facts.verdict}){followed}"
    )


def _dismiss_dialogs(page) -> None:  # type: ignore[no-untyped-def]
    """Accept whatever modal dialog Lab shows (kernel selection: its default is the notebook's kernel)."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        print("      dismissing a dialog: " + " ".join(dialog.first.inner_text().split())[:200])
        accept = dialog.locator(".jp-Dialog-button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        else:
            page.keyboard.press("Escape")


# Main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "browser-check",
        help="folder for the screenshots (and, with --keep, the throwaway workspace); default: runs/browser-check",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the throwaway workspace, tiny model and its runs/ under --out"
    )
    parser.add_argument(
        "--chromium",
        default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        help="Chromium executable (default /usr/bin/chromium, Debian's package)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if not Path(args.chromium).is_file():
        print(f"FAIL: no Chromium at {args.chromium} (Debian: apt-get install -y chromium)")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    throwaway = [out / "workspace", out / "models", out / "runs"]
    for path in throwaway:
        shutil.rmtree(path, ignore_errors=True)
    for name in SCREENSHOTS:
        (out / name).unlink(missing_ok=True)

    started = time.monotonic()
    results: list[tuple[str, bool, str]] = []

    def check(name: str, fn: Callable[[], str]) -> None:
        t0 = time.monotonic()
        print(f"--- {name}")
        try:
            detail = fn()
            results.append((name, True, detail))
            print(f"PASS: {detail} ({time.monotonic() - t0:.0f}s)")
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (CheckFailed, AssertionError)):
                traceback.print_exc()
            results.append((name, False, detail))
            print(f"FAIL: {name}: {detail}")

    scratch = Path(tempfile.mkdtemp(prefix="browser-check-"))
    try:
        print(
            "--- workspace: the demo on a tiny model (init, corpus, traffic, 10, 20, worker: 30, 40[, 50, 60]), "
            "then a second run (40 only)"
        )
        t0 = time.monotonic()
        try:
            ws, facts = build_workspace(out)
        except Exception as exc:
            traceback.print_exc()
            print(f"FAIL: workspace: {type(exc).__name__}: {exc}")
            return 1
        print(
            f"PASS: workspace built in {time.monotonic() - t0:.0f}s: run {facts.run_id} {facts.run_status}, "
            f"evaluation verdict {facts.verdict}, report {facts.report}; runs {facts.run_ids}, "
            f"evaluations {facts.evaluation_ids}"
        )

        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                check("run index", lambda: check_run_index(page, facts, out))
                check("evaluation report", lambda: check_evaluation_report(page, facts, out))
                check("history pages", lambda: check_history(page, facts, out))
                page.close()
                check("dashboard in JupyterLab", lambda: check_dashboard(browser, ws, facts, out, scratch))
            finally:
                browser.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            for path in throwaway:
                shutil.rmtree(path, ignore_errors=True)

    failed = [name for name, ok, _ in results if not ok]
    print(
        f"--- browser check: {len(results) - len(failed)}/{len(results)} passed in "
        f"{time.monotonic() - started:.0f}s; screenshots in {out}"
    )
    if failed:
        print("FAIL: " + ", ".join(failed))
        return 1
    print("PASS: browser check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
