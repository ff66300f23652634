"""History views for reviewers, collected from the Metadata DB (the SOT): runs side by side
(MLflow's compare view), metric trends across evaluations and releases, and one run's lineage.

- ``collect_run_histories``: every run with its dataset, models, training parameters (the 30
  execution's, and what the candidate's manifest says training chose), evaluation (metrics with
  the delta's paired-bootstrap 95 % CI), candidate index, each stage attempt with its archived
  report, notebook and log (Airflow's log per task attempt), and its release events — each tied
  to the 50/60/70 execution that wrote it;
- ``compare_rows`` / ``compare_frame``: those runs as rows of plain text, a column per run;
- ``collect_trend``: one point per evaluation and the CUTOVER / COMPLETE_ROLLBACK events to mark;
- ``lineage_nodes``: feedback window → dataset → run → candidate model → evaluation → index →
  release events, each with its report (a file under ``runs/``) or the record it comes from.

Plain dataclasses and DataFrames only: ``opslib.execution.history_pages`` renders them as the
pages under ``runs/history/`` and the dashboard's History tab shows the same. Nothing here
records the code's commit (the 40 report prints the code version it ran with), so no view shows one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from opslib.control.outcomes import RELEASE_EVENT_VERDICTS, released_run_ids, run_outcome
from opslib.control.runs import is_stalled
from opslib.db.models import (
    MLPipelineRun,
    ModelEvaluation,
    ModelVersion,
    ReleaseEvent,
    StageExecution,
    TrainingDataset,
    VectorIndexEntry,
    utcnow,
)
from opslib.errors import OpsError
from opslib.infra.logs import get_logger
from opslib.infra.model_artifacts import read_manifest
from opslib.infra.workspace import Workspace

log = get_logger(__name__)
HISTORY_DIR = "history"
COMPARE_PAGE = "compare.html"
TREND_PAGE = "trend.html"
METRICS = (("recall_at_5", "recall@5"), ("mrr_at_5", "MRR@5"), ("ndcg_at_5", "nDCG@5"))
# The release events the trend marks: a candidate started serving, a rollback restored a model.
TREND_EVENTS = ("CUTOVER", "COMPLETE_ROLLBACK")
RELEASE_STAGES = ("50_reindex_candidate", "60_cutover", "70_rollback")
_SLACK = timedelta(seconds=1)  # clock rounding between a row's timestamps and the execution's
_NOT_PARAMETERS = frozenset({"run_id", "ops_execution_id"})  # bookkeeping, not how the model was trained
# What the candidate's manifest says training chose (the parameters give the search space).
_SELECTED = (
    "loss",
    "learning_rate",
    "selected_epoch",
    "refit_on_validation_queries",
    "steps",
    "final_loss",
    "device",
    "mixed_precision",
)
_COUNTS = (
    ("raw_files", "raw files"),
    ("input_events", "events"),
    ("deduplicated_events", "deduplicated"),
    ("trainable_groups", "groups"),
    ("positives", "positives"),
    ("negatives", "negatives"),
)


def page_path(runs_dir: Path, run_id: int) -> Path:
    """Where run ``run_id``'s lineage page is written."""
    return runs_dir / HISTORY_DIR / f"run-{run_id}.html"


# What is collected ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One stage execution (an attempt) of a run; paths are existing archived files or None."""

    execution_id: int
    stage: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    report: Path | None
    notebook: Path | None
    log: Path | None  # the kernel's JSON log lines, beside the report

    @property
    def duration_s(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


@dataclass(frozen=True)
class MetricValue:
    metric: str
    label: str
    baseline: float | None
    candidate: float | None
    delta: float | None
    ci_low: float | None  # the delta's paired-bootstrap 95 % CI
    ci_high: float | None


@dataclass(frozen=True)
class EvaluationFacts:
    evaluation_id: int
    ref: str
    sample_count: int
    decision: str
    fail_reason: str | None
    release_hold: str | None
    candidate_model_version: str
    baseline_model_version: str
    detail_artifact: str
    created_at: datetime
    metrics: tuple[MetricValue, ...]


@dataclass(frozen=True)
class DatasetFacts:
    version: str
    storage_path: str
    rule: str
    window_start: datetime
    window_end: datetime
    counts: dict[str, Any]
    eligible: bool
    ineligible_reasons: tuple[str, ...]
    unusable_reason: str | None
    report: Path | None  # the 20_build_dataset report that recorded building it


@dataclass(frozen=True)
class ModelFacts:
    version: str
    base_model_version: str | None
    artifact_path: str
    sha256: str
    encode_precision: str
    created_at: datetime


@dataclass(frozen=True)
class EventFacts:
    event_id: int
    kind: str
    at: datetime
    actor: str
    trace_id: str
    active_model_version: str | None  # after the event
    stage: str | None  # the 50/60/70 execution that made it
    report: Path | None


@dataclass(frozen=True)
class RunHistory:
    """Everything the history views show of one ``MLPipelineRun``."""

    run_id: int
    created_at: datetime
    trigger: str
    status: str
    outcome: str  # opslib.control.outcomes.RunOutcome
    failed_stage: str | None
    failure_type: str | None
    failure_reason: str | None
    release_hold: str | None
    promoted: str | None
    trace_id: str
    dataset_version: str | None
    dataset: DatasetFacts | None
    baseline_model_version: str | None
    candidate_model_version: str | None
    candidate: ModelFacts | None  # None: not trained (no ModelVersion)
    training_parameters: dict[str, Any]
    training_selected: dict[str, Any]
    training_note: str | None  # why the manifest's choices are missing
    evaluation_ref: str | None
    evaluation: EvaluationFacts | None
    candidate_index_name: str | None
    index_entries: int | None
    attempts: tuple[Attempt, ...] = ()
    events: tuple[EventFacts, ...] = ()

    def attempts_of(self, stage: str) -> list[Attempt]:
        return [a for a in self.attempts if a.stage == stage]


@dataclass(frozen=True)
class TrendView:
    """``points``: one row per evaluation (oldest first): at, evaluation_id, run_id, ref, decision,
    candidate/baseline model, and per metric ``<m>_baseline``, ``<m>_candidate``, ``<m>_delta``,
    ``<m>_ci95_low``, ``<m>_ci95_high``. ``markers``: one row per CUTOVER / COMPLETE_ROLLBACK
    (at, kind, model now serving, run whose candidate it was)."""

    points: pd.DataFrame
    markers: pd.DataFrame


@dataclass(frozen=True)
class LineageNode:
    kind: str  # feedback window, dataset, run, candidate model, evaluation, index, release event
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    link: Path | None = None  # its report, an existing file under runs/
    link_text: str = "report"
    record: str | None = None  # where its record is, when it is not a file under runs/
    verdict: str | None = None


# Reading the Metadata DB ----------------------------------------------------------------------
def _archived(path_text: str | None, runs_dir: Path) -> Path | None:
    """An archived file that exists (the same ``<YYYYMMDD>/<file>`` under ``runs_dir`` if
    ``runs/`` was moved or copied), else None."""
    if not path_text:
        return None
    path = Path(path_text)
    if path.is_file():
        return path.resolve()
    moved = runs_dir / path.parent.name / path.name
    return moved.resolve() if moved.is_file() else None


def _attempt(ex: StageExecution, runs_dir: Path) -> Attempt:
    stem = ex.output_html or ex.output_ipynb
    return Attempt(
        execution_id=ex.id,
        stage=ex.stage,
        status=ex.status.value,
        started_at=ex.started_at,
        finished_at=ex.finished_at,
        report=_archived(ex.output_html, runs_dir),
        notebook=_archived(ex.output_ipynb, runs_dir),
        log=_archived(str(Path(stem).with_suffix(".log")), runs_dir) if stem else None,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metrics(quality: Any) -> tuple[MetricValue, ...]:
    q = quality if isinstance(quality, dict) else {}

    def part(name: str) -> dict[str, Any]:
        value = q.get(name)
        return value if isinstance(value, dict) else {}

    values = []
    for key, label in METRICS:
        base, cand = _number(part("baseline").get(key)), _number(part("candidate").get(key))
        delta = _number(part("delta").get(key))
        if delta is None and base is not None and cand is not None:
            delta = cand - base
        ci = part("ci95").get(key)
        low, high = (_number(ci[0]), _number(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        values.append(MetricValue(key, label, base, cand, delta, low, high))
    return tuple(values)


def _evaluation(e: ModelEvaluation) -> EvaluationFacts:
    quality = e.quality_metrics if isinstance(e.quality_metrics, dict) else {}
    release = quality.get("release")
    hold = release.get("hold") if isinstance(release, dict) else None
    return EvaluationFacts(
        evaluation_id=e.id,
        ref=e.evaluation_dataset_ref,
        sample_count=e.sample_count,
        decision=e.overall_decision.value,
        fail_reason=e.fail_reason,
        release_hold=hold if isinstance(hold, str) else None,
        candidate_model_version=e.candidate_model_version,
        baseline_model_version=e.baseline_model_version,
        detail_artifact=e.detail_artifact_path,
        created_at=e.created_at,
        metrics=_metrics(quality),
    )


def _run_of(ex: StageExecution) -> int | None:
    if ex.run_id is not None:
        return ex.run_id
    value = ex.parameters.get("run_id") if isinstance(ex.parameters, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _belongs(event: ReleaseEvent, run: MLPipelineRun, cutover_at: datetime | None) -> bool:
    """A release event of ``run``: it names the run as its candidate, or (after the run's cutover)
    it rolled serving back from the run's candidate."""
    before = event.before if isinstance(event.before, dict) else {}
    after = event.after if isinstance(event.after, dict) else {}
    if run.id in (before.get("candidate_run_id"), after.get("candidate_run_id")):
        return True
    return (
        event.kind in ("PREPARE_ROLLBACK", "COMPLETE_ROLLBACK")
        and cutover_at is not None
        and event.at >= cutover_at
        and run.candidate_model_version is not None
        and before.get("active_model_version") == run.candidate_model_version
    )


def _maker(
    event: ReleaseEvent, run: MLPipelineRun, executions: list[StageExecution], now: datetime
) -> StageExecution | None:
    """The 50/60/70 execution that was running when ``event`` was written (the run's own, or one
    under the event's trace, preferred when several overlap)."""
    during = [
        ex
        for ex in executions
        if ex.stage in RELEASE_STAGES and ex.started_at - _SLACK <= event.at <= (ex.finished_at or now) + _SLACK
    ]
    during.sort(key=lambda ex: (_run_of(ex) != run.id and ex.trace_id != event.trace_id, -ex.id))
    return during[0] if during else None


def _manifest_choices(ws: Workspace, version: str) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(training parameters, what training chose, a note when the manifest cannot be read)."""
    try:
        recorded = read_manifest(ws, version).training_parameters
    except OpsError as exc:  # a gone or changed artifact: the page says so, the rest still shows
        return {}, {}, f"model manifest of {version} unreadable: {type(exc).__name__}: {exc}"
    chosen = {k: recorded[k] for k in _SELECTED if k in recorded}
    return recorded, chosen, None


def collect_run_histories(ws: Workspace, now: datetime | None = None) -> list[RunHistory]:
    """Every run (newest first) with its dataset, models, training parameters, evaluation, index,
    stage attempts and release events."""
    now = now or utcnow()
    runs_dir = ws.settings.runs_dir
    with ws.db.read() as session:
        runs = list(session.scalars(select(MLPipelineRun).order_by(MLPipelineRun.id.desc())))
        executions = list(session.scalars(select(StageExecution).order_by(StageExecution.id)))
        evaluations: dict[int, list[ModelEvaluation]] = defaultdict(list)
        for row in session.scalars(select(ModelEvaluation).order_by(ModelEvaluation.id)):
            if row.run_id is not None:
                evaluations[row.run_id].append(row)
        datasets = {d.dataset_version: d for d in session.scalars(select(TrainingDataset))}
        models = {m.model_version: m for m in session.scalars(select(ModelVersion))}
        events = list(session.scalars(select(ReleaseEvent).order_by(ReleaseEvent.id)))
        index_names = {r.candidate_index_name for r in runs if r.candidate_index_name}
        entries = (
            dict(
                session.execute(
                    select(VectorIndexEntry.index_name, func.count())
                    .where(VectorIndexEntry.index_name.in_(index_names))
                    .group_by(VectorIndexEntry.index_name)
                )
                .tuples()
                .all()
            )
            if index_names
            else {}
        )
        released = released_run_ids(session)
    by_run: dict[int, list[StageExecution]] = defaultdict(list)
    dataset_reports: dict[str, StageExecution] = {}
    for ex in executions:
        run_id = _run_of(ex)
        if run_id is not None:
            by_run[run_id].append(ex)
        outputs = ex.outputs if isinstance(ex.outputs, dict) else {}
        if ex.stage == "20_build_dataset" and isinstance(outputs.get("dataset_version"), str):
            dataset_reports.setdefault(outputs["dataset_version"], ex)  # the execution that built it first
    result = []
    for run in runs:
        own = by_run.get(run.id, [])
        chosen = [e for e in evaluations.get(run.id, []) if e.id == run.evaluation_id] or evaluations.get(run.id, [])
        evaluation = _evaluation(chosen[-1]) if chosen else None
        eval_attempts = [ex for ex in own if ex.stage == "40_evaluate_candidate"]
        ref = evaluation.ref if evaluation else None
        if ref is None and eval_attempts and isinstance(eval_attempts[-1].parameters, dict):
            value = eval_attempts[-1].parameters.get("evaluation_dataset_ref")
            ref = value if isinstance(value, str) else None
        training = [ex for ex in own if ex.stage == "30_train_candidate"]
        parameters: dict[str, Any] = (
            {k: v for k, v in training[-1].parameters.items() if k not in _NOT_PARAMETERS}
            if training and isinstance(training[-1].parameters, dict)
            else {}
        )
        model = models.get(run.candidate_model_version or "")
        selected: dict[str, Any] = {}
        note = None
        if model is not None and model.run_id == run.id:  # a fine-tuned candidate has a manifest of choices
            recorded, selected, note = _manifest_choices(ws, model.model_version)
            if not parameters:  # no 30 execution recorded (e.g. trained by a script): the manifest's
                parameters = {k: v for k, v in recorded.items() if k not in _SELECTED and not isinstance(v, dict)}
        dataset = datasets.get(run.dataset_version or "")
        cutovers = [e.at for e in events if e.kind == "CUTOVER" and _belongs(e, run, None)]
        mine = [e for e in events if _belongs(e, run, cutovers[0] if cutovers else None)]
        result.append(
            RunHistory(
                run_id=run.id,
                created_at=run.created_at,
                trigger=run.trigger_source.value,
                status=run.status.value,
                outcome=run_outcome(
                    run,
                    released=run.id in released,
                    stalled=is_stalled(run, ws.settings.run_stall_after_s, now),
                ).value,
                failed_stage=run.failed_stage.value if run.failed_stage else None,
                failure_type=run.failure_type.value if run.failure_type else None,
                failure_reason=run.failure_reason,
                release_hold=run.release_hold,
                promoted=f"{fmt_time(run.promoted_at)} by {run.promoted_by or '?'}" if run.promoted_at else None,
                trace_id=run.trace_id,
                dataset_version=run.dataset_version,
                dataset=_dataset(dataset, dataset_reports.get(dataset.dataset_version), runs_dir) if dataset else None,
                baseline_model_version=run.baseline_model_version,
                candidate_model_version=run.candidate_model_version,
                candidate=_model(model) if model else None,
                training_parameters=parameters,
                training_selected=selected,
                training_note=note,
                evaluation_ref=ref,
                evaluation=evaluation,
                candidate_index_name=run.candidate_index_name,
                index_entries=entries.get(run.candidate_index_name) if run.candidate_index_name else None,
                attempts=tuple(_attempt(ex, runs_dir) for ex in own),
                events=tuple(_event(e, run, executions, runs_dir, now) for e in mine),
            )
        )
    return result


def _dataset(d: TrainingDataset, built_by: StageExecution | None, runs_dir: Path) -> DatasetFacts:
    return DatasetFacts(
        version=d.dataset_version,
        storage_path=d.storage_path,
        rule=d.generation_rule_version,
        window_start=d.source_window_start,
        window_end=d.source_window_end,
        counts=dict(d.counts) if isinstance(d.counts, dict) else {},
        eligible=d.eligible,
        ineligible_reasons=tuple(str(r) for r in d.ineligible_reasons or ()),
        unusable_reason=d.unusable_reason,
        report=_archived(built_by.output_html, runs_dir) if built_by else None,
    )


def _model(m: ModelVersion) -> ModelFacts:
    return ModelFacts(
        m.model_version, m.base_model_version, m.artifact_path, m.sha256, m.encode_precision, m.created_at
    )


def _event(
    e: ReleaseEvent, run: MLPipelineRun, executions: list[StageExecution], runs_dir: Path, now: datetime
) -> EventFacts:
    after = e.after if isinstance(e.after, dict) else {}
    maker = _maker(e, run, executions, now)
    return EventFacts(
        event_id=e.id,
        kind=e.kind,
        at=e.at,
        actor=e.actor,
        trace_id=e.trace_id,
        active_model_version=after.get("active_model_version"),
        stage=maker.stage if maker else None,
        report=_archived(maker.output_html, runs_dir) if maker else None,
    )


def collect_trend(ws: Workspace) -> TrendView:
    """Every evaluation's metrics (oldest first) and the release events the trend marks."""
    with ws.db.read() as session:
        evaluations = list(
            session.scalars(select(ModelEvaluation).order_by(ModelEvaluation.created_at, ModelEvaluation.id))
        )
        events = list(
            session.scalars(
                select(ReleaseEvent)
                .where(ReleaseEvent.kind.in_(TREND_EVENTS))
                .order_by(ReleaseEvent.at, ReleaseEvent.id)
            )
        )
    rows = []
    for e in evaluations:
        facts = _evaluation(e)
        row: dict[str, Any] = {
            "at": facts.created_at,
            "evaluation_id": facts.evaluation_id,
            "run_id": e.run_id,
            "ref": facts.ref,
            "decision": facts.decision,
            "candidate_model": facts.candidate_model_version,
            "baseline_model": facts.baseline_model_version,
        }
        for m in facts.metrics:
            row |= {
                f"{m.metric}_baseline": m.baseline,
                f"{m.metric}_candidate": m.candidate,
                f"{m.metric}_delta": m.delta,
                f"{m.metric}_ci95_low": m.ci_low,
                f"{m.metric}_ci95_high": m.ci_high,
            }
        rows.append(row)
    markers = []
    for ev in events:
        before = ev.before if isinstance(ev.before, dict) else {}
        after = ev.after if isinstance(ev.after, dict) else {}
        run_id = before.get("candidate_run_id") if ev.kind == "CUTOVER" else None
        markers.append(
            {
                "at": ev.at,
                "kind": ev.kind,
                "serving": after.get("active_model_version"),
                "from": before.get("active_model_version"),
                "run_id": run_id if isinstance(run_id, int) else None,
                "actor": ev.actor,
            }
        )
    columns = ["at", "evaluation_id", "run_id", "ref", "decision", "candidate_model", "baseline_model"] + [
        f"{m}_{part}" for m, _ in METRICS for part in ("baseline", "candidate", "delta", "ci95_low", "ci95_high")
    ]
    # Run ids stay integers beside missing ones (a float column would show run 1 as 1.0).
    return TrendView(
        points=pd.DataFrame(rows, columns=columns).astype({"run_id": "Int64"}),
        markers=pd.DataFrame(markers, columns=["at", "kind", "serving", "from", "run_id", "actor"]).astype(
            {"run_id": "Int64"}
        ),
    )


# Plain-text comparison (pages, dashboard) -----------------------------------------------------
def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    return str(value)


def delta_ci(m: MetricValue) -> str:
    if m.delta is None:
        return "—"
    ci = f" [{m.ci_low:+.4f}, {m.ci_high:+.4f}]" if m.ci_low is not None and m.ci_high is not None else ""
    return f"{m.delta:+.4f}{ci}"


def _stage_cell(attempts: list[Attempt]) -> str:
    if not attempts:
        return "—"
    last = attempts[-1]
    more = f"; {len(attempts)} attempts" if len(attempts) > 1 else ""
    return f"{fmt_duration(last.duration_s)} ({last.status}{more})"


def _counts(counts: dict[str, Any]) -> str:
    shown = [f"{label} {counts[k]}" for k, label in _COUNTS if k in counts]
    return " · ".join(shown) or "—"


def compare_rows(runs: Sequence[RunHistory]) -> list[tuple[str, list[str]]]:
    """The comparison as (row label, one plain-text value per run) — MLflow's compare view:
    a row per parameter and per metric, so two runs differ row by row."""

    def row(label: str, get: Any) -> tuple[str, list[str]]:
        return label, [get(r) for r in runs]

    rows = [
        row("created", lambda r: fmt_time(r.created_at)),
        row("trigger", lambda r: r.trigger),
        row("outcome", lambda r: r.outcome),
        row("status", lambda r: r.status),
        row(
            "failed stage / reason",
            lambda r: f"{r.failed_stage} ({r.failure_type}): {r.failure_reason or '—'}" if r.failed_stage else "—",
        ),
        row("dataset", lambda r: r.dataset_version or "—"),
        row(
            "dataset window",
            lambda r: f"{fmt_time(r.dataset.window_start)} → {fmt_time(r.dataset.window_end)}" if r.dataset else "—",
        ),
        row("dataset counts", lambda r: _counts(r.dataset.counts) if r.dataset else "—"),
        row(
            "dataset eligible",
            lambda r: (
                "—"
                if r.dataset is None
                else ("yes" if r.dataset.eligible else "no: " + "; ".join(r.dataset.ineligible_reasons))
            ),
        ),
        row("baseline model", lambda r: r.baseline_model_version or "—"),
        row(
            "candidate model",
            lambda r: (
                "—"
                if not r.candidate_model_version
                else r.candidate_model_version + ("" if r.candidate else " (not trained)")
            ),
        ),
    ]
    for key in sorted({k for r in runs for k in r.training_parameters}):
        rows.append(row(f"parameter · {key}", lambda r, k=key: _value(r.training_parameters.get(k))))
    for key in [k for k in _SELECTED if any(k in r.training_selected for r in runs)]:
        rows.append(row(f"trained with · {key}", lambda r, k=key: _value(r.training_selected.get(k))))
    rows.append(row("evaluation set", lambda r: r.evaluation_ref or "—"))
    for i, (_, label) in enumerate(METRICS):
        rows.append(
            row(f"{label} baseline", lambda r, i=i: _num(r.evaluation.metrics[i].baseline) if r.evaluation else "—")
        )
        rows.append(
            row(f"{label} candidate", lambda r, i=i: _num(r.evaluation.metrics[i].candidate) if r.evaluation else "—")
        )
        rows.append(
            row(f"{label} Δ (95 % CI)", lambda r, i=i: delta_ci(r.evaluation.metrics[i]) if r.evaluation else "—")
        )
    rows += [
        row(
            "decision",
            lambda r: (
                "—"
                if r.evaluation is None
                else r.evaluation.decision + (f": {r.evaluation.fail_reason}" if r.evaluation.fail_reason else "")
            ),
        ),
        row("release hold", lambda r: r.release_hold or "—"),
        row("promoted", lambda r: r.promoted or "—"),
        row(
            "candidate index",
            lambda r: (
                "—" if not r.candidate_index_name else f"{r.candidate_index_name} ({r.index_entries or 0} entries)"
            ),
        ),
    ]
    for stage in sorted({a.stage for r in runs for a in r.attempts}):
        rows.append(row(f"duration · {stage}", lambda r, s=stage: _stage_cell(r.attempts_of(s))))
    rows += [
        row(
            "release events",
            lambda r: "; ".join(f"{e.kind} {fmt_time(e.at)}" for e in r.events) or "—",
        ),
        row("trace", lambda r: r.trace_id),
    ]
    return rows


def compare_frame(runs: Sequence[RunHistory]) -> pd.DataFrame:
    """``compare_rows`` as a DataFrame: one column per run (``run <id>``), one row per field."""
    rows = compare_rows(runs)
    frame = pd.DataFrame(
        [values for _, values in rows], index=[label for label, _ in rows], columns=[f"run {r.run_id}" for r in runs]
    )
    frame.index.name = "field"
    return frame


def lineage_nodes(run: RunHistory) -> list[LineageNode]:
    """Feedback window → dataset → run → candidate model → evaluation → index → release events."""
    nodes = []
    d = run.dataset
    if d is not None:
        days = (d.window_end - d.window_start).total_seconds() / 86400
        nodes.append(
            LineageNode(
                "feedback window",
                f"{fmt_time(d.window_start)} → {fmt_time(d.window_end)}",
                [
                    ("length", f"{days:g} days (by raw log file timestamp)"),
                    ("raw files", _value(d.counts.get("raw_files"))),
                    ("events read", _value(d.counts.get("input_events"))),
                ],
                record=f"the raw log files are listed in {d.storage_path}/manifest.json (lineage.raw_files)",
            )
        )
        nodes.append(
            LineageNode(
                "dataset",
                d.version,
                [
                    ("rule", d.rule),
                    ("counts", _counts(d.counts)),
                    ("eligible", "yes" if d.eligible else "no: " + "; ".join(d.ineligible_reasons)),
                    *([("UNUSABLE", d.unusable_reason)] if d.unusable_reason else []),
                ],
                link=d.report,
                link_text="20_build_dataset report",
                record=f"TrainingDataset {d.version}; artifact and manifest at {d.storage_path}",
                verdict=None if d.unusable_reason is None else "UNUSABLE",
            )
        )
    else:
        nodes.append(
            LineageNode(
                "dataset",
                run.dataset_version or "—",
                [("note", "not in the Metadata DB" if run.dataset_version else "the run has no dataset yet")],
            )
        )
    failure = (
        [("failed", f"{run.failed_stage} ({run.failure_type}): {run.failure_reason or '—'}")]
        if run.failed_stage
        else []
    )
    nodes.append(
        LineageNode(
            "run",
            f"run {run.run_id}",
            [
                ("trigger", run.trigger),
                ("status", run.status),
                *failure,
                *([("release hold", run.release_hold)] if run.release_hold else []),
                *([("promoted", run.promoted)] if run.promoted else []),
                ("created", fmt_time(run.created_at)),
                ("trace", run.trace_id),
            ],
            record=f"MLPipelineRun {run.run_id}",
            verdict=run.outcome,
        )
    )
    train = [a for a in run.attempts_of("30_train_candidate") if a.report]
    c = run.candidate
    selected = [(k, _value(v)) for k, v in run.training_selected.items()]
    nodes.append(
        LineageNode(
            "candidate model",
            run.candidate_model_version or "—",
            [
                ("base", (c.base_model_version if c else None) or run.baseline_model_version or "—"),
                *(
                    [
                        ("sha256 (manifest)", c.sha256),
                        ("encodes at", c.encode_precision),
                        ("registered", fmt_time(c.created_at)),
                    ]
                    if c
                    else [("note", "not trained (no ModelVersion)")]
                ),
                *selected,
                *([("note", run.training_note)] if run.training_note else []),
            ],
            link=train[-1].report if train else None,
            link_text="30_train_candidate report",
            record=f"ModelVersion {c.version}; artifact {c.artifact_path}/model_manifest.json" if c else None,
        )
    )
    ev = run.evaluation
    evals = [a for a in run.attempts_of("40_evaluate_candidate") if a.report]
    if ev is not None:
        metric_facts = [
            (
                f"{m.label} (baseline → candidate, Δ [95 % CI])",
                f"{_num(m.baseline)} → {_num(m.candidate)}, {delta_ci(m)}",
            )
            for m in ev.metrics
        ]
        nodes.append(
            LineageNode(
                "evaluation",
                f"evaluation {ev.evaluation_id} on {ev.ref}",
                [
                    ("queries", str(ev.sample_count)),
                    *metric_facts,
                    *([("below criteria", ev.fail_reason)] if ev.fail_reason else []),
                    *([("release hold", ev.release_hold)] if ev.release_hold else []),
                    ("at", fmt_time(ev.created_at)),
                ],
                link=evals[-1].report if evals else None,
                link_text="40_evaluate_candidate report",
                record=f"ModelEvaluation {ev.evaluation_id}; per-query detail {ev.detail_artifact}",
                verdict=ev.decision,
            )
        )
    else:
        nodes.append(
            LineageNode(
                "evaluation",
                f"on {run.evaluation_ref}" if run.evaluation_ref else "—",
                [("note", "no evaluation recorded")],
                link=evals[-1].report if evals else None,
                link_text="40_evaluate_candidate report",
            )
        )
    builds = [a for a in run.attempts_of("50_reindex_candidate") if a.report]
    nodes.append(
        LineageNode(
            "index",
            run.candidate_index_name or "—",
            [("entries", str(run.index_entries or 0))]
            if run.candidate_index_name
            else [("note", "no candidate index built")],
            link=builds[-1].report if builds else None,
            link_text="50_reindex_candidate report",
            record=f"VectorIndexEntry rows of {run.candidate_index_name}" if run.candidate_index_name else None,
        )
    )
    for e in run.events:
        nodes.append(
            LineageNode(
                "release event",
                f"{e.kind} at {fmt_time(e.at)}",
                [("actor", e.actor), ("serving after", e.active_model_version or "—"), ("trace", e.trace_id)],
                link=e.report,
                link_text=f"{e.stage} report" if e.stage else "report",
                record=f"ReleaseEvent {e.event_id}",
                verdict=str(RELEASE_EVENT_VERDICTS.get(e.kind, e.kind)),
            )
        )
    if not run.events:
        nodes.append(LineageNode("release event", "none", [("note", "this run's candidate never reached the release")]))
    return nodes
