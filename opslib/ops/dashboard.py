"""The ops dashboard: ipywidgets panels over ``opslib.ops.monitor`` and ``opslib.ops.actions``.

``Dashboard(ws).widget`` is what ``notebooks/00_ops_dashboard.ipynb`` displays. Panels render
plain HTML (tables escape their text) into ``Output`` widgets, so report links are relative
paths JupyterLab opens itself. Refreshes and actions run in background threads — the kernel
stays free — and every callback catches its errors into the panel (ipywidgets would otherwise
swallow them). A second click on a button whose action is still in flight does nothing.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import ipywidgets as w
import pandas as pd

from opslib.control import outcomes
from opslib.errors import Refused
from opslib.execution import history, history_pages
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.ops import actions, alerts, monitor
from opslib.settings import Settings

log = get_logger(__name__)

_STYLE = (
    "<style>.ops-panel table{border-collapse:collapse;font-size:12px}"
    ".ops-panel th,.ops-panel td{border:1px solid #ddd;padding:3px 6px;text-align:left!important;"
    "vertical-align:top}"
    ".ops-badge{color:white;border-radius:4px;padding:1px 6px;font-weight:bold}"
    ".ops-note{color:#555}.ops-warn{color:#a35200}.ops-error{color:#b3261e;font-weight:bold}"
    ".ops-refused{color:#b35c00;font-weight:bold}</style>"
)


def _e(value: Any) -> str:
    return html.escape("—" if value is None else str(value))


def _local(iso: str, tz_name: str) -> str:
    """An ISO UTC time in the schedule's time zone, as operators read their cron lines."""
    return datetime.fromisoformat(iso).astimezone(ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M %Z")


def _badge(text: str) -> str:
    return f'<span class="ops-badge" style="background:{outcomes.colour(text)}">{_e(text)}</span>'


def _table(frame: pd.DataFrame, empty: str = "none") -> str:
    if frame is None or frame.empty:
        return f'<p class="ops-note">{_e(empty)}</p>'
    shown = frame.astype(object).where(frame.notna(), "—")
    return shown.to_html(escape=True, index=frame.index.name is not None, border=0)


def _link(path: str | None, text: str, links: monitor.ReportLinks | Path | None) -> str:
    """A link to a file under runs/ that opens in a browser tab of its own (see ``ReportLinks``);
    a bare Path is the folder relative links start from."""
    if not isinstance(links, monitor.ReportLinks):
        links = monitor.ReportLinks(base=links)
    target = links.href(path)
    if not target:
        return _e(text)
    return f'<a href="{html.escape(target, quote=True)}" target="_blank">{_e(text)}</a>'


# Panel renderers (pure: view → HTML) -------------------------------------------------------------
def render_runs(view: monitor.RunsView, base: monitor.ReportLinks | Path | None = None) -> str:
    def slot(name: str, row: monitor.RunRow | None) -> str:
        if row is None:
            return f"<b>{name}</b>: free"
        stalled = " " + _badge("STALLED") if row.stalled else ""
        return (
            f"<b>{name}</b>: run {row.id} {_badge(row.status)}{stalled} dataset {_e(row.dataset_version)}, "
            f"candidate {_e(row.candidate_model_version)}, heartbeat {_e(row.heartbeat)}"
        )

    rows = []
    for r in view.recent:
        failure = ""
        if r.failed_stage:
            kind = "quality below criteria" if r.outcome == "FAIL" else "system error"
            failure = f"{_e(r.failed_stage)} — {kind}: {_e((r.failure_reason or '')[:200])}"
        elif r.outcome == "HELD":
            failure = f"held for a promote — {_e(r.release_hold)}"
        reports = ", ".join(_link(path, stage.split("_", 1)[0], base) for stage, path in r.reports) or "—"
        reports += "".join(f" {_e(stage.split('_', 1)[0])} {_badge('ABANDONED')}" for stage in r.abandoned)
        rows.append(
            f"<tr><td>{r.id}</td><td>{_badge(r.outcome)}</td><td>{_e(r.status)}</td><td>{failure or '—'}</td>"
            f"<td>{_e(r.trigger)}</td><td>{_e(r.dataset_version)}</td><td>{_e(r.candidate_model_version)}</td>"
            f"<td>{_e(r.created)}</td><td>{reports}</td></tr>"
        )
    table = (
        (
            "<table><tr><th>run</th><th>outcome</th><th>status</th><th>failure</th><th>trigger</th><th>dataset</th>"
            "<th>candidate</th><th>created</th><th>reports</th></tr>" + "".join(rows) + "</table>"
        )
        if rows
        else '<p class="ops-note">no runs yet</p>'
    )
    legend = (
        '<p class="ops-note">FAIL = the candidate was worse (quality; nothing broken). '
        "ERROR = a system error (look at the report). STALLED = RUNNING without a heartbeat "
        "(the reconciler resumes or fails it). ABANDONED (reports column) = a stage execution whose "
        "process died; the reconciler ended its record.</p>"
    )
    schedules = "<br>".join(
        f"<b>schedule {_e(t['schedule'])}</b> ({_e(t['cron'])}, {_e(t['timezone'])}): next "
        f"{_e(_local(t['next_due_at'], t['timezone']))}; "
        + (
            f"last tick {_e(_local(t['last_due_at'], t['timezone']))} {_badge(t['last_status'])}"
            if t["last_due_at"]
            else "never ran"
        )
        for t in view.schedules
    )
    return (
        f'<div class="ops-panel">{_STYLE}<p>{slot("RUNNING", view.running)}<br>'
        f"{slot('PENDING', view.pending)}</p><p>{schedules}</p>{table}{legend}</div>"
    )


def render_release_diagram(status: str) -> str:
    """The release state machine as inline SVG, the current state filled."""
    x = {"ROLLBACK_PREPARING": 10, "STABLE": 290, "CANDIDATE_REINDEXING": 570}
    width, top, height = 180, 40, 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="130" role="img" '
        f'aria-label="release state {html.escape(status)}">',
        '<defs><marker id="ops-arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
    ]
    # Each arrow's label sits above (outgoing from STABLE) or below (back to STABLE) the row of
    # boxes, so a long label never runs into a box.
    arrows = (
        (x["STABLE"] + width, x["CANDIDATE_REINDEXING"], top + 12, "READY run → 50", top - 8),
        (x["CANDIDATE_REINDEXING"], x["STABLE"] + width, top + 28, "60 cutover / abort", top + height + 16),
        (x["STABLE"], x["ROLLBACK_PREPARING"] + width, top + 12, "ROLLBACK_REQUEST", top - 8),
        (x["ROLLBACK_PREPARING"] + width, x["STABLE"], top + 28, "restored (70)", top + height + 16),
    )
    for x1, x2, y, label, label_y in arrows:
        parts.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#555" marker-end="url(#ops-arrow)"/>')
        parts.append(
            f'<text x="{(x1 + x2) / 2}" y="{label_y}" text-anchor="middle" font-size="10" '
            f'fill="#555">{html.escape(label)}</text>'
        )
    for name, left in x.items():
        current = name == status
        parts.append(
            f'<rect x="{left}" y="{top}" width="{width}" height="{height}" rx="6" '
            f'fill="{"#1f4e8c" if current else "#f4f4f4"}" stroke="#1f4e8c"/>'
        )
        parts.append(
            f'<text x="{left + width / 2}" y="{top + 25}" text-anchor="middle" font-size="11" '
            f'fill="{"white" if current else "#222"}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_release(view: monitor.ReleaseView | None) -> str:
    if view is None:
        return '<p class="ops-note">no release yet: initialise the workspace (`opsbench init`)</p>'
    fields = pd.DataFrame({"field": list(view.state.keys()), "value": list(view.state.values())})
    rollback = (
        f"<b>rollback</b>: {'available ' if view.rollback_available else 'not available — '}{_e(view.rollback_note)}"
    )
    history = view.history.tail(10).iloc[::-1] if not view.history.empty else view.history
    return (
        f'<div class="ops-panel">{_STYLE}{render_release_diagram(view.status)}'
        f"<p><b>status</b>: {_e(view.status)} — <b>waiting on</b>: {_e(view.waiting_on)}<br>{rollback}</p>"
        f"{_table(fields)}<h4>release history (newest first)</h4>{_table(history)}</div>"
    )


def render_datasets(view: monitor.DatasetsView) -> str:
    unusable = "".join(
        f'<p class="ops-error">UNUSABLE (never picked again; its artifact is gone or changed): {_e(u)}</p>'
        for u in view.unusable
    )
    return (
        f'<div class="ops-panel">{_STYLE}<p><b>newest</b>: {_e(view.newest)} · <b>newest eligible</b>: '
        f"{_e(view.newest_eligible)} · <b>used by the last successful run</b>: {_e(view.last_used)}<br>"
        f"<b>lag</b>: {_e(view.lag)}</p>{unusable}{_table(view.table, 'no datasets yet')}</div>"
    )


def render_indexes(view: monitor.IndexesView) -> str:
    """Each index: the entries the Metadata DB lists against the vectors the store itself holds."""
    if view.store_error:
        flags = f'<p class="ops-error">{_e(view.store_error)}</p>'
    else:
        flags = "".join(f'<p class="ops-error">{_e(problem)}</p>' for problem in view.problems)
    return (
        f'<div class="ops-panel">{_STYLE}<h4>indexes: entries (Metadata DB) / vectors (the store\'s own count)</h4>'
        f"{flags}{_table(view.table, 'no indexes')}</div>"
    )


def error_html(exc: BaseException, db_url: str | None = None) -> str:
    """An error shown in a panel: a damaged store as its one paragraph (what to do), else its type and text."""
    paragraph = monitor.store_failure(exc, db_url)
    if paragraph is not None:
        return f'<p class="ops-error">{_e(paragraph)}</p>'
    return f'<p class="ops-error">error: {_e(type(exc).__name__)}: {_e(exc)}</p>'


def render_evaluations(rows: list[monitor.EvaluationRow], base: monitor.ReportLinks | Path | None = None) -> str:
    if not rows:
        return '<p class="ops-note">no evaluations yet</p>'
    parts = [f'<div class="ops-panel">{_STYLE}']
    for r in rows:
        parts.append(
            f"<h4>evaluation {r.id} · run {r.run_id} {_badge(r.verdict)} · {_e(r.created)}</h4>"
            f"<p>candidate {_e(r.candidate)} vs baseline {_e(r.baseline)} on {_e(r.evaluation_dataset_ref)} "
            f"({r.sample_count} queries){' — ' + _e(r.fail_reason) if r.fail_reason else ''} · "
            f"{_link(r.report, 'evaluation report', base)}</p>{_table(r.metrics)}"
        )
    return "".join(parts) + "</div>"


def render_queue(view: monitor.QueueView) -> str:
    backlog = ", ".join(f"{_e(k)}: {v}" for k, v in sorted(view.backlog.items())) or "empty"
    return (
        f'<div class="ops-panel">{_STYLE}<p><b>backlog</b>: {backlog} · <b>oldest unacked</b>: '
        f"{_e(view.oldest_age)} · <b>redelivered, still unacked</b>: {view.redeliveries}</p>"
        f"<p><b>release driven by</b>: {_e(view.release_driver)}</p>"
        f"<h4>parked (poison: past their delivery cap, never redelivered)</h4>{_table(view.parked, 'no parked messages')}"
        f"<h4>refused</h4>{_table(view.refused, 'no refused messages')}"
        f"<h4>recent</h4>{_table(view.recent, 'no messages')}</div>"
    )


def render_endpoint(view: monitor.EndpointView) -> str:
    serving = ", ".join(f"{_e(role)}: {_e(version)}" for role, version in view.serving) or "—"
    return (
        f'<div class="ops-panel">{_STYLE}<p><b>needed by the release</b>: {serving}</p>'
        f'{_table(view.models, "no models registered")}<p class="ops-note">{_e(view.note)}</p></div>'
    )


def _figure_png(figure: Any) -> str:
    """A matplotlib figure as an inline <img> (offline: no file, no CDN)."""
    import base64
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="{_e(figure.axes[0].get_title() if figure.axes else "")}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"/>'


def render_serving(view: monitor.ServingView) -> str:
    from opslib.execution import display

    plot = ""
    if not view.like_rate.empty:
        plot = _figure_png(display.lines(view.like_rate, "like rate per day and serving model version", "like rate"))
    return (
        f'<div class="ops-panel">{_STYLE}<p><b>the release row serves</b>: {_e(view.active_model_version or "—")}</p>'
        f'{_table(view.endpoints, "no endpoint registered")}<p class="ops-note">{_e(view.note)}</p>'
        f"<h4>like rate per model version (last 7 days of feedback)</h4>"
        f"{plot or '<p>no feedback in the window</p>'}</div>"
    )


_AMBER = frozenset(
    {
        alerts.ProblemKind.ABANDONED,
        alerts.ProblemKind.OVERDUE,
        alerts.ProblemKind.LAGGING,
        alerts.ProblemKind.UNUSABLE,
        alerts.ProblemKind.PARKED,
    }
)


def render_problems(found: list[alerts.Problem]) -> str:
    """The problem list shown above the tabs: what ``opsbench status --check`` prints, one line each."""
    if not found:
        return (
            f'<div class="ops-panel">{_STYLE}<p style="color:{outcomes.TONE_COLOURS[outcomes.Tone.GOOD]}">'
            "<b>no problems</b> (the same check as <code>opsbench status --check</code>)</p></div>"
        )
    # Amber when all of them can wait for working hours (something is late, or a past incident
    # to read up on); red when something failed, hangs, or search is served wrong.
    tone = outcomes.Tone.WARN if all(p.kind in _AMBER for p in found) else outcomes.Tone.BAD
    colour = outcomes.TONE_COLOURS[tone]
    lines = "".join(f"<li>{_badge(p.kind.value)} {_e(p.subject)}: {_e(p.message)}</li>" for p in found)
    return (
        f'<div class="ops-panel ops-problems">{_STYLE}<div style="border:2px solid {colour};border-radius:6px;'
        f'padding:4px 10px;margin:4px 0"><b style="color:{colour}">{len(found)} problem(s)</b> '
        f'<span class="ops-note">(the same list as <code>opsbench status --check</code>; '
        f"docs/operator-guide.md#alerts)</span><ul style='margin:4px 0'>{lines}</ul></div></div>"
    )


def render_audit(frame: pd.DataFrame) -> str:
    return f'<div class="ops-panel">{_STYLE}{_table(frame, "no operator actions yet")}</div>'


def render_history_compare(
    runs: list[history.RunHistory], links: monitor.ReportLinks, pages: Path | None = None
) -> str:
    """Two (or any) runs side by side: the compare page's table, linked as the dashboard links."""
    if len(runs) < 2:
        return '<p class="ops-note">two runs are needed for a comparison</p>'
    table = history_pages.render_compare_table(runs, _linker(links), pages)
    return f'<div class="ops-history"><style>{history_pages.FRAGMENT_CSS}</style>{table}</div>'


def _linker(links: monitor.ReportLinks) -> history_pages.Linker:
    return lambda path: links.href(str(path)) if path is not None else None


def render_history_trend(trend: history.TrendView) -> str:
    return (
        f'<div class="ops-history"><style>{history_pages.FRAGMENT_CSS}</style>{history_pages.render_trend(trend)}</div>'
    )


def render_history_lineage(run: history.RunHistory | None, links: monitor.ReportLinks) -> str:
    if run is None:
        return '<p class="ops-note">no runs yet</p>'
    return (
        f'<div class="ops-history"><style>{history_pages.FRAGMENT_CSS}</style>'
        f"{history_pages.render_lineage(run, _linker(links))}</div>"
    )


def _show(out: w.Output, markup: str) -> None:
    """Replace an Output's content with HTML (works with and without a kernel, from any thread)."""
    out.outputs = (
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {"text/html": markup, "text/plain": html.unescape(markup[:200])},
        },
    )


def shown_html(out: w.Output) -> str:
    """What an Output currently shows (HTML), for tests and the browser check."""
    return "".join(o.get("data", {}).get("text/html", "") for o in out.outputs)


# Actions -----------------------------------------------------------------------------------------
class ActionForm:
    """One guarded action: preview, reason, typed confirmation, button, result."""

    def __init__(
        self,
        dashboard: Dashboard,
        title: str,
        button: str,
        preview: Callable[[], actions.Preview],
        perform: Callable[[str, str], actions.ActionResult],
        extra: list[w.Widget] | None = None,
    ) -> None:
        self.dashboard, self.preview_fn, self.perform_fn = dashboard, preview, perform
        self.title = w.HTML(f"<h4>{html.escape(title)}</h4>")
        self.preview = w.Output()
        self.reason = w.Text(
            description="reason", placeholder="why (goes into the audit log)", layout=w.Layout(width="60%")
        )
        self.confirm = w.Text(description="confirm", layout=w.Layout(width="60%"))
        self.button = w.Button(description=button, button_style="warning")
        self.result = w.Output()
        self.busy = threading.Lock()
        self.button.on_click(self._clicked)
        self.box = w.VBox(
            [self.title, *(extra or []), self.preview, self.reason, self.confirm, self.button, self.result]
        )

    def refresh(self) -> None:
        preview = self.preview_fn()
        settings = self.dashboard.ws.settings
        if preview.possible:
            markup = f"<p>{_e(preview.summary)}</p>"
            self.confirm.placeholder = f"type {preview.target}"
        else:
            markup = f'<p class="ops-note">not possible now: {_e(preview.blocker)}</p>'
            self.confirm.placeholder = "—"
        if settings.operator_role != actions.ADMIN_ROLE:
            markup += (
                f'<p class="ops-warn">your role is {_e(settings.operator_role)}: only '
                f"{actions.ADMIN_ROLE} may do this — an attempt is refused and recorded in the audit log</p>"
            )
        _show(self.preview, markup)
        if not self.busy.locked():  # an action in flight keeps its button disabled
            self.button.disabled = not preview.possible
            self.button.button_style = "warning" if settings.operator_role == actions.ADMIN_ROLE else ""

    def _clicked(self, _button: Any = None) -> None:
        if not self.busy.acquire(blocking=False):
            return  # a second click while the first is in flight does nothing
        self.button.disabled = True
        _show(self.result, '<p class="ops-note">working…</p>')
        self.dashboard.in_background(self._perform)

    def _perform(self) -> None:
        try:
            result = self.perform_fn(self.confirm.value, self.reason.value)
            _show(
                self.result,
                f"<p><b>done</b>: {_e(result.result)} (audit {result.audit_id}, trace {_e(result.trace_id)})</p>",
            )
            self.confirm.value = ""
        except Refused as refused:  # a guard said no (ActionRefused is audited): not an error
            _show(self.result, f'<p class="ops-refused">refused: {_e(refused)}</p>')
        except Exception as exc:  # shown, not swallowed by ipywidgets
            log.exception("dashboard action failed")
            _show(self.result, error_html(exc, self.dashboard._db_url()))
        finally:
            self.button.disabled = False
            self.busy.release()
            self.dashboard.refresh(background=False)


class Dashboard:
    PANELS = (
        "Runs",
        "Release",
        "Datasets",
        "Evaluations",
        "History",
        "Queue",
        "Serving",
        "Embedding endpoint",
        "Audit",
        "Actions",
    )
    promote: ActionForm  # set in __init__ after the run chooser whose callback refreshes it
    propose: ActionForm  # likewise, after the source and version fields

    def __init__(self, ws: Workspace, *, background: bool = True, link_base: Path | None = None) -> None:
        self.ws = ws
        self.background = background
        self.link_base = link_base
        self.links = monitor.ReportLinks.for_workspace(ws, link_base)
        self._threads: list[threading.Thread] = []
        self._refreshing = threading.Lock()
        self.outputs = {name: w.Output() for name in self.PANELS if name != "Actions"}
        # An Output, not an HTML widget: without the opslib server extension the links are relative
        # paths, and JupyterLab opens those of an output itself.
        self.header = w.Output()
        self.problems = w.Output()  # what needs an operator, above the tabs (opslib.ops.alerts)
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.check_button = w.Button(description="Check readiness")
        self.check_button.on_click(lambda _b: self.in_background(self._check_endpoint))
        self.check_result = w.Output()
        self.run_choice = w.Dropdown(description="run", options=[])
        self.run_choice.observe(lambda _c: self.promote.refresh(), names="value")
        self.window_days = w.BoundedIntText(
            value=ws.settings.dataset_source_window_days,
            min=1,
            max=365,
            description="window (days)",
            style={"description_width": "initial"},
        )
        self.training = ActionForm(
            self,
            "Retrigger training",
            "Request training",
            lambda: actions.preview_training(ws),
            lambda confirm, reason: actions.retrigger_training(ws, confirm=confirm, reason=reason),
        )
        self.dataset = ActionForm(
            self,
            "Generate a dataset now",
            "Generate dataset",
            lambda: actions.preview_dataset(ws, self.window_days.value),
            lambda confirm, reason: actions.generate_dataset(
                ws, confirm=confirm, reason=reason, source_window_days=self.window_days.value
            ),
            extra=[self.window_days],
        )
        self.rollback = ActionForm(
            self,
            "Request rollback",
            "Request rollback",
            lambda: actions.preview_rollback(ws),
            lambda confirm, reason: actions.request_rollback(ws, confirm=confirm, reason=reason),
        )
        self.promote = ActionForm(
            self,
            "Promote a READY_FOR_RELEASE run (automatic cutover off)",
            "Promote",
            self._preview_promote,
            lambda confirm, reason: actions.promote_run(ws, self._chosen_run(), confirm=confirm, reason=reason),
            extra=[self.run_choice],
        )
        self.model_source = w.Text(
            description="source",
            placeholder="a sentence-transformers folder or an fsspec URL of one",
            layout=w.Layout(width="60%"),
        )
        self.model_version = w.Text(
            description="version", placeholder="the version to register it as", layout=w.Layout(width="60%")
        )
        for field in (self.model_source, self.model_version):
            field.observe(lambda _c: self.propose.refresh(), names="value")
        self.propose = ActionForm(
            self,
            "Bring your own model (evaluated like a fine-tune; released on a PASS)",
            "Propose model",
            lambda: actions.preview_propose_model(ws, self.model_source.value, self.model_version.value),
            lambda confirm, reason: actions.propose_model(
                ws, self.model_source.value, self.model_version.value, confirm=confirm, reason=reason
            ),
            extra=[self.model_source, self.model_version],
        )
        self.forms = [self.training, self.dataset, self.rollback, self.promote, self.propose]
        # History: runs collected on refresh; choosing a run re-renders from them (no DB read).
        self._histories: dict[int, history.RunHistory] = {}
        self.compare_a = w.Dropdown(description="run", options=[])
        self.compare_b = w.Dropdown(description="with run", options=[])
        self.lineage_choice = w.Dropdown(description="lineage of", options=[], style={"description_width": "initial"})
        self.compare_out, self.lineage_out = w.Output(), w.Output()
        for choice in (self.compare_a, self.compare_b):
            choice.observe(lambda _c: self._show_compare(), names="value")
        self.lineage_choice.observe(lambda _c: self._show_lineage(), names="value")
        children = [self.outputs[name] for name in self.PANELS if name != "Actions"]
        children[self.PANELS.index("Embedding endpoint")] = w.VBox(
            [self.outputs["Embedding endpoint"], self.check_button, self.check_result]
        )
        children[self.PANELS.index("History")] = w.VBox(
            [
                w.HTML("<h4>compare two runs</h4>"),
                w.HBox([self.compare_a, self.compare_b]),
                self.compare_out,
                w.HTML("<h4>metric trend across evaluations and releases</h4>"),
                self.outputs["History"],
                w.HTML("<h4>lineage of a run</h4>"),
                self.lineage_choice,
                self.lineage_out,
            ]
        )
        children.append(w.VBox([f.box for f in self.forms]))
        self.tabs = w.Tab(children=children)
        for i, name in enumerate(self.PANELS):
            self.tabs.set_title(i, name)
        self.widget = w.VBox([w.HBox([self.refresh_button, self.header]), self.problems, self.tabs])

    # Background work ---------------------------------------------------------------------------
    def in_background(self, work: Callable[[], None]) -> None:
        if not self.background:
            work()
            return
        thread = threading.Thread(target=work, name="ops-dashboard", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def wait(self, timeout: float = 600.0) -> None:
        """Join every background job (tests; the browser check)."""
        for thread in list(self._threads):
            thread.join(timeout)

    # Refresh -----------------------------------------------------------------------------------
    def refresh(self, *, background: bool | None = None) -> None:
        if background if background is not None else self.background:
            self.in_background(self._refresh)
        else:
            self._refresh()

    def _refresh(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # one refresh at a time; the running one shows the latest state
        try:
            self.refresh_button.disabled = True
            settings = self.ws.settings
            _show(
                self.header,
                f"<span class='ops-note'>operator <b>{_e(settings.operator)}</b> (role "
                f"<b>{_e(settings.operator_role)}</b>) · Metadata DB "
                f"{_e(self.ws.db.engine.url.render_as_string(hide_password=True))} · "
                f"{_link(str(settings.runs_dir / 'index.html'), 'run index (all reports)', self.links)}"
                "</span>",
            )
            try:
                _show(self.problems, render_problems(alerts.problems(self.ws)))
            except Exception as exc:  # the panels below still show
                if monitor.store_failure(exc) is None:
                    log.exception("dashboard problem list failed")
                _show(self.problems, error_html(exc, self._db_url()))
            renderers: dict[str, Callable[[], str]] = {
                "Runs": lambda: render_runs(monitor.runs_view(self.ws), self.links),
                "Release": lambda: (
                    render_release(monitor.release_view(self.ws)) + render_indexes(monitor.indexes_view(self.ws))
                ),
                "Datasets": lambda: render_datasets(monitor.datasets_view(self.ws)),
                "Evaluations": lambda: render_evaluations(monitor.evaluations_view(self.ws), self.links),
                "History": self._refresh_history,
                "Queue": lambda: render_queue(monitor.queue_view(self.ws)),
                "Serving": lambda: render_serving(monitor.serving_view(self.ws)),
                "Embedding endpoint": lambda: render_endpoint(monitor.endpoint_view(self.ws)),
                "Audit": lambda: render_audit(monitor.audit_frame(self.ws)),
            }
            for name, render in renderers.items():
                try:
                    _show(self.outputs[name], render())
                except Exception as exc:  # one broken panel must not hide the others
                    if monitor.store_failure(exc) is None:
                        log.exception("dashboard panel failed", extra={"panel": name})
                        _show(
                            self.outputs[name],
                            f'<p class="ops-error">{_e(name)}: {_e(type(exc).__name__)}: {_e(exc)}</p>',
                        )
                    else:  # a damaged store: the paragraph that says what to do, not a traceback
                        log.error("dashboard panel failed: a damaged store", extra={"panel": name, "error": str(exc)})
                        _show(self.outputs[name], error_html(exc, self._db_url()))
            try:
                runs = actions.promotable_runs(self.ws)
            except Exception as exc:  # shown in the panels above; the run chooser stays as it was
                if monitor.store_failure(exc) is None:
                    raise
                runs = []
            self.run_choice.options = [(f"run {r}", r) for r in runs]
            if runs and self.run_choice.value is None:  # options given to an empty Dropdown select nothing
                self.run_choice.value = runs[0]  # the newest: else the form says no run waits
            for form in self.forms:
                try:
                    form.refresh()
                except Exception as exc:
                    _show(form.preview, error_html(exc, self._db_url()))
        finally:
            self.refresh_button.disabled = False
            self._refreshing.release()

    # History -----------------------------------------------------------------------------------
    def _refresh_history(self) -> str:
        """Re-collect the runs, keep the chosen ones if they still exist (else the newest two),
        show their comparison and lineage; returns the trend panel."""
        runs = history.collect_run_histories(self.ws)
        self._histories = {r.run_id: r for r in runs}
        options = [(f"run {r.run_id} · {r.outcome} · {r.created_at:%Y-%m-%d %H:%M}", r.run_id) for r in runs]
        ids = [r.run_id for r in runs]
        picks = [
            (self.compare_a, ids[1] if len(ids) > 1 else None),
            (self.compare_b, ids[0] if ids else None),
            (self.lineage_choice, ids[0] if ids else None),
        ]
        for choice, default in picks:
            kept = choice.value if choice.value in self._histories else default
            choice.options = options
            choice.value = kept
        self._show_compare()
        self._show_lineage()
        return render_history_trend(history.collect_trend(self.ws))

    def _show_compare(self) -> None:
        chosen = [self._histories.get(c.value) for c in (self.compare_a, self.compare_b) if c.value is not None]
        runs = [r for r in chosen if r is not None]
        _show(self.compare_out, render_history_compare(runs, self.links, self._history_pages()))

    def _show_lineage(self) -> None:
        value = self.lineage_choice.value
        _show(self.lineage_out, render_history_lineage(self._histories.get(value), self.links))

    def _history_pages(self) -> Path:
        return self.ws.settings.runs_dir / history.HISTORY_DIR

    # Helpers -----------------------------------------------------------------------------------
    def _db_url(self) -> str:
        return self.ws.db.engine.url.render_as_string(hide_password=True)

    def _chosen_run(self) -> int:
        if self.run_choice.value is None:
            raise actions.ActionRefused("no READY_FOR_RELEASE run to promote")
        return int(self.run_choice.value)

    def _preview_promote(self) -> actions.Preview:
        if self.run_choice.value is None:
            return actions.Preview(
                actions.Action.PROMOTE_RUN,
                None,
                "—",
                "no READY_FOR_RELEASE run waits for a promote (with automatic cutover on, "
                "the worker releases passing runs itself)",
            )
        return actions.preview_promote(self.ws, int(self.run_choice.value))

    def _check_endpoint(self) -> None:
        _show(self.check_result, '<p class="ops-note">loading and smoke-encoding…</p>')
        try:
            results = monitor.check_endpoint(self.ws)
            rows = "".join(
                f"<li>{_e(v)}: {'ready' if ok else 'NOT ready'} — {_e(detail)}</li>" for v, ok, detail in results
            )
            _show(self.check_result, f"<ul>{rows}</ul>")
        except Exception as exc:
            _show(self.check_result, f'<p class="ops-error">{_e(type(exc).__name__)}: {_e(exc)}</p>')
        self.refresh(background=False)


def open_dashboard(workspace: str | Path | Workspace | None = None, *, background: bool = True) -> Dashboard:
    """Build and refresh the dashboard of a workspace (default: the ``OPS_*`` settings); the
    notebook displays ``.widget``."""
    if isinstance(workspace, Workspace):
        ws = workspace
    else:
        ws = Workspace(Settings(workspace=Path(workspace)) if workspace else Settings())
    dashboard = Dashboard(ws, background=background)
    dashboard.refresh()
    return dashboard
