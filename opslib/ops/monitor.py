"""What the ops dashboard shows, read from the Metadata DB (the SOT) — plain data, no widgets.

One function per panel; each returns small dataclasses / DataFrames the dashboard renders and the
tests check. Nothing here changes state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError

from opslib.control.leases import RELEASE_LEASE, lease_state
from opslib.control.outcomes import released_run_ids, run_outcome
from opslib.control.release import current_release, history_frame, release_state
from opslib.control.runs import is_stalled, latest_eligible_dataset
from opslib.control.shards import shard_progress
from opslib.corpus.indexing import missing_from_index
from opslib.db.migrate import current_revision, head_revision, schema_hint
from opslib.db.models import (
    AuditLog,
    Chunk,
    CorpusImport,
    ExecutionStatus,
    MessageOutcome,
    MLPipelineRun,
    ModelEvaluation,
    ModelVersion,
    OpsMessage,
    ReleaseStatus,
    RunStatus,
    ServingEndpoint,
    StageExecution,
    TrainingDataset,
    VectorIndexEntry,
    Video,
    utcnow,
)
from opslib.errors import IntegrityFailure
from opslib.execution.schedule import schedule_status
from opslib.infra.vector_store import VectorStoreDamaged, forget_local_clients
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import waiting_on
from opslib.lifecycle.evaluation.metrics import METRICS


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "—"
    seconds = int((now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


# Runs --------------------------------------------------------------------------------------------
@dataclass
class RunRow:
    id: int
    status: str
    outcome: str  # OK / FAIL (quality) / ERROR (system) / STALLED / SUPERSEDED / …
    failed_stage: str | None
    failure_reason: str | None
    trigger: str
    dataset_version: str | None
    candidate_model_version: str | None
    created: str
    heartbeat: str
    stalled: bool
    promoted_by: str | None
    reports: list[tuple[str, str]]  # (stage, archived html path)
    release_hold: str | None = None  # why a READY run waits for a promote (the release rule)
    abandoned: list[str] = field(default_factory=list)  # stages whose execution's process died (ABANDONED)


@dataclass
class RunsView:
    running: RunRow | None
    pending: RunRow | None
    recent: list[RunRow]
    schedules: list[dict[str, Any]] = field(default_factory=list)  # opslib.execution.schedule.schedule_status


def runs_view(ws: Workspace, limit: int = 15, now: datetime | None = None) -> RunsView:
    now = now or utcnow()
    stall = ws.settings.run_stall_after_s
    with ws.db.read() as session:
        released = released_run_ids(session)
        runs = list(session.scalars(select(MLPipelineRun).order_by(MLPipelineRun.id.desc()).limit(limit)))
        active = list(
            session.scalars(
                select(MLPipelineRun).where(MLPipelineRun.status.in_((RunStatus.RUNNING, RunStatus.PENDING)))
            )
        )
        ids = {r.id for r in runs + active}
        reports: dict[int, list[tuple[str, str]]] = {}
        abandoned: dict[int, list[str]] = {}
        for e in session.scalars(
            select(StageExecution).where(StageExecution.run_id.in_(ids)).order_by(StageExecution.id)
        ):
            if e.output_html and e.run_id is not None:
                reports.setdefault(e.run_id, []).append((e.stage, e.output_html))
            if e.status is ExecutionStatus.ABANDONED and e.run_id is not None:
                abandoned.setdefault(e.run_id, []).append(e.stage)

    def row(run: MLPipelineRun) -> RunRow:
        stalled = is_stalled(run, stall, now)
        return RunRow(
            run.id,
            run.status.value,
            run_outcome(run, released=run.id in released, stalled=stalled).value,
            run.failed_stage.value if run.failed_stage else None,
            run.failure_reason,
            run.trigger_source.value,
            run.dataset_version,
            run.candidate_model_version,
            _ago(run.created_at, now),
            _ago(run.heartbeat_at, now),
            stalled,
            run.promoted_by,
            reports.get(run.id, []),
            run.release_hold,
            abandoned.get(run.id, []),
        )

    by_status = {r.status: r for r in active}
    return RunsView(
        running=row(by_status[RunStatus.RUNNING]) if RunStatus.RUNNING in by_status else None,
        pending=row(by_status[RunStatus.PENDING]) if RunStatus.PENDING in by_status else None,
        recent=[row(r) for r in runs],
        schedules=schedule_status(ws, now),
    )


# Release -----------------------------------------------------------------------------------------
@dataclass
class ReleaseView:
    state: dict[str, Any]
    status: str
    waiting_on: str  # the guard the release waits on now (or what happens next)
    rollback_available: bool
    rollback_note: str
    history: pd.DataFrame


def release_view(ws: Workspace) -> ReleaseView | None:

    with ws.db.read() as session:
        release = current_release(session)
        if release is None:
            return None
        state = release_state(release) or {}
        history = history_frame(session)
        status = release.release_status
    if status is ReleaseStatus.CANDIDATE_REINDEXING:
        reason = waiting_on(release, release.candidate_run_id or 0)
        if reason is None and release.candidate_index_name:
            missing = len(missing_from_index(ws, release.candidate_index_name))
            reason = (
                f"completeness gate: {missing} READY chunks not yet in {release.candidate_index_name}"
                if missing
                else "nothing: ready and complete — 60_cutover switches on the worker's next pass"
            )
        waiting = reason or "—"
    elif status is ReleaseStatus.ROLLBACK_PREPARING:
        waiting = (
            f"rollback to {release.rollback_snapshot_active_model_version}: target model ready and "
            f"{release.rollback_snapshot_active_index_name} restored (70_rollback)"
        )
    else:
        waiting = "nothing in flight"
    if status is not ReleaseStatus.STABLE:
        available, note = False, f"not while {status.value}"
    elif release.rollback_snapshot_active_model_version is None:
        available, note = False, "no rollback snapshot (no cutover since the last rollback)"
    else:
        available, note = (
            True,
            (
                f"to {release.rollback_snapshot_active_model_version} "
                f"(snapshot of {release.rollback_snapshot_captured_at:%Y-%m-%d %H:%M} UTC)"
            ),
        )
    return ReleaseView(state, status.value, waiting, available, note, history)


# Datasets ----------------------------------------------------------------------------------------
@dataclass
class DatasetsView:
    table: pd.DataFrame
    newest: str | None
    newest_eligible: str | None
    last_used: str | None  # by the newest run that passed
    lag: str  # between the newest eligible dataset and the one the last successful run used
    unusable: list[str] = field(default_factory=list)  # "<version>: <reason>", artifact gone or changed


def datasets_view(ws: Workspace, limit: int = 10) -> DatasetsView:
    with ws.db.read() as session:
        rows = list(session.scalars(select(TrainingDataset).order_by(TrainingDataset.created_at.desc()).limit(limit)))
        eligible = latest_eligible_dataset(session)
        passed = session.scalars(
            select(MLPipelineRun)
            .where(MLPipelineRun.status == RunStatus.READY_FOR_RELEASE)
            .order_by(MLPipelineRun.id.desc())
            .limit(1)
        ).first()
        used = session.get(TrainingDataset, passed.dataset_version) if passed and passed.dataset_version else None
        newer = 0
        if eligible is not None and used is not None:
            newer = (
                session.scalar(
                    select(func.count())
                    .select_from(TrainingDataset)
                    .where(
                        TrainingDataset.eligible.is_(True),
                        TrainingDataset.unusable_at.is_(None),
                        TrainingDataset.source_window_end > used.source_window_end,
                    )
                )
                or 0
            )
    table = pd.DataFrame(
        [
            {
                "dataset_version": d.dataset_version,
                "created": f"{d.created_at:%Y-%m-%d %H:%M}",
                "window": f"{d.source_window_start:%m-%d} → {d.source_window_end:%m-%d %H:%M}",
                "groups": d.counts.get("trainable_groups"),
                "negatives": d.counts.get("negatives"),
                "eligible": (
                    f"UNUSABLE since {d.unusable_at:%Y-%m-%d %H:%M}: {d.unusable_reason}"
                    if d.unusable_at is not None
                    else "yes"
                    if d.eligible
                    else "no: " + "; ".join(d.ineligible_reasons)
                ),
            }
            for d in rows
        ],
        columns=["dataset_version", "created", "window", "groups", "negatives", "eligible"],
    )
    if eligible is None:
        lag = "no eligible dataset yet"
    elif used is None:
        lag = "no run has passed yet"
    elif used.dataset_version == eligible.dataset_version:
        lag = "none: the last successful run used the newest eligible dataset"
    else:
        hours = (eligible.source_window_end - used.source_window_end) / timedelta(hours=1)
        lag = f"{newer} newer eligible dataset(s); the newest covers {hours:.0f} h more feedback"
    return DatasetsView(
        table,
        rows[0].dataset_version if rows else None,
        eligible.dataset_version if eligible else None,
        used.dataset_version if used else None,
        lag,
        [f"{d['dataset_version']}: {d['reason']}" for d in unusable_datasets(ws)],
    )


# Evaluations -------------------------------------------------------------------------------------
@dataclass
class EvaluationRow:
    id: int
    run_id: int | None  # model_evaluations.run_id is nullable
    verdict: str
    candidate: str
    baseline: str
    evaluation_dataset_ref: str
    sample_count: int
    metrics: pd.DataFrame  # per metric: baseline, candidate, delta, CI
    fail_reason: str | None
    report: str | None
    created: str


def evaluations_view(ws: Workspace, limit: int = 5) -> list[EvaluationRow]:
    now = utcnow()
    with ws.db.read() as session:
        rows = list(session.scalars(select(ModelEvaluation).order_by(ModelEvaluation.id.desc()).limit(limit)))
        reports = {
            e.run_id: e.output_html
            for e in session.scalars(
                select(StageExecution)
                .where(
                    StageExecution.stage == "40_evaluate_candidate", StageExecution.run_id.in_([r.run_id for r in rows])
                )
                .order_by(StageExecution.id)
            )
        }
    result = []
    for r in rows:
        q = r.quality_metrics or {}
        metrics = (
            pd.DataFrame(
                [
                    {
                        "metric": m,
                        "baseline": q.get("baseline", {}).get(m),
                        "candidate": q.get("candidate", {}).get(m),
                        "delta": q.get("delta", {}).get(m),
                        "ci95": "[{:+.4f}, {:+.4f}]".format(*q["ci95"][m]) if m in q.get("ci95", {}) else "—",
                    }
                    for m in METRICS
                ]
            ).set_index("metric")
            if q
            else pd.DataFrame()
        )
        result.append(
            EvaluationRow(
                r.id,
                r.run_id,
                r.overall_decision.value,
                r.candidate_model_version,
                r.baseline_model_version,
                r.evaluation_dataset_ref,
                r.sample_count,
                metrics.round(4) if not metrics.empty else metrics,
                r.fail_reason,
                reports.get(r.run_id),
                _ago(r.created_at, now),
            )
        )
    return result


# Queue -------------------------------------------------------------------------------------------
@dataclass
class QueueView:
    backlog: dict[str, int]  # unacked messages by type
    oldest_age: str
    redeliveries: int  # unacked messages delivered more than once
    refused: pd.DataFrame  # recent refusals with their reasons
    recent: pd.DataFrame
    parked: pd.DataFrame = field(default_factory=pd.DataFrame)  # poison: past their delivery cap, never redelivered
    release_driver: str = "nobody"  # who holds the release lease (50/60/70 and their repairs)


def queue_view(ws: Workspace, limit: int = 10) -> QueueView:
    now = utcnow()
    with ws.db.read() as session:
        backlog = dict(
            session.execute(
                select(OpsMessage.message_type, func.count())
                .where(OpsMessage.acked_at.is_(None))
                .group_by(OpsMessage.message_type)
            ).all()
        )
        oldest = session.scalar(select(func.min(OpsMessage.issued_at)).where(OpsMessage.acked_at.is_(None)))
        redeliveries = (
            session.scalar(
                select(func.count())
                .select_from(OpsMessage)
                .where(OpsMessage.acked_at.is_(None), OpsMessage.attempt > 1)
            )
            or 0
        )
        refused, parked = (
            list(
                session.scalars(
                    select(OpsMessage).where(OpsMessage.outcome == outcome).order_by(OpsMessage.id.desc()).limit(limit)
                )
            )
            for outcome in (MessageOutcome.REFUSED, MessageOutcome.PARKED)
        )
        recent = list(session.scalars(select(OpsMessage).order_by(OpsMessage.id.desc()).limit(limit)))

    def frame(messages: list[OpsMessage]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "id": m.id,
                    "type": m.message_type,
                    "issued": _ago(m.issued_at, now),
                    "attempt": m.attempt,
                    "state": m.outcome.value if m.outcome else ("claimed" if m.claimed_by else "waiting"),
                    "reason": m.outcome_reason or "",
                    "trace_id": m.trace_id,
                }
                for m in messages
            ],
            columns=["id", "type", "issued", "attempt", "state", "reason", "trace_id"],
        )

    return QueueView(
        backlog,
        _ago(oldest, now),
        int(redeliveries),
        frame(refused),
        frame(recent),
        frame(parked),
        release_driver(ws, now),
    )


def release_driver(ws: Workspace, now: datetime | None = None) -> str:
    """Who holds the release lease, said for an operator."""
    now = now or utcnow()
    state = lease_state(ws.db, RELEASE_LEASE, stale_after_s=ws.settings.lease_stale_after_s, now=now)
    if state is None or state.holder is None:
        return "nobody"
    liveness = "live" if state.live else "stale: its holder stopped beating; the next worker takes it over"
    return f"{state.holder} for {state.purpose} (token {state.token}, heartbeat {_ago(state.heartbeat_at, now)}; {liveness})"


# Embedding endpoint ------------------------------------------------------------------------------
@dataclass
class EndpointView:
    serving: list[tuple[str, str]]  # (role, model version) the release needs loaded
    models: pd.DataFrame  # registered versions and their readiness in this process
    note: str = field(default="")


def endpoint_view(ws: Workspace) -> EndpointView:
    loaded = {m.model_version: m for m in ws.embeddings.status()}
    with ws.db.read() as session:
        release = current_release(session)
        versions = list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())))
    serving: list[tuple[str, str]] = []
    if release is not None:
        serving.append(("active", release.active_model_version))
        if release.candidate_model_version:
            ready = "ready" if release.candidate_ready_at else "loading / indexing"
            serving.append((f"candidate ({ready})", release.candidate_model_version))
        if release.rollback_snapshot_active_model_version:
            serving.append(("rollback target", release.rollback_snapshot_active_model_version))
    roles = {version: role for role, version in serving}
    models = pd.DataFrame(
        [
            {
                "model_version": v.model_version,
                "role": roles.get(v.model_version, ""),
                "loaded here": "yes" if v.model_version in loaded else "no",
                "ready": "yes" if v.model_version in loaded and loaded[v.model_version].ready else "—",
                "dimension": loaded[v.model_version].dimension if v.model_version in loaded else "",
                "precision": v.encode_precision,  # recorded with the version: its indexes and queries use it
                "device": loaded[v.model_version].device if v.model_version in loaded else "",
                "base": v.base_model_version or "",
                "run": v.run_id or "",
            }
            for v in versions
        ],
        columns=["model_version", "role", "loaded here", "ready", "dimension", "precision", "device", "base", "run"],
    )
    return EndpointView(
        serving,
        models,
        "readiness = loaded + a smoke encode passed, in this process (the check button loads the serving models here)",
    )


def check_endpoint(ws: Workspace) -> list[tuple[str, bool, str]]:
    """Load every model the release needs and run its smoke encode: (version, ready, detail)."""
    results = []
    for _role, version in endpoint_view(ws).serving:
        try:
            loaded = ws.embeddings.load(version)
            results.append(
                (version, loaded.ready, f"dimension {loaded.dimension}, {loaded.precision} on {loaded.device}")
            )
        except Exception as exc:  # shown in the panel: a model that cannot load is the finding
            results.append((version, False, f"{type(exc).__name__}: {exc}"))
    return results


# Audit -------------------------------------------------------------------------------------------
def audit_frame(ws: Workspace, limit: int = 20) -> pd.DataFrame:
    with ws.db.read() as session:
        rows = list(session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)))
    return pd.DataFrame(
        [
            {
                "at": f"{a.at:%Y-%m-%d %H:%M:%S}",
                "operator": a.operator,
                "role": a.role,
                "action": a.action,
                "target": a.target,
                "reason": a.reason,
                "result": a.result,
                "trace_id": a.trace_id,
            }
            for a in rows
        ],
        columns=["at", "operator", "role", "action", "target", "reason", "result", "trace_id"],
    )


def link_path(html: str | None, base: Path | None = None) -> str | None:
    """A report's path relative to the notebook's folder (JupyterLab opens relative links)."""
    if not html:
        return None
    try:
        return os.path.relpath(html, base or Path.cwd())
    except ValueError:  # another drive (Windows)
        return html


@dataclass(frozen=True)
class ReportLinks:
    """Where the dashboard's links to files under ``runs_dir`` point.

    Under a Jupyter server that serves ``runs_dir`` (the opslib server extension,
    ``opslib.ops.lab_runs``, sets ``runs_url``), a report's link is its URL there: opened in a
    browser tab it is a page of its own, so every relative link between the pages under runs/
    (index → report → back) stays on that server. JupyterLab's HTML viewer cannot follow them:
    it shows a copy of the page (a blob: document) whose clicks reach ``/files/`` with neither a
    Referer nor the XSRF token, and the server answers "403 Blocking request from unknown origin".
    Without ``runs_url`` (no such server; tests) the link is the path relative to ``base``."""

    base: Path | None = None  # the notebook's folder (default: the current directory)
    runs_dir: Path | None = None
    runs_url: str | None = None  # a URL path ending in "/", e.g. /ops/runs/

    @classmethod
    def for_workspace(cls, ws: Workspace, base: Path | None = None) -> ReportLinks:
        return cls(base=base, runs_dir=ws.settings.runs_dir, runs_url=ws.settings.lab_runs_url)

    def href(self, html: str | None) -> str | None:
        """The link to one file (a report, the run index); None when there is no file."""
        if not html:
            return None
        if self.runs_url and self.runs_dir is not None:
            inside = _relative_inside(Path(html), self.runs_dir)
            if inside is not None:
                return self.runs_url + quote(inside.as_posix())
        return link_path(html, self.base)


def _relative_inside(path: Path, folder: Path) -> Path | None:
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:  # outside runs_dir: the server does not serve it
        return None


# Indexes: what the Metadata DB lists against what the vector store holds -----------------------
@dataclass
class IndexesView:
    table: pd.DataFrame  # per index: role, entries (Metadata DB), vectors (the store's own count), state
    problems: list[str]  # one line per flagged index
    store_error: str | None  # the store cannot be read: the one paragraph that says what to do


def index_records(ws: Workspace) -> tuple[list[dict[str, Any]], str | None]:
    """Every index the Metadata DB lists, the release names or the store holds: its
    ``VectorIndexEntry`` count, the vector count the store itself reports, and a state — ``ok``,
    ``MISSING`` (no collection, though entries or the release name it), ``MISMATCH`` (the counts
    differ) or ``UNREADABLE`` (the store is damaged; the paragraph is returned beside)."""
    with ws.db.read() as session:
        entries = dict(
            session.execute(
                select(VectorIndexEntry.index_name, func.count()).group_by(VectorIndexEntry.index_name)
            ).all()
        )
        release = current_release(session)
    roles: dict[str, str] = {}
    if release is not None:
        for role, name in (
            ("rollback target", release.rollback_snapshot_active_index_name),
            ("previous", release.previous_index_name),
            ("candidate", release.candidate_index_name),
            ("active", release.active_index_name),
        ):
            if name:
                roles[name] = role
    if ws.vectors.embedded:
        forget_local_clients()  # count what is on disk now, not what this process's client remembers
    try:
        held: dict[str, int] | None = ws.vectors.collection_counts()
        error = None
    except VectorStoreDamaged as damaged:
        held, error = None, str(damaged)
    except Exception as unreachable:  # e.g. a Chroma server that is down: the rest of status still shows
        held = None
        error = f"the vector store at {ws.vectors.location} cannot be read: {type(unreachable).__name__}: {unreachable}"
    records = []
    for name in sorted(set(entries) | set(roles) | set(held or {})):
        listed, role = int(entries.get(name, 0)), roles.get(name, "")
        vectors = None if held is None else held.get(name)
        if held is None:
            state, detail = "UNREADABLE", "the vector store cannot be read"
        elif vectors is None:
            if not listed and role not in ("active", "candidate"):
                continue  # nothing listed, nothing held, nothing serving: not an index (yet)
            state = "MISSING"
            detail = f"no collection in the vector store, but the Metadata DB lists {listed} vectors in it" + (
                f"; it is the {role} index" if role else ""
            )
        elif vectors != listed:
            state = "MISMATCH"
            detail = (
                f"the store holds {vectors} vectors, the Metadata DB lists {listed}: {listed - vectors} listed "
                "vectors are not there"
                if vectors < listed
                else f"the store holds {vectors} vectors, the Metadata DB lists {listed}: {vectors - listed} "
                "vectors are not listed (a write between the two stores, or one interrupted there)"
            )
        else:
            state, detail = "ok", ""
        records.append(
            {"index_name": name, "role": role, "entries": listed, "vectors": vectors, "state": state, "detail": detail}
        )
    return records, error


def indexes_view(ws: Workspace) -> IndexesView:
    records, error = index_records(ws)
    problems = [f"{r['index_name']}: {r['state']} — {r['detail']}" for r in records if r["state"] not in ("ok",)]
    table = pd.DataFrame(records, columns=["index_name", "role", "entries", "vectors", "state", "detail"])
    return IndexesView(table, problems if error is None else [], error)


def unusable_datasets(ws: Workspace, limit: int = 10) -> list[dict[str, Any]]:
    """Datasets marked unusable (their artifact gone or changed), newest mark first."""
    with ws.db.read() as session:
        rows = session.scalars(
            select(TrainingDataset)
            .where(TrainingDataset.unusable_at.is_not(None))
            .order_by(TrainingDataset.unusable_at.desc())
            .limit(limit)
        )
        return [
            {"dataset_version": d.dataset_version, "unusable_at": _iso(d.unusable_at), "reason": d.unusable_reason}
            for d in rows
        ]


# Damaged stores: one paragraph instead of a traceback (the CLI and the dashboard) --------------
def metadata_db_damage(error: BaseException) -> str | None:
    """What the database said, if ``error`` says the Metadata DB's files are damaged: SQLite's
    SQLITE_CORRUPT / SQLITE_NOTADB, PostgreSQL's data_corrupted / index_corrupted (XX001/XX002)."""
    if not isinstance(error, DatabaseError):
        return None
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error).strip()
    code = getattr(original, "sqlite_errorcode", None)
    damaged = (
        (isinstance(code, int) and code & 0xFF in (11, 26))
        or getattr(original, "sqlstate", None) in ("XX001", "XX002")
        or any(sign in text.lower() for sign in ("file is not a database", "database disk image is malformed"))
    )
    return (text.splitlines()[0][:300] if text else type(error).__name__) if damaged else None


def store_failure(error: BaseException, db_url: str | None = None) -> str | None:
    """The one paragraph to show for a damaged store — what happened and what to do — or None if
    ``error`` is not one (then it is shown as it is)."""
    if isinstance(error, IntegrityFailure):
        return str(error)  # its message is that paragraph (e.g. VectorStoreDamaged)
    cause = metadata_db_damage(error)
    if cause is None:
        return None
    where = f" at {db_url}" if db_url else ""
    return (
        f"The Metadata DB{where} is damaged ({cause}). It is the source of truth — runs, releases, datasets, "
        "which chunk is in which index — and nothing can be read or changed until it is restored. Stop every "
        "worker, scheduler and endpoint; restore it from your latest backup (SQLite: metadata.db together with "
        "its -wal and -shm files, or a copy made with `sqlite3 metadata.db .backup`; PostgreSQL: your base backup "
        "and WAL archive), then check it with `opsbench status`. It cannot be rebuilt from the other stores; "
        "after a restore, `opsbench reindex-active` makes the active index agree with it again."
    )


# A read-only summary of the workspace, from the Metadata DB (the SOT).
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def workspace_status(ws: Workspace, recent: int = 10) -> dict[str, Any]:
    now, stall = utcnow(), timedelta(seconds=ws.settings.run_stall_after_s)
    revision, head = current_revision(ws.db), head_revision()
    status: dict[str, Any] = {
        "workspace": str(ws.settings.workspace),
        "db_url": ws.db.engine.url.render_as_string(hide_password=True),
        "schema": {"current": revision, "head": head},
    }
    if revision != head:  # an outdated schema lacks columns the queries below read
        status["hint"] = schema_hint(revision, head)
        return status
    with ws.db.read() as session:
        status["release"] = release_state(current_release(session))
        status["models"] = [
            {
                "model_version": m.model_version,
                "base_model_version": m.base_model_version,
                "run_id": m.run_id,
                "created_at": _iso(m.created_at),
            }
            for m in session.scalars(select(ModelVersion).order_by(ModelVersion.created_at))
        ]
        status["corpus"] = {
            "videos_by_status": dict(session.execute(select(Video.status, func.count()).group_by(Video.status)).all()),
            "chunks": session.scalar(select(func.count()).select_from(Chunk)),
            "index_entries": dict(
                session.execute(
                    select(VectorIndexEntry.index_name, func.count()).group_by(VectorIndexEntry.index_name)
                ).all()
            ),
            "imports": [c.name for c in session.scalars(select(CorpusImport).order_by(CorpusImport.name))],
        }
        released = released_run_ids(session)
        status["runs"] = [
            {
                "id": r.id,
                "status": r.status.value,
                "outcome": run_outcome(
                    r, released=r.id in released, stalled=is_stalled(r, stall.total_seconds(), now)
                ).value,
                "failed_stage": r.failed_stage and r.failed_stage.value,
                "failure_type": r.failure_type and r.failure_type.value,
                "created_at": _iso(r.created_at),
            }
            for r in session.scalars(select(MLPipelineRun).order_by(MLPipelineRun.id.desc()).limit(recent))
        ]
        status["queue"] = {
            "unacked": session.scalar(
                select(func.count()).select_from(OpsMessage).where(OpsMessage.acked_at.is_(None))
            ),
            "parked": [
                {"id": m.id, "type": m.message_type, "attempt": m.attempt, "reason": m.outcome_reason}
                for m in session.scalars(
                    select(OpsMessage).where(OpsMessage.outcome == MessageOutcome.PARKED).order_by(OpsMessage.id)
                )
            ],
        }
        status["stage_executions"] = [
            {
                "id": e.id,
                "stage": e.stage,
                "status": e.status.value,
                "run_id": e.run_id,
                "started_at": _iso(e.started_at),
                "finished_at": _iso(e.finished_at),
                "heartbeat_at": _iso(e.heartbeat_at),
                # RUNNING, but its process has not beaten for run_stall_after_s: the next
                # reconcile (scheduler or worker pass) marks it ABANDONED
                "stalled": e.status is ExecutionStatus.RUNNING and now - (e.heartbeat_at or e.started_at) > stall,
                "output_html": e.output_html,
                "error": e.error,
            }
            for e in session.scalars(select(StageExecution).order_by(StageExecution.id.desc()).limit(recent))
        ]
    status["corpus"]["videos_by_status"] = {k.value: v for k, v in status["corpus"]["videos_by_status"].items()}
    status["schedules"] = schedule_status(ws)
    status["release_driver"] = release_driver(ws)
    candidate_index = (status["release"] or {}).get("candidate_index_name")
    if candidate_index:
        shards = shard_progress(ws.db, candidate_index, stale_after_s=ws.settings.lease_stale_after_s)
        status["reindex_shards"] = {
            "index_name": candidate_index,
            "done": shards.done,
            "total": shards.total,
            "held": shards.held,
            "chunks_done": shards.chunks_done,
            "chunks": shards.chunks,
        }
    status["endpoints"] = [
        {key: record[key] for key in ("endpoint", "address", "state", "ready", "serving", "release row")}
        for record in endpoint_records(ws)[0]
    ]
    # What the vector store itself holds, against the entries (a dropped collection is MISSING).
    status["indexes"], store_error = index_records(ws)
    status["vector_store"] = {"location": ws.vectors.location, "error": store_error}
    with ws.db.read() as session:
        eligible = latest_eligible_dataset(session)
    status["datasets"] = {
        "latest_eligible": eligible.dataset_version if eligible is not None else None,
        "unusable": unusable_datasets(ws),
    }
    return status


# Serving endpoints (opsbench serve replicas) ---------------------------------------------------
@dataclass
class ServingView:
    endpoints: pd.DataFrame  # one row per registered replica
    like_rate: pd.DataFrame  # like rate per day (rows) and serving model version (columns)
    active_model_version: str | None
    note: str = ""


def endpoint_records(ws: Workspace, now: datetime | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One record per registered endpoint (state, readiness, lag behind the release row), and the
    active model version the lag is measured against."""
    now = now or utcnow()
    stale_after = timedelta(seconds=ws.settings.endpoint_stale_after_s)
    with ws.db.read() as session:
        release = current_release(session)
        rows = list(session.scalars(select(ServingEndpoint).order_by(ServingEndpoint.endpoint_id)))
    active = release.active_model_version if release is not None else None
    records = []
    for row in rows:
        state = "stopped" if row.stopped_at else ("live" if now - row.heartbeat_at <= stale_after else "stale")
        if row.serving_model_version is None:
            lag = "—"
        elif row.serving_model_version == active:
            lag = "in step"
        else:
            lag = f"behind: serves {row.serving_model_version}, the release row says {active}"
        records.append(
            {
                "endpoint": row.endpoint_id,
                "address": row.address,
                "state": state,
                "ready": "yes" if row.ready else f"no — {row.ready_reason or '?'}",
                "serving": row.serving_model_version or "—",
                "release row": lag,
                "loaded": ", ".join(row.loaded_versions or []),
                "heartbeat (s ago)": round((now - row.heartbeat_at).total_seconds(), 1),
                "started_at": row.started_at,
            }
        )
    return records, active


def serving_view(ws: Workspace, *, feedback_days: int = 7, scrape: bool = True) -> ServingView:
    """Registered endpoints (state, lag behind the release row, traffic from their /metrics) and
    the like rate per model version over the last ``feedback_days``."""
    from opslib.lifecycle.feedback.health import feedback_health
    from opslib.service.client import EndpointError, scrape_traffic

    now = utcnow()
    records, active = endpoint_records(ws, now)
    for record in records:
        started_at = record.pop("started_at")
        record["requests/s (since start)"] = ""
        record["search p95 (since start)"] = ""
        if scrape and record["state"] == "live":
            try:
                traffic = scrape_traffic(record["address"])
                uptime = max((now - started_at).total_seconds(), 1.0)
                record["requests/s (since start)"] = round(traffic.api_requests / uptime, 3)
                p95 = traffic.search_p95_s
                record["search p95 (since start)"] = "—" if p95 is None else f"≤ {p95 * 1000:.0f} ms"
            except EndpointError as error:
                record["requests/s (since start)"] = f"unreachable: {error}"
    note = (
        "no endpoint has registered: start one with `opsbench serve`"
        if not records
        else "requests/s and p95 are read from each live endpoint's /metrics (since it started)"
    )
    health = feedback_health(ws.objects, feedback_days, now)
    return ServingView(
        pd.DataFrame(records, columns=list(records[0]) if records else ["endpoint"]),
        health.like_rate_by_day(),
        active,
        note,
    )
