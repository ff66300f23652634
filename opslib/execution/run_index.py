"""The run index for reviewers: a static ``runs/index.html`` listing every stage execution.

One row per ``StageExecution`` (newest first): started time, stage, run, status, headline
metrics and a verdict, with a relative link to the archived HTML report. Everything shown is
read from the Metadata DB (the SOT) — never from the notebooks — so the index and the DB always
agree. The page is self-contained (inline CSS, no scripts, no fonts or images from elsewhere)
so it reads offline and from a copied ``runs/`` folder; it is written to a temporary file and
moved into place, so a reader never sees half a page. The history pages (``runs/history/``:
runs compared, the metric trend, each run's lineage — ``opslib.execution.history_pages``) are
rebuilt with it; its header links them and each run id opens that run's lineage.

How each stage's row is filled (see ``docs/architecture.md`` § Run index):

- ``10_feedback_health``: OK / WARN and the window's numbers (events, rejected lines, unreadable
  lines, duplicate rate) the notebook recorded in the execution's ``outputs``, with every
  threshold crossed.
- ``20_build_dataset``: the dataset version the notebook recorded in the execution's
  ``outputs``. Executions from before that column (migration 0006) are tied by their parameters
  and time (same source window; with no ``as_of``, a window ending while the execution ran); if
  that does not pick exactly one dataset, the row says so instead of guessing.
- ``30_train_candidate``: the run's candidate version and whether its ``ModelVersion`` exists.
- ``40_evaluate_candidate``: the run's ``ModelEvaluation`` for the execution's evaluation set:
  PASS / FAIL and candidate vs baseline ``recall_at_5``, ``mrr_at_5``, ``ndcg_at_5``.
- ``50`` / ``60`` / ``70``: the ``ReleaseEvent`` rows written while the execution ran under its
  trace (or its run's / rollback message's trace).
- Any failed execution's verdict is ``ERROR`` (a system error, distinct from a quality ``FAIL``),
  or ``REFUSED`` when it failed with a ``Refused`` (a guard said no; ``opslib.errors``).
- An execution whose process died is ``ABANDONED`` (the reconciler ended it; the row says since
  when nothing was heard); a RUNNING one without a heartbeat for ``run_stall_after_s`` shows
  ``STALLED`` until the reconciler (scheduler or worker pass) ends it.
"""

from __future__ import annotations

import html
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import select

from opslib.control.outcomes import RELEASE_EVENT_VERDICTS, TONE_COLOURS, Verdict, released_run_ids, run_outcome, tone
from opslib.control.release import current_release
from opslib.control.runs import is_stalled
from opslib.db.models import (
    ExecutionStatus,
    MLPipelineRun,
    ModelEvaluation,
    ModelVersion,
    OpsMessage,
    ReleaseEvent,
    StageExecution,
    TrainingDataset,
    utcnow,
)
from opslib.errors import Refused, recorded_as
from opslib.execution import history, history_pages
from opslib.execution.registry import parse_instant
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)
INDEX_NAME = "index.html"
EVAL_METRICS = (("recall_at_5", "recall@5"), ("mrr_at_5", "MRR@5"), ("ndcg_at_5", "nDCG@5"))
_SLACK = timedelta(seconds=1)  # clock rounding between a row's timestamps and the execution's


@dataclass(frozen=True)
class IndexRow:
    """One stage execution as the index shows it (plain text; escaped when rendered)."""

    execution_id: int
    stage: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    run_id: int | None
    run_outcome: str | None  # opslib.control.outcomes.RunOutcome
    verdict: str  # PASS, FAIL, ERROR, ELIGIBLE, …, or "—" when the stage has no verdict
    headline: list[str] = field(default_factory=list)
    # Evaluation table: (metric, baseline, candidate, delta), already formatted.
    metrics: list[tuple[str, str, str, str]] = field(default_factory=list)
    report_href: str | None = None  # relative to runs_dir
    notebook_href: str | None = None
    trace_id: str = ""


@dataclass(frozen=True)
class IndexSummary:
    generated_at: datetime
    total: int
    by_status: dict[str, int]
    by_verdict: dict[str, int]
    release_status: str | None
    active_model_version: str | None
    active_index_name: str | None
    previous_model_version: str | None
    switched_at: datetime | None


# Reading the Metadata DB ------------------------------------------------------------------
@dataclass
class _Facts:
    runs: dict[int, MLPipelineRun]
    evaluations: dict[int, list[ModelEvaluation]]
    datasets: list[TrainingDataset]
    model_versions: set[str]
    delivered_versions: set[str]  # of model_versions: delivered by an operator, not trained
    events: list[ReleaseEvent]
    message_traces: dict[int, str]
    released: set[int]


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _num(value: Any, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


_Moment = TypeVar("_Moment", datetime, timedelta)  # two instants, or two durations


def _close(a: _Moment, b: _Moment) -> bool:
    return abs(a - b) <= _SLACK


def _link(path_text: str | None, runs_dir: Path) -> str | None:
    """A relative URL from ``runs_dir/index.html`` to an existing archived file, else None.

    The DB stores absolute paths; if ``runs/`` was moved or copied, the same
    ``<YYYYMMDD>/<file>`` under the current ``runs_dir`` is used instead.
    """
    if not path_text:
        return None
    path = Path(path_text)
    if not path.is_file():
        moved = runs_dir / path.parent.name / path.name
        if not moved.is_file():
            return None
        path = moved
    try:
        relative = os.path.relpath(path.resolve(), runs_dir.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return path.resolve().as_uri()
    return quote(Path(relative).as_posix(), safe="/")


def _error_line(error: dict[str, Any] | None) -> str:
    if not isinstance(error, dict):
        return "failed (no error recorded)"
    evalue = str(error.get("evalue") or "")
    if len(evalue) > 240:
        evalue = evalue[:240] + "…"
    return f"failed at cell {error.get('cell_index', '?')}: {error.get('ename', '?')}: {evalue}"


def _param_int(parameters: dict[str, Any], name: str) -> int | None:
    value = parameters.get(name) if isinstance(parameters, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dataset_rows(ex: StageExecution, facts: _Facts, until: datetime) -> tuple[str, list[str]]:
    """Tie a 20_build_dataset execution to the dataset it built: by the version it recorded,
    else (executions from before migration 0006) by its window and time, as far as that goes."""
    outputs = ex.outputs if isinstance(ex.outputs, dict) else {}
    recorded = outputs.get("dataset_version")
    if isinstance(recorded, str):
        found = [d for d in facts.datasets if d.dataset_version == recorded]
        if not found:
            return "—", [f"dataset {recorded} recorded by this execution is not in the Metadata DB"]
        created = outputs.get("dataset_created")
        built = None if not isinstance(created, bool) else "built" if created else "already existed (same content)"
        return _dataset_lines(found[0], built)
    params = ex.parameters if isinstance(ex.parameters, dict) else {}
    days = _param_int(params, "source_window_days") or 30
    as_of = params.get("as_of")
    if as_of is not None:
        try:
            end = parse_instant(str(as_of))
        except ValueError:
            return "—", [f"as_of {as_of!s}: not a date; no dataset can be tied"]
        matches = [
            d
            for d in facts.datasets
            if _close(d.source_window_end, end) and _close(d.source_window_start, end - timedelta(days=days))
        ]
    else:  # the window ended "now", i.e. while the execution ran
        matches = [
            d
            for d in facts.datasets
            if ex.started_at - _SLACK <= d.source_window_end <= until + _SLACK
            and _close(d.source_window_end - d.source_window_start, timedelta(days=days))
        ]
    if len(matches) > 1:  # prefer the one created while this execution ran
        during = [d for d in matches if ex.started_at - _SLACK <= d.created_at <= until + _SLACK]
        matches = during if len(during) == 1 else matches
    if not matches:
        return "—", [f"no dataset recorded for this {days}-day window"]
    if len(matches) > 1:
        versions = ", ".join(sorted(d.dataset_version for d in matches))
        return "—", [f"{len(matches)} datasets share this window (the seed is not in the DB): {versions}"]
    dataset = matches[0]
    return _dataset_lines(
        dataset, "built" if dataset.created_at >= ex.started_at - _SLACK else "already existed (same content)"
    )


def _dataset_lines(dataset: TrainingDataset, built: str | None) -> tuple[str, list[str]]:
    counts = dataset.counts if isinstance(dataset.counts, dict) else {}
    lines = [
        f"dataset {dataset.dataset_version}" + (f" ({built})" if built else ""),
        f"groups {counts.get('trainable_groups', '?')}, positives {counts.get('positives', '?')}, "
        f"negatives {counts.get('negatives', '?')}",
        f"window {_fmt_time(dataset.source_window_start)} → {_fmt_time(dataset.source_window_end)}",
    ]
    reasons = dataset.ineligible_reasons if isinstance(dataset.ineligible_reasons, list) else []
    if not dataset.eligible and reasons:
        lines.append("not eligible: " + "; ".join(str(r) for r in reasons))
    return (Verdict.ELIGIBLE if dataset.eligible else Verdict.INELIGIBLE), lines


def _evaluation_rows(
    ex: StageExecution, run_id: int | None, facts: _Facts, until: datetime
) -> tuple[str, list[str], list[tuple[str, str, str, str]]]:
    ref = ex.parameters.get("evaluation_dataset_ref") if isinstance(ex.parameters, dict) else None
    candidates = [
        e
        for e in facts.evaluations.get(run_id or -1, [])
        if (ref is None or e.evaluation_dataset_ref == ref) and e.created_at <= until + _SLACK
    ]
    if not candidates:
        return "—", ["no evaluation recorded" + (f" for {ref}" if ref else "")], []
    evaluation = max(candidates, key=lambda e: (e.created_at, e.id))
    quality = evaluation.quality_metrics if isinstance(evaluation.quality_metrics, dict) else {}
    parts: dict[str, Any] = {  # each a dict (non-dicts read as {})
        k: quality.get(k) if isinstance(quality.get(k), dict) else {} for k in ("baseline", "candidate", "delta")
    }
    metrics = []
    for key, label in EVAL_METRICS:
        base, cand = parts["baseline"].get(key), parts["candidate"].get(key)
        delta = parts["delta"].get(key)
        if delta is None and isinstance(base, (int, float)) and isinstance(cand, (int, float)):
            delta = cand - base
        metrics.append((label, _num(base), _num(cand), _num(delta, signed=True)))
    lines = [
        f"evaluation #{evaluation.id}: {evaluation.candidate_model_version} vs {evaluation.baseline_model_version}",
        f"{evaluation.sample_count} queries of {evaluation.evaluation_dataset_ref}",
    ]
    if evaluation.fail_reason:
        lines.append(f"below criteria: {evaluation.fail_reason}")
    decision = getattr(evaluation.overall_decision, "value", str(evaluation.overall_decision))
    return decision, lines, metrics


def _training_rows(run: MLPipelineRun | None, facts: _Facts) -> tuple[str, list[str]]:
    if run is None:
        return "—", ["run not found"]
    candidate = run.candidate_model_version
    if not candidate:
        return "—", ["the run has no candidate version"]
    if candidate in facts.delivered_versions:
        return Verdict.DELIVERED, [
            f"candidate {candidate} (delivered by an operator, not trained)",
            f"baseline {run.baseline_model_version or '—'}, no dataset",
        ]
    trained = candidate in facts.model_versions
    lines = [
        f"candidate {candidate}" + ("" if trained else " (not trained)"),
        f"baseline {run.baseline_model_version or '—'}, dataset {run.dataset_version or '—'}",
    ]
    return (Verdict.TRAINED if trained else "—"), lines


def _release_rows(
    ex: StageExecution, run: MLPipelineRun | None, facts: _Facts, until: datetime
) -> tuple[str, list[str]]:
    traces = {ex.trace_id}
    if run is not None:
        traces.add(run.trace_id)
    message_id = _param_int(ex.parameters, "message_id")
    if message_id is not None and message_id in facts.message_traces:
        traces.add(facts.message_traces[message_id])
    events = [e for e in facts.events if e.trace_id in traces and ex.started_at - _SLACK <= e.at <= until + _SLACK]
    lines = []
    for event in events:
        after = event.after if isinstance(event.after, dict) else {}
        text = f"{event.kind}: active {after.get('active_model_version', '?')}"
        if after.get("candidate_model_version"):
            text += f", candidate {after['candidate_model_version']}"
        lines.append(text)
    if not events:
        lines.append("no release transition")
    if run is not None:
        lines.append(
            f"run {run.id} now {run_outcome(run, released=run.id in facts.released).value}"
            + (
                f" ({run.failed_stage.value if run.failed_stage else '?'}, "
                f"{run.failure_type.value if run.failure_type else '?'})"
                if run.failed_stage
                else ""
            )
        )
    verdict = str(RELEASE_EVENT_VERDICTS.get(events[-1].kind, events[-1].kind)) if events else Verdict.NO_CHANGE
    return verdict, lines


def _health_rows(ex: StageExecution) -> tuple[str, list[str]]:
    """10_feedback_health: the OK / WARN and the numbers the notebook recorded in ``outputs``
    (executions from before it recorded them show the window only)."""
    days = _param_int(ex.parameters, "window_days")
    window = f"window {days if days is not None else '?'} days"
    outputs = ex.outputs if isinstance(ex.outputs, dict) else {}
    verdict = outputs.get("health_verdict")
    if verdict not in (Verdict.OK, Verdict.WARN):
        return "—", [f"{window} (volume, rejects, rating mix in the report)"]
    numbers = {k: outputs.get(k) for k in ("events", "rejected_lines", "unreadable_lines")}
    shares = {k: outputs.get(k) for k in ("rejected_share", "duplicate_rate")}
    shown = {
        **{k: v if isinstance(v, int) else "?" for k, v in numbers.items()},
        **{k: f"{v:.1%}" if isinstance(v, (int, float)) else "?" for k, v in shares.items()},
    }
    lines = [
        f"{window}: {shown['events']} events, {shown['rejected_lines']} rejected lines ({shown['rejected_share']}), "
        f"{shown['unreadable_lines']} unreadable, duplicate rate {shown['duplicate_rate']}"
    ]
    reasons = outputs.get("health_reasons")
    lines += [f"WARN: {r}" for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else []
    return str(verdict), lines


def _stalled_line(ex: StageExecution, now: datetime, stall_after_s: float) -> str | None:
    """For a RUNNING execution whose process has not beaten for ``stall_after_s``: what is known."""
    last = ex.heartbeat_at or ex.started_at
    if ex.status is not ExecutionStatus.RUNNING or now - last <= timedelta(seconds=stall_after_s):
        return None
    return f"no heartbeat since {_fmt_time(last)}: its process looks dead (the next reconcile marks it ABANDONED)"


def _outcome_of(run: MLPipelineRun | None, facts: _Facts, now: datetime, stall_after_s: float) -> str | None:
    if run is None:
        return None
    stalled = is_stalled(run, stall_after_s, now)
    return run_outcome(run, released=run.id in facts.released, stalled=stalled).value


def _row(ex: StageExecution, facts: _Facts, runs_dir: Path, now: datetime, stall_after_s: float) -> IndexRow:
    until = ex.finished_at or now
    run_id = ex.run_id if ex.run_id is not None else _param_int(ex.parameters, "run_id")
    run = facts.runs.get(run_id) if run_id is not None else None
    status = getattr(ex.status, "value", str(ex.status))
    verdict = "—"
    lines: list[str] = []
    metrics: list[tuple[str, str, str, str]] = []
    if ex.stage == "20_build_dataset":
        verdict, lines = _dataset_rows(ex, facts, until)
    elif ex.stage == "30_train_candidate":
        verdict, lines = _training_rows(run, facts)
    elif ex.stage == "40_evaluate_candidate":
        verdict, lines, metrics = _evaluation_rows(ex, run_id, facts, until)
    elif ex.stage in ("50_reindex_candidate", "60_cutover", "70_rollback"):
        verdict, lines = _release_rows(ex, run, facts, until)
    elif ex.stage == "10_feedback_health":
        verdict, lines = _health_rows(ex)
    if ex.status is ExecutionStatus.FAILED:
        verdict = Verdict.REFUSED if recorded_as(ex.error, Refused) else Verdict.ERROR
        lines = [_error_line(ex.error), *lines]
    elif ex.status is ExecutionStatus.ABANDONED:
        verdict = Verdict.ABANDONED
        evalue = ex.error.get("evalue") if isinstance(ex.error, dict) else None
        lines = [f"abandoned: {evalue or 'its process died'}", *lines]
    elif ex.status is ExecutionStatus.RUNNING:
        stalled = _stalled_line(ex, now, stall_after_s)
        verdict = Verdict.STALLED if stalled else Verdict.RUNNING
        lines = [stalled, *lines] if stalled else lines
    return IndexRow(
        execution_id=ex.id,
        stage=ex.stage,
        status=status,
        started_at=ex.started_at,
        finished_at=ex.finished_at,
        run_id=run_id,
        run_outcome=_outcome_of(run, facts, now, stall_after_s),
        verdict=verdict,
        headline=lines,
        metrics=metrics,
        report_href=_link(ex.output_html, runs_dir),
        notebook_href=_link(ex.output_ipynb, runs_dir),
        trace_id=ex.trace_id,
    )


def collect_run_index(ws: Workspace, now: datetime | None = None) -> tuple[list[IndexRow], IndexSummary]:
    """Every stage execution as an ``IndexRow`` (newest first) and the page's summary."""
    now = now or utcnow()
    runs_dir = ws.settings.runs_dir
    with ws.db.read() as session:
        executions = list(
            session.scalars(select(StageExecution).order_by(StageExecution.started_at.desc(), StageExecution.id.desc()))
        )
        evaluations: dict[int, list[ModelEvaluation]] = defaultdict(list)
        for evaluation in session.scalars(select(ModelEvaluation).where(ModelEvaluation.run_id.is_not(None))):
            evaluations[evaluation.run_id].append(evaluation)  # type: ignore[index]
        message_ids = {
            m
            for ex in executions
            if ex.stage == "70_rollback"
            if (m := _param_int(ex.parameters, "message_id")) is not None
        }
        facts = _Facts(
            runs={r.id: r for r in session.scalars(select(MLPipelineRun))},
            evaluations=evaluations,
            datasets=list(session.scalars(select(TrainingDataset))),
            model_versions=set(session.scalars(select(ModelVersion.model_version))),
            delivered_versions=set(
                session.scalars(select(ModelVersion.model_version).where(ModelVersion.source.is_not(None)))
            ),
            events=list(session.scalars(select(ReleaseEvent).order_by(ReleaseEvent.id))),
            message_traces=dict(
                session.execute(select(OpsMessage.id, OpsMessage.trace_id).where(OpsMessage.id.in_(message_ids)))
                .tuples()
                .all()
            )
            if message_ids
            else {},
            released=released_run_ids(session),
        )
        release = current_release(session)
        stall_after_s = ws.settings.run_stall_after_s
        rows = [_row(ex, facts, runs_dir, now, stall_after_s) for ex in executions]
    summary = IndexSummary(
        generated_at=now,
        total=len(rows),
        by_status=dict(Counter(r.status for r in rows)),
        by_verdict=dict(Counter(r.verdict for r in rows if r.verdict != "—")),
        release_status=release.release_status.value if release else None,
        active_model_version=release.active_model_version if release else None,
        active_index_name=release.active_index_name if release else None,
        previous_model_version=release.previous_model_version if release else None,
        switched_at=release.switched_at if release else None,
    )
    return rows, summary


# Rendering --------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:0 0 4px}
p.sub{color:#555;margin:0 0 16px}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:4px 16px;margin:0 0 20px;
 padding:12px 16px;background:#f5f7fa;border:1px solid #dde3ea;border-radius:6px}
dl.summary dt{font-weight:600}dl.summary dd{margin:0}
table.runs{border-collapse:collapse;width:100%;font-size:0.92em}
table.runs th,table.runs td{border-bottom:1px solid #e3e3e3;padding:6px 8px;text-align:left;vertical-align:top}
table.runs th{background:#f0f2f5;position:sticky;top:0}
table.m{border-collapse:collapse;margin-top:4px;font-variant-numeric:tabular-nums}
table.m th,table.m td{border:1px solid #e3e3e3;padding:2px 6px;text-align:right}
table.m td:first-child,table.m th:first-child{text-align:left}
.v{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-weight:600;white-space:nowrap}
.s-FAILED{color:#7a1fa2;font-weight:600}.s-RUNNING{color:#1f4e8c;font-weight:600}
.s-ABANDONED{color:#5d4037;font-weight:600}
.missing{color:#b3261e}.muted{color:#777}
code{font-size:0.95em}
"""


_CSS += "".join(f".v-{t.value}{{background:{c}}}" for t, c in TONE_COLOURS.items())


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _verdict_class(verdict: str) -> str:
    return f"v-{tone(verdict).value}"


def _render_row(row: IndexRow) -> str:
    run = (
        "—"
        if row.run_id is None
        # A run that exists (it has an outcome) has a lineage page under history/.
        else (
            f'<a href="{history.HISTORY_DIR}/run-{row.run_id}.html">{row.run_id}</a>'
            if row.run_outcome
            else f"{row.run_id}"
        )
        + (
            f'<br><span class="v {_verdict_class(row.run_outcome)}">{_e(row.run_outcome)}</span>'
            if row.run_outcome
            else ""
        )
    )
    headline = "<br>".join(_e(line) for line in row.headline) or '<span class="muted">—</span>'
    if row.metrics:
        cells = "".join(
            f"<tr><td>{_e(m)}</td><td>{_e(b)}</td><td>{_e(c)}</td><td>{_e(d)}</td></tr>" for m, b, c, d in row.metrics
        )
        headline += (
            f'<table class="m"><tr><th>metric</th><th>baseline</th><th>candidate</th><th>Δ</th></tr>{cells}</table>'
        )
    if row.report_href:
        report = f'<a href="{_e(row.report_href)}">report</a>'
    elif row.status == "RUNNING":
        report = '<span class="muted">running…</span>'
    elif row.status == "ABANDONED":
        report = '<span class="muted">no report: its process died before rendering one</span>'
    else:
        report = '<span class="missing">HTML report missing</span>'
    if row.notebook_href:
        report += f'<br><a class="muted" href="{_e(row.notebook_href)}">notebook (.ipynb)</a>'
    verdict = (
        f'<span class="v {_verdict_class(row.verdict)}">{_e(row.verdict)}</span>'
        if row.verdict != "—"
        else '<span class="muted">—</span>'
    )
    return (
        f'<tr id="execution-{row.execution_id}">'
        f'<td>{_e(_fmt_time(row.started_at))}<br><span class="muted">#{row.execution_id}</span></td>'
        f"<td>{_e(row.stage)}</td><td>{run}</td>"
        f'<td class="s-{_e(row.status)}">{_e(row.status)}</td>'
        f"<td>{headline}</td><td>{verdict}</td><td>{report}</td></tr>"
    )


def render_run_index(rows: list[IndexRow], summary: IndexSummary) -> str:
    """The whole page as one string: inline CSS, no scripts, every value escaped."""
    statuses = ", ".join(f"{_e(k)} {v}" for k, v in sorted(summary.by_status.items())) or "none"
    verdicts = ", ".join(f"{_e(k)} {v}" for k, v in sorted(summary.by_verdict.items())) or "none"
    if summary.active_model_version:
        serving = (
            f"<code>{_e(summary.active_model_version)}</code> on <code>{_e(summary.active_index_name)}</code>"
            f" ({_e(summary.release_status)}; previous "
            f"<code>{_e(summary.previous_model_version or '—')}</code>; switched "
            f"{_e(_fmt_time(summary.switched_at))})"
        )
    else:
        serving = '<span class="muted">no release yet</span>'
    if rows:
        body = (
            '<table class="runs"><thead><tr><th>started</th><th>stage</th><th>run</th><th>status</th>'
            "<th>headline</th><th>verdict</th><th>report</th></tr></thead><tbody>"
            + "".join(_render_row(r) for r in rows)
            + "</tbody></table>"
        )
    else:
        body = '<p class="muted">No stage has been executed yet.</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Biblio Ops Workbench — run index</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Run index</h1>"
        '<p class="sub">Every stage execution, newest first, from the Metadata DB. '
        "Open a report for the full record of a stage, a run id for that run's lineage.</p>"
        f'<p class="sub">History: <a href="{history.HISTORY_DIR}/{history.COMPARE_PAGE}">compare runs</a> · '
        f'<a href="{history.HISTORY_DIR}/{history.TREND_PAGE}">metric trend across evaluations and releases</a></p>'
        '<dl class="summary">'
        f"<dt>generated</dt><dd>{_e(_fmt_time(summary.generated_at))}</dd>"
        f"<dt>serving</dt><dd>{serving}</dd>"
        f"<dt>executions</dt><dd>{summary.total} ({statuses})</dd>"
        f"<dt>verdicts</dt><dd>{verdicts}</dd>"
        "</dl>"
        f"{body}</body></html>\n"
    )


def build_run_index(ws: Workspace) -> Path:
    """Rebuild ``<runs_dir>/index.html`` and the history pages it links (``history/``) from the
    Metadata DB; each page atomic (temp file + rename)."""
    now = utcnow()
    rows, summary = collect_run_index(ws, now)
    page = render_run_index(rows, summary)
    history_pages.build_history_pages(ws, now)  # first: the index links to them
    target = ws.settings.runs_dir / INDEX_NAME
    history_pages.write_atomic(target, page)
    log.info("run index rebuilt", extra={"path": str(target), "executions": len(rows)})
    return target
