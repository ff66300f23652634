"""The archived report of one stage execution, as reviewers read it: verdict first, no code.

An executed stage notebook is rendered to offline HTML (nbconvert, the package's ``offline``
template) with these changes, all in the HTML only — the archived ``.ipynb`` keeps every cell:

- no code cells (their outputs stay);
- a header at the top of the page: links (the run index, the run's lineage page, the reports of
  the same run's other stages, the stage's ``.log`` and ``.ipynb``), the notebook's title, the
  **verdict banner**, and one table of the execution's parameters;
- the verdict banner is the stage's last ``display.banner`` output (marked in its display
  metadata, ``BANNER_METADATA_KEY``), moved from where the notebook showed it to the header; an
  execution that failed after its banner (or before any) shows ERROR / REFUSED there instead,
  and its own banners stay where they were;
- the page title names the stage, the run (or the execution) and the verdict;
- long values wrap instead of being cut or scrolled (``templates/offline``).

Links are relative to the report's folder (``runs/<YYYYMMDD>/``), so a copied ``runs/`` folder
reads the same.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import os
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from opslib.control import outcomes
from opslib.db.models import ExecutionStatus, StageExecution
from opslib.infra.workspace import Workspace

# The display metadata key that marks a verdict banner: {"verdict": ..., "text": ...}.
BANNER_METADATA_KEY = "opslib"
# Parameters the runner adds to every execution: shown in the header line, not the table.
_RUNNER_PARAMETERS = ("ops_execution_id",)
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
_FAILED_VERDICTS = (outcomes.Verdict.ERROR.value, outcomes.Verdict.REFUSED.value)


def banner_html(verdict: str, text: str) -> str:
    """A verdict as a coloured bar (the colour of its tone in ``opslib.control.outcomes``)."""
    return (
        f'<div class="ops-banner" style="padding:12px 16px;border-radius:6px;color:white;'
        f'background:{outcomes.colour(verdict)};font-size:1.2em;overflow-wrap:anywhere">'
        f"<b>{html.escape(verdict)}</b> — {html.escape(text)}</div>"
    )


@dataclass(frozen=True)
class ReportLink:
    label: str
    href: str  # relative to the report's folder


@dataclass(frozen=True)
class ReportContext:
    """What the runner knows about the execution that its notebook does not."""

    stage: str | None = None
    execution_id: int | None = None
    run_id: int | None = None
    links: tuple[ReportLink, ...] = ()
    # (verdict, sentence) when the execution failed: ERROR or REFUSED and why.
    failure: tuple[str, str] | None = None


@dataclass
class ReportPage:
    """What the header shows, from the executed notebook."""

    title: str | None  # the notebook's "# ..." heading
    verdict: str | None
    banner: str | None  # its HTML
    parameters: dict[str, Any] = field(default_factory=dict)


def _banner_outputs(nb: Any) -> list[tuple[Any, int, dict[str, Any]]]:
    """Every marked banner output: (cell, output index, {"verdict", "text"}), in page order."""
    found = []
    for cell in nb.cells:
        for index, output in enumerate(cell.get("outputs", ())):
            mark = output.get("metadata", {}).get(BANNER_METADATA_KEY)
            if isinstance(mark, dict) and isinstance(mark.get("verdict"), str):
                found.append((cell, index, {"verdict": mark["verdict"], "text": str(mark.get("text", ""))}))
    return found


def _take_title(nb: Any) -> str | None:
    """The first markdown cell's leading ``# heading``, removed from the cell (the header shows it)."""
    for cell in nb.cells:
        # Papermill puts its "An Exception was encountered" line above a failed notebook's cells.
        if cell.cell_type != "markdown" or PAPERMILL_ERROR_TAG in cell.metadata.get("tags", ()):
            continue
        source: str = cell.source
        first, _, rest = source.partition("\n")
        if first.startswith("# "):
            cell.source = rest.lstrip("\n")
            return first[2:].strip()
        return None
    return None


def prepare(nb: Any, context: ReportContext) -> ReportPage:
    """Change the notebook copy ``nb`` for the page (title out, banner hoisted) and say what the
    header shows."""
    title = _take_title(nb)
    recorded = nb.metadata.get("papermill", {}).get("parameters", {})
    parameters = {k: v for k, v in dict(recorded or {}).items() if k not in _RUNNER_PARAMETERS}
    banners = _banner_outputs(nb)
    last = banners[-1] if banners else None
    failure = context.failure
    if last is not None and (failure is None or last[2]["verdict"] in _FAILED_VERDICTS):
        cell, index, mark = last
        del cell.outputs[index]
        return ReportPage(title, mark["verdict"], banner_html(mark["verdict"], mark["text"]), parameters)
    if failure is not None:
        return ReportPage(title, failure[0], banner_html(*failure), parameters)
    return ReportPage(title, None, None, parameters)


def page_title(page: ReportPage, context: ReportContext) -> str:
    """E.g. ``40 · Evaluation report: candidate vs baseline — run 3 — PASS``."""
    parts = [page.title or context.stage or "Stage report"]
    if context.run_id is not None:
        parts.append(f"run {context.run_id}")
    elif context.execution_id is not None:
        parts.append(f"execution {context.execution_id}")
    if page.verdict:
        parts.append(page.verdict)
    return " — ".join(parts)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def header_html(page: ReportPage, context: ReportContext) -> str:
    e = html.escape
    nav = " · ".join(f'<a href="{e(link.href)}">{e(link.label)}</a>' for link in context.links)
    about = [
        f"stage <code>{e(context.stage)}</code>" if context.stage else None,
        f"execution #{context.execution_id}" if context.execution_id is not None else None,
        f"run {context.run_id}" if context.run_id is not None else None,
    ]
    rows = "".join(
        f"<tr><th>{e(str(name))}</th><td>{e(_value(value))}</td></tr>" for name, value in page.parameters.items()
    )
    return (
        '<header class="ops-report">'
        + (f'<nav class="ops-nav">{nav}</nav>' if nav else "")
        + (f"<h1>{e(page.title)}</h1>" if page.title else "")
        + (f'<p class="ops-about">{" · ".join(a for a in about if a)}</p>' if any(about) else "")
        + (page.banner or "")
        + (f'<table class="ops-parameters"><caption>parameters</caption>{rows}</table>' if rows else "")
        + "</header>"
    )


def render_report(nb: Any, context: ReportContext | None = None) -> str:
    """The report page of the executed notebook ``nb`` (not changed) as one HTML string."""
    from nbconvert import HTMLExporter  # deferred: nbconvert takes a second to import

    context = context or ReportContext()
    page_nb = copy.deepcopy(nb)
    page = prepare(page_nb, context)
    # The nbconvert template shipped in the package: opslib/execution/templates/offline
    with as_file(files("opslib.execution").joinpath("templates")) as templates:
        exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(templates)])
        exporter.log.setLevel(logging.ERROR)  # not "alternative text is missing" for every plot
        exporter.exclude_input = True  # reviewers read results; the .ipynb keeps the code
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
        body, _ = exporter.from_notebook_node(
            page_nb,
            resources={"metadata": {"name": page_title(page, context)}, "ops_header": header_html(page, context)},
        )
    return str(body)


# Links ------------------------------------------------------------------------------------
def _relative(target: Path, folder: Path) -> str:
    try:
        relative = os.path.relpath(target.resolve(), folder.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return target.resolve().as_uri()
    return quote(Path(relative).as_posix(), safe="/")


def lineage_page(runs_dir: Path, run_id: int) -> Path:
    """Where the run's lineage page is (``runs/history/run-<id>.html``)."""
    return runs_dir / "history" / f"run-{run_id}.html"


def report_context(
    ws: Workspace,
    execution_id: int,
    html_path: Path,
    *,
    log_path: Path | None = None,
    ipynb_path: Path | None = None,
    failure: tuple[str, str] | None = None,
) -> ReportContext:
    """The header of execution ``execution_id``'s report at ``html_path``: the run index, its
    run's lineage page, the reports of the same run's other executions that exist now (older
    ones, while this one renders), its log and notebook."""
    runs_dir, folder = ws.settings.runs_dir, html_path.parent
    with ws.db.read() as session:
        row = session.get(StageExecution, execution_id)
        if row is None:
            raise LookupError(f"execution {execution_id}: no such StageExecution")
        stage, run_id = row.stage, row.run_id
        siblings = (
            list(
                session.execute(
                    select(StageExecution.id, StageExecution.stage, StageExecution.status, StageExecution.output_html)
                    .where(StageExecution.run_id == run_id, StageExecution.id != execution_id)
                    .order_by(StageExecution.started_at, StageExecution.id)
                ).tuples()
            )
            if run_id is not None
            else []
        )
    links = [ReportLink("run index", _relative(runs_dir / "index.html", folder))]
    if run_id is not None:
        links.append(ReportLink(f"run {run_id} lineage", _relative(lineage_page(runs_dir, run_id), folder)))
    for sibling_id, sibling_stage, status, output_html in siblings:
        if output_html and Path(output_html).is_file():
            state = "" if status is ExecutionStatus.SUCCEEDED else f", {status.value}"
            links.append(ReportLink(f"{sibling_stage} (#{sibling_id}{state})", _relative(Path(output_html), folder)))
    for label, path in (("log", log_path), ("notebook (.ipynb)", ipynb_path)):
        if path is not None and path.is_file():
            links.append(ReportLink(label, _relative(path, folder)))
    return ReportContext(stage=stage, execution_id=execution_id, run_id=run_id, links=tuple(links), failure=failure)
