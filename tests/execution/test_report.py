"""The reviewers' report page: no code, the verdict banner first, title, header links, nothing cut.

The notebooks here are built with nbformat and given the outputs a kernel would have produced
(the banner's own mimebundle, a pandas table as the stage kernel renders it), so no kernel runs.
"""

import re
from datetime import timedelta
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from opslib.db.models import ExecutionStatus, MLPipelineRun, RunStatus, StageExecution, TriggerSource, utcnow
from opslib.execution import display
from opslib.execution.context import show_tables_whole
from opslib.execution.report import ReportContext, render_report, report_context
from opslib.execution.runner import _archive_paths, render_html
from opslib.infra.workspace import Workspace

LONG_ID = "stdlib:mimetypes.MimeTypes.guess_all_extensions#chunk-0000000000000000000000000000000042"
LONG_PATH = "file:///srv/biblio/workspace/objects/evaluations/run-3/details-" + "0" * 64 + ".jsonl"
CDN = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']?https?://""", re.I)


def _banner_output(verdict: str, text: str) -> nbformat.NotebookNode:
    data, metadata = display.banner(verdict, text)._repr_mimebundle_()
    return new_output("display_data", data=data, metadata=metadata)


def _table_output(frame: pd.DataFrame) -> nbformat.NotebookNode:
    with pd.option_context("display.max_colwidth", 50):  # pandas' default, undone by the stage
        show_tables_whole()
        rendered = frame._repr_html_()
    return new_output("execute_result", data={"text/html": rendered, "text/plain": "table"}, execution_count=3)


def _executed(*, banners: list[tuple[str, str]], parameters: dict[str, object] | None = None) -> nbformat.NotebookNode:
    table = pd.DataFrame({"returned": [", ".join([LONG_ID] * 5)], "stored at": [LONG_PATH]})
    cells = [
        new_markdown_cell("# 40 · Evaluation report: candidate vs baseline\nDense retrieval, top 5."),
        new_code_cell("# Parameters\nrun_id = 0", metadata={"tags": ["parameters"]}),
        new_code_cell("loss_table_of_the_trainer()", outputs=[new_output("stream", text="loss 0.25\n" * 15)]),
        new_code_cell("the_table()", outputs=[_table_output(table)]),
        *[new_code_cell(f"display.banner({v!r}, ...)", outputs=[_banner_output(v, t)]) for v, t in banners],
        new_markdown_cell("## Provenance"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["papermill"] = {"parameters": parameters or {"run_id": 3, "ops_execution_id": 7}}
    return nb


def _body(page: str) -> str:
    return page.split("<body", 1)[1]


def test_the_verdict_banner_is_hoisted_to_the_top_and_code_is_hidden() -> None:
    nb = _executed(banners=[("PASS", "no difference distinguishable from zero")])
    page = render_report(nb, ReportContext(stage="40_evaluate_candidate", execution_id=7, run_id=3))
    body = _body(page)
    assert body.count('class="ops-banner"') == 1  # moved, not copied
    banner_at, loss_at = body.index('class="ops-banner"'), body.index("loss 0.25")
    assert banner_at < loss_at < body.index("Provenance")  # first, above what the stage printed
    assert "loss_table_of_the_trainer()" not in body and 'class="jp-CodeMirrorEditor' not in body  # no code
    assert "<title>40 · Evaluation report: candidate vs baseline — run 3 — PASS</title>" in page
    assert body.count("40 · Evaluation report: candidate vs baseline") == 1  # the heading is in the header only
    assert "Dense retrieval, top 5." in body
    # One table of the parameters, without the runner's own.
    parameters = body.split('<table class="ops-parameters">', 1)[1].split("</table>", 1)[0]
    assert "<th>run_id</th><td>3</td>" in parameters and "ops_execution_id" not in parameters
    assert not CDN.search(page)
    assert len(nb.cells[4].outputs) == 1  # the notebook given is not changed


def test_the_last_banner_is_the_verdict() -> None:
    nb = _executed(banners=[("WAITING", "first try"), ("RELEASED", "switched: m2 now serves")])
    body = _body(render_report(nb, ReportContext(run_id=3)))
    header = body.split("</header>", 1)[0]
    assert "RELEASED</b> — switched: m2 now serves" in header and "first try" not in header
    assert "WAITING</b> — first try" in body.split("</header>", 1)[1]  # an earlier one stays in place


def test_a_failure_after_the_banner_shows_error_first_and_keeps_the_stage_banner_in_place() -> None:
    nb = _executed(banners=[("OK", "feedback looks healthy")])
    page = render_report(
        nb, ReportContext(run_id=None, execution_id=9, failure=("ERROR", "failed at cell 6: KeyError"))
    )
    header, rest = _body(page).split("</header>", 1)
    assert "ERROR</b> — failed at cell 6: KeyError" in header
    assert "OK</b> — feedback looks healthy" in rest
    assert "<title>40 · Evaluation report: candidate vs baseline — execution 9 — ERROR</title>" in page


def test_the_title_is_found_below_papermills_error_line() -> None:
    nb = _executed(banners=[])
    error_line = new_markdown_cell("An Exception was encountered", metadata={"tags": ["papermill-error-cell-tag"]})
    nb.cells.insert(0, error_line)
    page = render_report(nb, ReportContext(run_id=3, failure=("ERROR", "failed at cell 4: KeyError: 'x'")))
    assert "<title>40 · Evaluation report: candidate vs baseline — run 3 — ERROR</title>" in page
    assert "An Exception was encountered" in _body(page).split("</header>", 1)[1]  # its link to the cell stays


def test_a_stages_own_error_banner_is_the_failure_verdict() -> None:
    nb = _executed(banners=[("ERROR", "evaluation did not complete — EvaluationError: no query")])
    page = render_report(nb, ReportContext(failure=("ERROR", "failed at cell 3: EvaluationError: no query")))
    header = _body(page).split("</header>", 1)[0]
    assert "evaluation did not complete" in header and _body(page).count('class="ops-banner"') == 1


def test_long_values_appear_whole_and_wrap() -> None:
    page = render_report(_executed(banners=[("PASS", "x")]), ReportContext())
    assert page.count(LONG_ID) == 5 and LONG_PATH in page
    assert "..." not in _body(page).split("</header>", 1)[1].replace("&hellip;", "...").split("Provenance")[0]
    assert "overflow-wrap: anywhere" in page


def test_a_banner_word_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(display.VerdictWordError, match="banner verdict 'INFO': not a stage verdict"):
        display.banner("INFO", "x")


def test_the_header_links_the_index_the_lineage_the_runs_other_reports_the_log_and_notebook(ws: Workspace) -> None:
    runs = ws.settings.runs_dir
    started = utcnow().replace(hour=23, minute=59, second=0, microsecond=0)
    with ws.db.transaction() as session:
        runs_made = [  # at most one run RUNNING at a time
            MLPipelineRun(status=status, trigger_source=TriggerSource.MANUAL, trace_id="t")
            for status in (RunStatus.RUNNING, RunStatus.SUPERSEDED)
        ]
        session.add_all(runs_made)
        session.flush()
        run_id, other_run = (r.id for r in runs_made)
        rows = [
            StageExecution(
                run_id=run,
                stage=stage,
                notebook="x.ipynb",
                parameters={},
                status=status,
                started_at=started + timedelta(minutes=offset),
                trace_id="t",
            )
            for run, stage, status, offset in (
                (run_id, "30_train_candidate", ExecutionStatus.SUCCEEDED, 0),
                (run_id, "40_evaluate_candidate", ExecutionStatus.FAILED, 1),  # past midnight
                (other_run, "30_train_candidate", ExecutionStatus.SUCCEEDED, 1),  # another run
                (run_id, "40_evaluate_candidate", ExecutionStatus.RUNNING, 2),  # this one
            )
        ]
        session.add_all(rows)
        session.flush()
        for row in rows[:3]:
            html = _archive_paths(runs, row.started_at, row.id, row.stage)[1]
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text("<html></html>")
            row.output_html = str(html)
        ids = [r.id for r in rows]
    ipynb, html, log = _archive_paths(runs, started + timedelta(minutes=2), ids[3], "40_evaluate_candidate")
    html.parent.mkdir(parents=True, exist_ok=True)
    ipynb.write_text("{}")
    log.write_text("")
    context = report_context(ws, ids[3], html, log_path=log, ipynb_path=ipynb)
    links = {link.label: link.href for link in context.links}
    day_before = started.strftime("%Y%m%d")  # this report is in the next day's folder
    assert html.parent.name != day_before
    assert links == {
        "run index": "../index.html",
        f"run {run_id} lineage": f"../history/run-{run_id}.html",
        f"30_train_candidate (#{ids[0]})": f"../{day_before}/235900-{ids[0]:06d}-30_train_candidate.html",
        f"40_evaluate_candidate (#{ids[1]}, FAILED)": f"000000-{ids[1]:06d}-40_evaluate_candidate.html",
        "log": log.name,
        "notebook (.ipynb)": ipynb.name,
    }
    assert (context.stage, context.execution_id, context.run_id) == ("40_evaluate_candidate", ids[3], run_id)
    # Every href resolves from the report's folder (the lineage page is another stage's to write).
    for label, href in links.items():
        if "lineage" not in label and "index" not in label:
            assert (html.parent / href).is_file(), label

    executed = html.with_suffix(".executed.ipynb")
    nbformat.write(_executed(banners=[("PASS", "x")]), executed)
    render_html(executed, html, context)
    page = html.read_text()
    assert '<a href="../index.html">run index</a>' in page
    assert f'<a href="../history/run-{run_id}.html">run {run_id} lineage</a>' in page
    assert f'href="{log.name}">log</a>' in page


def test_the_plain_form_renders_without_links(tmp_path: Path) -> None:
    executed = tmp_path / "x.ipynb"
    nbformat.write(_executed(banners=[("TRAINED", "candidate m2")]), executed)
    page = render_html(executed, tmp_path / "x.html").read_text()
    assert (
        'class="ops-nav"' not in page
        and "<title>40 · Evaluation report: candidate vs baseline — TRAINED</title>" in page
    )


def test_every_stage_notebook_has_a_heading_and_banners_in_the_vocabulary() -> None:
    from opslib.control.outcomes import Verdict
    from opslib.execution.registry import STAGES

    notebooks = Path(__file__).resolve().parents[2] / "notebooks"
    words = {v.value for v in Verdict}
    for spec in STAGES.values():
        nb = nbformat.read(notebooks / spec.notebook, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), spec.notebook
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        calls = re.findall(r"display\.banner\((.*?),", code, flags=re.S)
        assert calls, f"{spec.notebook}: no verdict banner"
        literals = {w for call in calls for w in re.findall(r'"([A-Z][A-Z ]*)"', call)}
        assert literals <= words, f"{spec.notebook}: {literals - words} not in the vocabulary"
