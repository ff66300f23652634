"""Alerts: what needs an operator now, one self-explaining line per problem.

``problems(ws)`` reads the Metadata DB (and the vector store's counts) and lists what is wrong;
``opsbench status --check`` prints it and exits 1 when the list is not empty (for cron and
monitoring), ``opsbench status`` and the dashboard show it first. Nothing here changes state.

Two sorts of problem:

- a **condition** alerts while it holds: a run or stage execution ``STALLED``, a schedule tick
  overdue or stalled, the newest eligible dataset too old, an index whose vectors are gone, an
  endpoint not ready, behind the release row, silent, or too few of them;
- an **incident** is over when it is seen — a run FAILED, a schedule tick FAILED, a stage
  execution ABANDONED, a message parked as poison, a dataset marked unusable — so it alerts for
  ``alert_incident_window_h`` after it happened, and less when something later clears it (a run
  that passes, the same stage succeeding, the schedule's next tick). Otherwise an old failure
  would alert for ever, and one that mattered on Friday would be gone by Monday.

Every threshold is a setting (``alert_*``, docs/operator-guide.md#alerts).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from opslib.control.outcomes import RunOutcome
from opslib.control.release import current_release
from opslib.control.runs import is_stalled, latest_eligible_dataset
from opslib.control.shards import shard_progress
from opslib.db.models import (
    ExecutionStatus,
    FailureType,
    MessageOutcome,
    MLPipelineRun,
    OpsMessage,
    RunStatus,
    ScheduleTick,
    ServingEndpoint,
    StageExecution,
    TickStatus,
    TrainingDataset,
    utcnow,
)
from opslib.execution.schedule import latest_tick, schedules
from opslib.infra.workspace import Workspace
from opslib.ops.monitor import index_records


class ProblemKind(enum.StrEnum):
    """The first word of a problem's line: what is wrong (the outcome vocabulary's words where it has one)."""

    FAILED = "FAILED"  # a run (FAIL or ERROR) or a schedule tick failed
    STALLED = "STALLED"  # RUNNING / STARTED, but no heartbeat past the stall limit
    ABANDONED = "ABANDONED"  # a stage execution whose process died
    OVERDUE = "OVERDUE"  # a schedule's due tick was not claimed within the grace
    LAGGING = "LAGGING"  # no eligible dataset of recent feedback
    UNUSABLE = "UNUSABLE"  # a dataset whose artifact is gone or changed
    MISSING = "MISSING"  # an index in use has no collection in the vector store
    MISMATCH = "MISMATCH"  # an index in use lacks vectors the Metadata DB lists
    UNREADABLE = "UNREADABLE"  # the vector store cannot be read
    NOT_READY = "NOT READY"  # a live endpoint says it is not ready
    BEHIND = "BEHIND"  # a live endpoint serves another model than the release row
    SILENT = "SILENT"  # an endpoint stopped heartbeating without a clean stop
    TOO_FEW = "TOO FEW"  # fewer live, ready endpoints than alert_endpoints_expected
    PARKED = "PARKED"  # a message parked as poison (past its delivery cap; never redelivered)


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    subject: str  # what it is about: "run 12", "schedule dataset", "index idx-…", "endpoint host:8000"
    message: str  # what is wrong, since when, against which limit, and what to look at

    def line(self) -> str:
        return f"{self.kind.value} {self.subject}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "subject": self.subject, "message": self.message, "line": self.line()}


def _at(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%MZ}"


def _hours(delta: timedelta) -> str:
    return f"{delta / timedelta(hours=1):.0f} h"


def problems(ws: Workspace, now: datetime | None = None) -> list[Problem]:
    """Everything that needs an operator now, in a fixed order (runs, stage executions, schedules,
    datasets, indexes, endpoints, queue); empty when all is well."""
    now = now or utcnow()
    found: list[Problem] = []
    for check in (_runs, _executions, _schedules, _datasets, _indexes, _endpoints, _queue):
        found.extend(check(ws, now))
    return found


# Runs -------------------------------------------------------------------------------------------
def _runs(ws: Workspace, now: datetime) -> list[Problem]:
    stall = ws.settings.run_stall_after_s
    since = now - timedelta(hours=ws.settings.alert_incident_window_h)
    found = []
    with ws.db.read() as session:
        for run in session.scalars(
            select(MLPipelineRun).where(MLPipelineRun.status == RunStatus.RUNNING).order_by(MLPipelineRun.id)
        ):
            if is_stalled(run, stall, now):
                last = run.heartbeat_at or run.created_at
                found.append(
                    Problem(
                        ProblemKind.STALLED,
                        f"run {run.id}",
                        f"no heartbeat since {_at(last)} (stall limit {stall:.0f} s): is a worker running? "
                        "its next pass resumes the run or fails it",
                    )
                )
        # A failure alerts until a later run passes, and for alert_incident_window_h at most.
        passed = session.scalar(
            select(func.max(MLPipelineRun.id)).where(MLPipelineRun.status == RunStatus.READY_FOR_RELEASE)
        )
        failed = session.scalars(
            select(MLPipelineRun)
            .where(
                MLPipelineRun.status == RunStatus.FAILED,
                MLPipelineRun.id > (passed or 0),
                MLPipelineRun.updated_at >= since,
            )
            .order_by(MLPipelineRun.id)
        )
        for run in failed:
            outcome = RunOutcome.FAIL if run.failure_type is FailureType.FAIL else RunOutcome.ERROR
            what = "quality below the criteria" if outcome is RunOutcome.FAIL else "a system error"
            stage = f" at {run.failed_stage.value}" if run.failed_stage else ""
            reason = " ".join((run.failure_reason or "no reason recorded").split())[:200]
            found.append(
                Problem(
                    ProblemKind.FAILED,
                    f"run {run.id}",
                    f"{outcome.value} ({what}){stage}, {_at(run.updated_at)}: {reason}",
                )
            )
    return found


# Stage executions -------------------------------------------------------------------------------
def _executions(ws: Workspace, now: datetime) -> list[Problem]:
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    since = now - timedelta(hours=ws.settings.alert_incident_window_h)
    found = []
    with ws.db.read() as session:
        for e in session.scalars(
            select(StageExecution).where(StageExecution.status == ExecutionStatus.RUNNING).order_by(StageExecution.id)
        ):
            last = e.heartbeat_at or e.started_at
            if now - last > stall:
                found.append(
                    Problem(
                        ProblemKind.STALLED,
                        _execution(e),
                        f"no heartbeat since {_at(last)} (stall limit {stall.total_seconds():.0f} s): its process "
                        "died or hangs; the next scheduler or worker pass marks it ABANDONED",
                    )
                )
        abandoned = list(
            session.scalars(
                select(StageExecution)
                .where(
                    StageExecution.status == ExecutionStatus.ABANDONED,
                    func.coalesce(StageExecution.finished_at, StageExecution.started_at) >= since,
                )
                .order_by(StageExecution.id)
            )
        )
        # The same stage succeeding later clears it.
        succeeded = dict(
            session.execute(
                select(StageExecution.stage, func.max(StageExecution.id))
                .where(StageExecution.status == ExecutionStatus.SUCCEEDED)
                .group_by(StageExecution.stage)
            ).all()
        )
    for e in abandoned:
        if succeeded.get(e.stage, 0) > e.id:
            continue
        why = " ".join(str((e.error or {}).get("evalue") or "its process died").split())[:200]
        found.append(
            Problem(
                ProblemKind.ABANDONED,
                _execution(e),
                f"ended {_at(e.finished_at or e.started_at)}: {why}; its partial notebook is {e.output_ipynb or '—'}",
            )
        )
    return found


def _execution(e: StageExecution) -> str:
    run = f", run {e.run_id}" if e.run_id is not None else ""
    return f"stage execution {e.id} ({e.stage}{run})"


# Schedules --------------------------------------------------------------------------------------
def _schedules(ws: Workspace, now: datetime) -> list[Problem]:
    settings = ws.settings
    grace = timedelta(seconds=settings.alert_schedule_grace_s)
    stall = timedelta(seconds=settings.run_stall_after_s)
    since = now - timedelta(hours=settings.alert_incident_window_h)
    found = []
    with ws.db.read() as session:
        # Until a scheduler has claimed a tick here, nobody runs one (a new or a demo workspace):
        # "overdue" would be every check's answer.
        deployed = session.scalar(select(func.count()).select_from(ScheduleTick)) or 0
        for schedule in schedules(ws):
            subject = f"schedule {schedule.name}"
            last = session.scalars(
                select(ScheduleTick)
                .where(ScheduleTick.schedule == schedule.name)
                .order_by(ScheduleTick.due_at.desc())
                .limit(1)
            ).first()
            expected = latest_tick(schedule.cron, settings.schedule_timezone, now - grace)
            if deployed and (last is None or last.due_at < expected):
                ran = f"its last claimed tick is {_at(last.due_at)} ({last.status.value})" if last else "it never ran"
                found.append(
                    Problem(
                        ProblemKind.OVERDUE,
                        subject,
                        f"the tick due {_at(expected)} ({schedule.cron!r}, {settings.schedule_timezone}) was not "
                        f"claimed within {grace.total_seconds():.0f} s; {ran}: is `opsbench schedule` running?",
                    )
                )
            if last is None:
                continue
            seen = last.heartbeat_at or last.started_at
            if last.status is TickStatus.STARTED and now - seen > stall:
                found.append(
                    Problem(
                        ProblemKind.STALLED,
                        subject,
                        f"the tick due {_at(last.due_at)} is STARTED with no heartbeat since {_at(seen)} (stall "
                        f"limit {stall.total_seconds():.0f} s): its scheduler died; the next pass takes it over",
                    )
                )
            elif last.status is TickStatus.FAILED and (last.finished_at or last.started_at) >= since:
                outcome = " ".join((last.outcome or "no outcome recorded").split())[:200]
                found.append(
                    Problem(
                        ProblemKind.FAILED,
                        subject,
                        f"the tick due {_at(last.due_at)} failed (not retried; the next tick or an on-demand "
                        f"run is): {outcome}",
                    )
                )
    return found


# Datasets ---------------------------------------------------------------------------------------
def _datasets(ws: Workspace, now: datetime) -> list[Problem]:
    limit = timedelta(hours=ws.settings.alert_dataset_lag_h)
    since = now - timedelta(hours=ws.settings.alert_incident_window_h)
    found = []
    with ws.db.read() as session:
        eligible = latest_eligible_dataset(session)
        newest = session.scalars(
            select(TrainingDataset)
            .order_by(TrainingDataset.source_window_end.desc(), TrainingDataset.created_at.desc())
            .limit(1)
        ).first()
        unusable = list(
            session.scalars(
                select(TrainingDataset)
                .where(TrainingDataset.unusable_at >= since)
                .order_by(TrainingDataset.unusable_at)
            )
        )
    # No dataset at all: none was ever built here (a new workspace); the schedule checks cover a
    # scheduler that should have built one.
    if eligible is None and newest is not None:
        why = (
            f"marked unusable: {newest.unusable_reason}"
            if newest.unusable_at is not None
            else "ineligible: " + "; ".join(newest.ineligible_reasons)
            if not newest.eligible
            else "?"
        )
        found.append(
            Problem(
                ProblemKind.LAGGING,
                "datasets",
                f"no eligible dataset: the newest, {newest.dataset_version} (window ending "
                f"{_at(newest.source_window_end)}), is {why}",
            )
        )
    elif eligible is not None and now - eligible.source_window_end > limit:
        found.append(
            Problem(
                ProblemKind.LAGGING,
                "datasets",
                f"the newest eligible dataset, {eligible.dataset_version}, covers feedback up to "
                f"{_at(eligible.source_window_end)}, {_hours(now - eligible.source_window_end)} ago (limit "
                f"{_hours(limit)}): is the dataset schedule running, and are its datasets eligible?",
            )
        )
    for d in unusable:
        assert d.unusable_at is not None  # selected by it
        found.append(
            Problem(
                ProblemKind.UNUSABLE,
                f"dataset {d.dataset_version}",
                f"since {_at(d.unusable_at)}: {d.unusable_reason}; it is never picked again",
            )
        )
    return found


# Indexes ----------------------------------------------------------------------------------------
def _indexes(ws: Workspace, now: datetime) -> list[Problem]:
    records, store_error = index_records(ws)
    if store_error is not None:
        return [Problem(ProblemKind.UNREADABLE, f"vector store {ws.vectors.location}", store_error)]
    with ws.db.read() as session:
        release = current_release(session)
    building = (
        release is not None
        and release.candidate_index_name is not None
        and shard_progress(ws.db, release.candidate_index_name, stale_after_s=ws.settings.lease_stale_after_s).held > 0
    )
    found = []
    for record in records:
        role: str = record["role"]
        if not role:
            continue  # no longer serving nor kept for a rollback: history
        subject = f"index {record['index_name']} ({role})"
        if record["state"] == "MISSING" and not (role == "candidate" and record["entries"] == 0):
            # (a candidate with nothing listed yet may have no collection yet: nothing is lost)
            found.append(Problem(ProblemKind.MISSING, subject, record["detail"]))
        elif record["state"] == "MISMATCH" and not (role == "candidate" and building):
            # Vectors are written before their entries: while the candidate is being built its
            # counts differ by the batches in flight, which is no finding.
            found.append(
                Problem(
                    ProblemKind.MISMATCH,
                    subject,
                    f"{record['detail']}; the runbook: docs/reliability.md (Verified reads)",
                )
            )
    return found


# Endpoints --------------------------------------------------------------------------------------
def _endpoints(ws: Workspace, now: datetime) -> list[Problem]:
    settings = ws.settings
    stale_after = timedelta(seconds=settings.endpoint_stale_after_s)
    loading = timedelta(seconds=settings.endpoint_wait_s)
    silent_for = timedelta(hours=settings.alert_endpoint_stale_h)
    with ws.db.read() as session:
        release = current_release(session)
        rows = list(
            session.scalars(
                select(ServingEndpoint)
                .where(ServingEndpoint.stopped_at.is_(None))
                .order_by(ServingEndpoint.endpoint_id)
            )
        )
    active = release.active_model_version if release is not None else None
    switched = release.switched_at if release is not None else None
    found = []
    healthy = 0
    for row in rows:
        subject = f"endpoint {row.endpoint_id} ({row.address})"
        silent = now - row.heartbeat_at
        if silent > stale_after:
            if silent <= silent_for:
                found.append(
                    Problem(
                        ProblemKind.SILENT,
                        subject,
                        f"no heartbeat since {_at(row.heartbeat_at)} (limit {stale_after.total_seconds():.0f} s) and "
                        f"no clean stop: killed or hung; restart it (alerted for "
                        f"{settings.alert_endpoint_stale_h:.0f} h, then counted as removed)",
                    )
                )
            continue
        if not row.ready:
            if now - row.started_at > loading:  # younger: still loading its models
                found.append(
                    Problem(
                        ProblemKind.NOT_READY,
                        subject,
                        f"live but not ready since it started {_at(row.started_at)}: {row.ready_reason or '?'}",
                    )
                )
            continue
        # An endpoint follows the release row within a heartbeat or two: behind after that is stuck.
        if (
            active is not None
            and row.serving_model_version not in (None, active)
            and (switched is None or now - switched > stale_after)
        ):
            found.append(
                Problem(
                    ProblemKind.BEHIND,
                    subject,
                    f"serves {row.serving_model_version}, the release row says {active} (switched "
                    f"{_at(switched) if switched else '—'}): it does not follow the release row",
                )
            )
            continue
        healthy += 1
    expected = settings.alert_endpoints_expected
    if healthy < expected:
        found.append(
            Problem(
                ProblemKind.TOO_FEW,
                "endpoints",
                f"{healthy} live, ready and in step; OPS_ALERT_ENDPOINTS_EXPECTED says {expected}: "
                "start `opsbench serve` replicas",
            )
        )
    return found


# Queue ------------------------------------------------------------------------------------------
def _queue(ws: Workspace, now: datetime) -> list[Problem]:
    since = now - timedelta(hours=ws.settings.alert_incident_window_h)
    with ws.db.read() as session:
        parked = list(
            session.scalars(
                select(OpsMessage)
                .where(OpsMessage.outcome == MessageOutcome.PARKED, OpsMessage.acked_at >= since)
                .order_by(OpsMessage.id)
            )
        )
    return [
        Problem(
            ProblemKind.PARKED,
            f"message {m.id} ({m.message_type})",
            f"parked as poison {_at(m.acked_at or m.issued_at)} after {m.attempt} deliveries, never redelivered: "
            f"{m.outcome_reason or '?'}; request it again once the cause is fixed",
        )
        for m in parked
    ]
