"""History pages: ``<runs_dir>/history/`` compare.html, trend.html and run-<id>.html, as HTML.

Rendered from what ``opslib.execution.history`` collects (the Metadata DB, the SOT) and rebuilt
with the run index (``build_run_index`` calls ``build_history_pages``); the dashboard's History
tab shows the same fragments. Every value is escaped; pages are self-contained (inline CSS and
PNG; compare.html's picker is a small inline script, and without scripts every run stays visible)
so they read offline and from a copied ``runs/`` folder. Each page is written through a
temporary file and a rename.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from opslib.control.outcomes import colour
from opslib.db.models import utcnow
from opslib.execution import display
from opslib.execution.history import (
    COMPARE_PAGE,
    HISTORY_DIR,
    METRICS,
    TREND_PAGE,
    Attempt,
    MetricValue,
    RunHistory,
    TrendView,
    collect_run_histories,
    collect_trend,
    compare_rows,
    delta_ci,
    fmt_duration,
    fmt_time,
    lineage_nodes,
    page_path,
)
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)


# Rendering ------------------------------------------------------------------------------------
# Page-wide rules only on the pages; every other rule under .ops-history, so the dashboard can
# include FRAGMENT_CSS without restyling JupyterLab around it.
_PAGE_CSS = (
    'body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}'
    "h1{font-size:1.5em;margin:0 0 4px}p.sub{color:#555;margin:0 0 16px}nav{margin:0 0 12px}nav a{margin-right:14px}"
    "#pick{margin:0 0 12px;padding:8px 12px;background:#f5f7fa;border:1px solid #dde3ea;border-radius:6px}"
)
FRAGMENT_CSS = (
    ".ops-history h2{font-size:1.15em;margin:20px 0 6px}"
    ".ops-history table.h{border-collapse:collapse;font-size:0.92em;font-variant-numeric:tabular-nums}"
    ".ops-history table.h th,.ops-history table.h td{border-bottom:1px solid #e3e3e3;padding:5px 8px;"
    "text-align:left;vertical-align:top}"
    ".ops-history table.h thead th{background:#f0f2f5;position:sticky;top:0}"
    ".ops-history table.h tbody th{background:#f7f8fa;white-space:nowrap}"
    ".ops-history .v{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-weight:600;white-space:nowrap}"
    ".ops-history .node{border:1px solid #dde3ea;border-radius:6px;background:#f5f7fa;padding:8px 12px;margin:0;"
    "max-width:60em}"
    ".ops-history .node h3{font-size:1em;margin:0 0 4px}"
    ".ops-history .node .kind{color:#555;font-weight:400;text-transform:uppercase;font-size:0.8em;margin-right:8px}"
    ".ops-history .node dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:4px 0}"
    ".ops-history .node dt{font-weight:600}.ops-history .node dd{margin:0}"
    ".ops-history .arrow{color:#888;margin:2px 0 2px 24px}.ops-history .muted{color:#777}"
    ".ops-history img{max-width:100%}.ops-history .scroll{overflow-x:auto}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(word: str) -> str:
    return f'<span class="v" style="background:{colour(word)}">{_e(word)}</span>'


def href(path: Path | None, base_dir: Path) -> str | None:
    """A relative URL from a page in ``base_dir`` to ``path`` (None when there is no file)."""
    if path is None:
        return None
    try:
        relative = os.path.relpath(path, base_dir.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return path.as_uri()
    return quote(Path(relative).as_posix(), safe="/#")


# Where a page's links point: a function from a file to its URL (None: no link). A page under
# runs/history/ links relatively (``relative_from``); the dashboard passes its own (a Jupyter server
# URL when the opslib server extension serves runs/, see opslib.ops.monitor.ReportLinks).
Linker = Callable[[Path | None], str | None]


def relative_from(base_dir: Path) -> Linker:
    return lambda path: href(path, base_dir)


def _a(path: Path | None, text: str, link: Linker) -> str:
    target = link(path)
    return f'<a href="{_e(target)}">{_e(text)}</a>' if target else ""


def _attempt_links(attempts: Sequence[Attempt], link: Linker) -> str:
    """Each attempt: stage, status, duration, and its report / notebook / log (Airflow's log per attempt)."""
    items = []
    for a in attempts:
        links = " · ".join(
            x
            for x in (
                _a(a.report, "report", link),
                _a(a.notebook, "notebook", link),
                _a(a.log, "log", link),
            )
            if x
        )
        items.append(
            f"{_e(a.stage)} #{a.execution_id} {_e(a.status)} {_e(fmt_duration(a.duration_s))}"
            + (f" — {links}" if links else ' — <span class="muted">no archived files</span>')
        )
    return "<br>".join(items) or '<span class="muted">—</span>'


def render_compare_table(runs: Sequence[RunHistory], link: Linker, pages_dir: Path | None = None) -> str:
    """The comparison as an HTML table: a column per run (``data-run`` on every cell, for the
    page's picker), the run header linking to its lineage page when ``pages_dir`` holds them."""
    if not runs:
        return '<p class="muted">No run yet.</p>'

    def title(run_id: int) -> str:
        page = page_path(pages_dir.parent, run_id) if pages_dir else None
        return _a(page, f"run {run_id}", link) if page and page.is_file() else f"run {run_id}"

    head = "".join(f'<th data-run="{r.run_id}">{title(r.run_id)}<br>{_badge(r.outcome)}</th>' for r in runs)
    body = []
    for label, values in compare_rows(runs):
        cells = "".join(f'<td data-run="{r.run_id}">{_e(v)}</td>' for r, v in zip(runs, values, strict=True))
        body.append(f'<tr data-row><th scope="row">{_e(label)}</th>{cells}</tr>')
    links = "".join(f'<td data-run="{r.run_id}">{_attempt_links(r.attempts, link)}</td>' for r in runs)
    body.append(f'<tr><th scope="row">stage reports and logs</th>{links}</tr>')
    return (
        f'<table class="h" id="compare"><thead><tr><th>field</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


# The picker: shows two chosen runs' columns, hides the others (and, if asked, equal rows). Inline
# and optional: without scripts the form stays hidden and every run is shown side by side.
_PICKER_SCRIPT = """<script>
(function () {
  var form = document.getElementById("pick"), a = document.getElementById("run-a"),
      b = document.getElementById("run-b"), diff = document.getElementById("diff-only");
  form.hidden = false;
  function show() {
    var keep = [a.value, b.value];
    document.querySelectorAll("#compare [data-run]").forEach(function (cell) {
      cell.style.display = keep.indexOf(cell.getAttribute("data-run")) < 0 ? "none" : "";
    });
    document.querySelectorAll("#compare tr[data-row]").forEach(function (row) {
      var seen = [];
      row.querySelectorAll("td[data-run]").forEach(function (cell) {
        if (cell.style.display !== "none") { seen.push(cell.textContent); }
      });
      row.style.display = diff.checked && seen.length === 2 && seen[0] === seen[1] ? "none" : "";
    });
  }
  a.onchange = b.onchange = diff.onchange = show;
  show();
})();
</script>"""


def _page(title: str, heading: str, sub: str, body: str, up: str) -> str:
    nav = (
        f'<nav><a href="{up}index.html">run index</a><a href="{up}{HISTORY_DIR}/{COMPARE_PAGE}">compare runs</a>'
        f'<a href="{up}{HISTORY_DIR}/{TREND_PAGE}">metric trend</a></nav>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Biblio Ops Workbench — {_e(title)}</title><style>{_PAGE_CSS}{FRAGMENT_CSS}</style></head>"
        '<body class="ops-history">'
        f'{nav}<h1>{_e(heading)}</h1><p class="sub">{sub}</p>{body}</body></html>\n'
    )


def render_compare_page(runs: Sequence[RunHistory], runs_dir: Path, generated_at: datetime) -> str:
    """``compare.html``: every run as a column (oldest left), the newest two picked by default."""
    pages_dir = runs_dir / HISTORY_DIR
    ordered = sorted(runs, key=lambda r: r.run_id)
    picker = ""
    script = ""
    if len(ordered) >= 2:

        def options(chosen: int) -> str:
            return "".join(
                f'<option value="{r.run_id}"{" selected" if r.run_id == chosen else ""}>run {r.run_id} '
                f"({_e(r.outcome)}, {_e(r.created_at.strftime('%Y-%m-%d %H:%M'))})</option>"
                for r in reversed(ordered)
            )

        picker = (
            '<form id="pick" hidden>Compare <select id="run-a" aria-label="first run">'
            f"{options(ordered[-2].run_id)}</select> with "
            f'<select id="run-b" aria-label="second run">{options(ordered[-1].run_id)}</select> '
            '<label><input type="checkbox" id="diff-only"> only rows that differ</label></form>'
        )
        script = _PICKER_SCRIPT
    body = picker + render_compare_table(ordered, relative_from(pages_dir), pages_dir) + script
    sub = (
        f"Every run side by side, from the Metadata DB (generated {_e(fmt_time(generated_at))}). "
        "Δ is candidate − baseline with its paired-bootstrap 95 % CI; a run's header opens its lineage."
    )
    return _page("compare runs", "Compare runs", sub, body, "../")


def _png(figure: display.Figure, alt: str) -> str:
    data = base64.b64encode(figure._repr_png_()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def trend_figure(trend: TrendView) -> display.Figure:
    return display.metric_trend(trend.points, trend.markers, METRICS)


def _frame_table(frame: pd.DataFrame, empty: str) -> str:
    if frame.empty:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f'<div class="scroll"><table class="h"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, datetime):
        return fmt_time(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def trend_table(trend: TrendView) -> pd.DataFrame:
    """The points as the page lists them: per metric baseline, candidate and Δ with its CI."""
    p = trend.points
    table = pd.DataFrame(
        {
            "evaluated": p["at"],
            "evaluation": p["evaluation_id"],
            "run": p["run_id"],
            "set": p["ref"],
            "decision": p["decision"],
            "candidate": p["candidate_model"],
            "baseline": p["baseline_model"],
        }
    )
    # One column per metric (baseline → candidate, Δ and its CI): the table fits a page's width.
    for key, label in METRICS:
        table[f"{label}: baseline → candidate, Δ (95 % CI)"] = [
            f"{_cell(base)} → {_cell(cand)}, " + delta_ci(MetricValue(key, label, None, None, d, lo, hi))
            for base, cand, d, lo, hi in zip(
                _opt(p[f"{key}_baseline"]),
                _opt(p[f"{key}_candidate"]),
                _opt(p[f"{key}_delta"]),
                _opt(p[f"{key}_ci95_low"]),
                _opt(p[f"{key}_ci95_high"]),
                strict=True,
            )
        ]
    return table


def _opt(series: pd.Series) -> list[float | None]:
    return [None if pd.isna(v) else float(v) for v in series]


def render_trend(trend: TrendView) -> str:
    """The plot, the table of points and the marked release events (page and dashboard alike)."""
    if trend.points.empty:
        plot = '<p class="muted">No evaluation yet.</p>'
    else:
        plot = _png(trend_figure(trend), "candidate and baseline per metric over evaluations, releases marked")
    return (
        f"{plot}<h2>Evaluations (oldest first)</h2>{_frame_table(trend_table(trend), 'no evaluations')}"
        f"<h2>Releases and rollbacks marked</h2>{_frame_table(trend.markers, 'no CUTOVER or COMPLETE_ROLLBACK yet')}"
    )


def render_trend_page(trend: TrendView, generated_at: datetime) -> str:
    sub = (
        f"Each evaluation's candidate and baseline per metric, from the Metadata DB (generated "
        f"{_e(fmt_time(generated_at))}); the bar on a candidate point is the baseline plus the 95 % CI of Δ. "
        "Vertical lines: CUTOVER (a candidate started serving) and COMPLETE_ROLLBACK. Evaluations on "
        "different evaluation sets are not comparable with each other."
    )
    return _page("metric trend", "Metric trend", sub, render_trend(trend), "../")


def render_lineage(run: RunHistory, link: Linker) -> str:
    """The chain of nodes (each with its report link or its record) and every stage attempt."""
    parts = []
    for i, node in enumerate(lineage_nodes(run)):
        if i:
            parts.append('<div class="arrow">↓</div>')
        facts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in node.facts)
        anchor = _a(node.link, node.link_text, link)
        record = f'<span class="muted">record: {_e(node.record)}</span>' if node.record else ""
        verdict = f" {_badge(node.verdict)}" if node.verdict else ""
        parts.append(
            f'<section class="node"><h3><span class="kind">{_e(node.kind)}</span>{_e(node.title)}{verdict}</h3>'
            f"<dl>{facts}</dl>{anchor}{'<br>' if anchor and record else ''}{record}</section>"
        )
    return (
        "".join(parts)
        + f"<h2>Stage executions of run {run.run_id} (every attempt)</h2><p>{_attempt_links(run.attempts, link)}</p>"
    )


def render_lineage_page(run: RunHistory, runs_dir: Path, generated_at: datetime) -> str:
    sub = (
        f"From the feedback it was trained on to what it did to serving, from the Metadata DB (generated "
        f"{_e(fmt_time(generated_at))}). Each step links to its stage report or names its record."
    )
    return _page(
        f"run {run.run_id} lineage",
        f"Run {run.run_id} — lineage",
        sub,
        render_lineage(run, relative_from(runs_dir / HISTORY_DIR)),
        "../",
    )


# Writing the pages ----------------------------------------------------------------------------
def write_atomic(target: Path, text: str) -> None:
    """Write ``target`` through a temporary file and a rename: a reader never sees half a page."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".html.part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_history_pages(ws: Workspace, now: datetime | None = None) -> list[Path]:
    """Rebuild ``<runs_dir>/history/``: compare.html, trend.html and one run-<id>.html per run."""
    now = now or utcnow()
    runs_dir = ws.settings.runs_dir
    runs = collect_run_histories(ws, now)
    trend = collect_trend(ws)
    folder = runs_dir / HISTORY_DIR
    written = []
    for run in runs:
        target = page_path(runs_dir, run.run_id)
        write_atomic(target, render_lineage_page(run, runs_dir, now))
        written.append(target)
    write_atomic(folder / COMPARE_PAGE, render_compare_page(runs, runs_dir, now))
    write_atomic(folder / TREND_PAGE, render_trend_page(trend, now))
    written += [folder / COMPARE_PAGE, folder / TREND_PAGE]
    log.info("history pages rebuilt", extra={"path": str(folder), "runs": len(runs), "evaluations": len(trend.points)})
    return written
