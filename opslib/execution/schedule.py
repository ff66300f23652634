"""Schedules: run what is due per the cron expressions in settings (``opsbench schedule``).

Two schedules, both read in ``settings.schedule_timezone`` (default Asia/Seoul):

- ``dataset`` (``settings.dataset_schedule``, default ``0 3 * * *``, daily 03:00): executes stage
  ``20_build_dataset`` with ``as_of`` = the tick time and ``settings.dataset_source_window_days``;
- ``training`` (``settings.training_schedule``, default ``0 4 * * 1``, Monday 04:00): queues a
  ``TRAINING_REQUEST`` (``trigger_source="schedule"``); the worker picks the dataset.

What ran is remembered in the Metadata DB, one ``ScheduleTick`` row per (schedule, tick):

- Only the **latest tick ≤ now** is considered. A tick missed while nothing ran (machine down)
  is run at the next invocation — once, however many ticks were missed: the latest tick covers
  their work (its dataset window ends later and spans theirs; a training run uses the latest
  eligible dataset anyway, so older requests would only be superseded).
- A tick is **claimed by inserting its row** (``STARTED``). UNIQUE(schedule, due_at) makes that
  safe between concurrent schedulers: the loser's insert fails and it skips the tick.
- A repeated invocation within the same tick finds the row and does nothing. A ``FAILED`` tick is
  not retried by the scheduler (the next tick, or an operator's on-demand run, is).
- While its job runs, the scheduler holding a tick stamps the row's ``heartbeat_at`` every
  ``settings.heartbeat_interval_s`` (``opslib.infra.heartbeat``). A ``STARTED`` row with no heartbeat
  for ``settings.run_stall_after_s`` is a crashed scheduler's and is claimed again (``attempt``
  + 1, compare-and-swap on ``attempt``); a long job whose scheduler is alive is never taken over.
- The job's result is recorded as ``DONE`` / ``FAILED`` with an ``outcome`` text. The training
  request is published in the same transaction that marks its tick ``DONE``: a message exists iff
  its tick is done, and a scheduler whose claim was taken over cannot publish a second one.

Every pass first ends the records of dead processes: a RUNNING ``StageExecution`` with no
heartbeat for ``settings.run_stall_after_s`` (by the real clock, whatever ``now`` pretends) is
marked ``ABANDONED`` (``opslib.execution.runner.reconcile_executions``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opslib.control.messages import new_training_request
from opslib.control.queue import publish
from opslib.db.models import ScheduleTick, TickStatus, utcnow
from opslib.errors import Invalid
from opslib.execution.context import recorded_outputs
from opslib.execution.runner import reconcile_executions, run_stage
from opslib.infra.heartbeat import heartbeating
from opslib.infra.logs import get_logger, new_trace_id, trace
from opslib.infra.workspace import Workspace

log = get_logger(__name__)

DATASET = "dataset"
TRAINING = "training"
DATASET_STAGE = "20_build_dataset"


class ScheduleError(Invalid, ValueError):
    pass


# Tick arithmetic ----------------------------------------------------------------------------
def _local(now: datetime, tz_name: str) -> datetime:
    if now.tzinfo is None:
        raise ScheduleError("now: must carry a UTC offset")
    return now.astimezone(ZoneInfo(tz_name))


def latest_tick(cron: str, tz_name: str, now: datetime) -> datetime:
    """The latest time ≤ ``now`` that ``cron`` (read in time zone ``tz_name``) fires, in UTC."""
    local = _local(now, tz_name).replace(second=0, microsecond=0) + timedelta(minutes=1)
    try:  # get_prev is strictly before its start: start just after now's minute so "≤ now" holds
        tick: datetime = croniter(cron, local).get_prev(datetime)
    except Exception as exc:
        raise ScheduleError(f"cron {cron!r}: {exc}") from None
    return tick.astimezone(UTC)


def next_tick(cron: str, tz_name: str, now: datetime) -> datetime:
    """The first time > ``now`` that ``cron`` fires, in UTC."""
    try:
        tick: datetime = croniter(cron, _local(now, tz_name)).get_next(datetime)
    except ScheduleError:
        raise
    except Exception as exc:
        raise ScheduleError(f"cron {cron!r}: {exc}") from None
    return tick.astimezone(UTC)


# Jobs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClaimedTick:
    """A tick this scheduler holds: its ``ScheduleTick`` row is STARTED with this ``attempt``."""

    row_id: int
    schedule: str
    due_at: datetime
    attempt: int
    trace_id: str


@dataclass(frozen=True)
class JobOutcome:
    """What a job did. ``commit`` (optional) runs inside the transaction that marks the tick
    DONE, so its changes exist iff the tick is done; it returns text for the outcome."""

    ok: bool
    outcome: str
    commit: Callable[[Session], str] | None = None


Job = Callable[[Workspace, ClaimedTick], JobOutcome]


def dataset_job(ws: Workspace, tick: ClaimedTick) -> JobOutcome:
    """Execute 20_build_dataset for the window ending at the tick time."""
    params = {"as_of": tick.due_at.isoformat(), "source_window_days": ws.settings.dataset_source_window_days, "seed": 0}
    result = run_stage(ws, DATASET_STAGE, params, trace_id=tick.trace_id)
    head = f"{DATASET_STAGE} execution {result.execution_id} {result.status.value}"
    if result.error:
        head += f" at cell {result.error['cell_index']}: {result.error['ename']}: {result.error['evalue']}"
    built = recorded_outputs(ws, result.execution_id).get("dataset_version")
    if built:
        head += f"; dataset {built}"
    return JobOutcome(result.ok, f"{head}; report {result.output_html}")


def training_job(ws: Workspace, tick: ClaimedTick) -> JobOutcome:
    """Queue a TRAINING_REQUEST (published with the tick's DONE, in one transaction)."""
    message = new_training_request(
        trigger_source="schedule",
        requested_by="scheduler",
        trace_id=tick.trace_id,
        reason=f"training schedule tick {tick.due_at.isoformat()}",
    )

    def commit(session: Session) -> str:
        return f"TRAINING_REQUEST queued as message {publish(ws.db, message, session=session)}"

    return JobOutcome(True, "", commit)


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    job: Job


def schedules(ws: Workspace) -> tuple[Schedule, ...]:
    """The schedules from settings, in the order they run (dataset before training)."""
    return (
        Schedule(DATASET, ws.settings.dataset_schedule, dataset_job),
        Schedule(TRAINING, ws.settings.training_schedule, training_job),
    )


def schedule_status(ws: Workspace, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per schedule: its cron, the next tick, and what the last claimed tick did (from the DB)."""
    now = now or utcnow()
    rows = []
    with ws.db.read() as session:
        for schedule in schedules(ws):
            last = session.scalars(
                select(ScheduleTick)
                .where(ScheduleTick.schedule == schedule.name)
                .order_by(ScheduleTick.due_at.desc())
                .limit(1)
            ).first()
            rows.append(
                {
                    "schedule": schedule.name,
                    "cron": schedule.cron,
                    "timezone": ws.settings.schedule_timezone,
                    "next_due_at": next_tick(schedule.cron, ws.settings.schedule_timezone, now).isoformat(),
                    "last_due_at": last.due_at.isoformat() if last else None,
                    "last_status": last.status.value if last else None,
                    "last_outcome": last.outcome if last else None,
                }
            )
    return rows


# Results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TickResult:
    schedule: str
    due_at: datetime
    status: Literal["DONE", "FAILED", "SKIPPED"]
    attempt: int | None
    detail: str
    next_due_at: datetime | None = None


@dataclass
class ScheduleReport:
    now: datetime
    results: list[TickResult] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)  # StageExecution ids this pass marked ABANDONED

    @property
    def ran(self) -> list[TickResult]:
        return [r for r in self.results if r.status != "SKIPPED"]

    @property
    def failed(self) -> list[TickResult]:
        return [r for r in self.results if r.status == "FAILED"]


# Claim / finish -----------------------------------------------------------------------------
def _claim(ws: Workspace, name: str, due_at: datetime, now: datetime) -> ClaimedTick | str:
    """Claim tick (name, due_at): a ``ClaimedTick``, or why it is skipped."""
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    trace_id = new_trace_id()
    with ws.db.transaction() as session:
        try:
            with session.begin_nested():  # a failed insert rolls back only this savepoint
                row = ScheduleTick(
                    schedule=name,
                    due_at=due_at,
                    attempt=1,
                    status=TickStatus.STARTED,
                    started_at=now,
                    heartbeat_at=now,
                    trace_id=trace_id,
                )
                session.add(row)
                session.flush()
            return ClaimedTick(row.id, name, due_at, 1, trace_id)
        except IntegrityError:
            pass  # the tick already has a row: decide from it
        existing = session.scalars(
            select(ScheduleTick).where(ScheduleTick.schedule == name, ScheduleTick.due_at == due_at)
        ).one()
        if existing.status is TickStatus.DONE:
            return f"already done (attempt {existing.attempt}, {existing.finished_at:%Y-%m-%d %H:%M} UTC)"
        if existing.status is TickStatus.FAILED:
            return (
                f"failed (attempt {existing.attempt}): {existing.outcome}; not retried — "
                "the next tick or an on-demand run will"
            )
        last_seen = existing.heartbeat_at or existing.started_at
        if last_seen > now - stall:
            return (
                f"in progress elsewhere (attempt {existing.attempt} started "
                f"{existing.started_at:%Y-%m-%d %H:%M:%S} UTC, heartbeat {last_seen:%H:%M:%S} UTC)"
            )
        # No heartbeat for run_stall_after_s: its scheduler crashed. Take it over, once.
        attempt = existing.attempt + 1
        taken = cast(  # DML: Session.execute is typed Result, returns a CursorResult
            CursorResult[Any],
            session.execute(
                update(ScheduleTick)
                .where(
                    ScheduleTick.id == existing.id,
                    ScheduleTick.attempt == existing.attempt,
                    ScheduleTick.status == TickStatus.STARTED,
                )
                .values(attempt=attempt, started_at=now, heartbeat_at=now, trace_id=trace_id)
            ),
        ).rowcount
        if not taken:
            return "taken over by another scheduler"
        log.warning(
            "schedule tick retried: its previous attempt stopped heartbeating",
            extra={
                "schedule": name,
                "due_at": due_at.isoformat(),
                "attempt": attempt,
                "previous_started_at": existing.started_at.isoformat(),
                "previous_heartbeat_at": last_seen.isoformat(),
            },
        )
        return ClaimedTick(existing.id, name, due_at, attempt, trace_id)


def _beat(ws: Workspace, tick: ClaimedTick, clock: Callable[[], datetime]) -> bool:
    """Stamp the tick's heartbeat; False once it is no longer this attempt's (finished, taken over)."""
    with ws.db.transaction() as session:
        return bool(
            cast(
                CursorResult[Any],
                session.execute(
                    update(ScheduleTick)
                    .where(
                        ScheduleTick.id == tick.row_id,
                        ScheduleTick.attempt == tick.attempt,
                        ScheduleTick.status == TickStatus.STARTED,
                    )
                    .values(heartbeat_at=clock())
                ),
            ).rowcount
        )


# Private control flow: never escapes (``_finish`` turns it into a SKIPPED tick).
class _Superseded(Exception):
    pass


def _finish(ws: Workspace, tick: ClaimedTick, result: JobOutcome) -> TickResult:
    """Record DONE / FAILED (with the job's ``commit``, atomically) unless the claim was lost."""

    def record(status: TickStatus, outcome: str, commit: Callable[[Session], str] | None) -> str:
        with ws.db.transaction() as session:
            if commit is not None:
                outcome = "; ".join(t for t in (outcome, commit(session)) if t)
            changed = cast(
                CursorResult[Any],
                session.execute(
                    update(ScheduleTick)
                    .where(
                        ScheduleTick.id == tick.row_id,
                        ScheduleTick.attempt == tick.attempt,
                        ScheduleTick.status == TickStatus.STARTED,
                    )
                    .values(status=status, finished_at=utcnow(), outcome=outcome)
                ),
            ).rowcount
            if not changed:
                raise _Superseded  # rolls back the commit's changes too
        return outcome

    def discarded() -> TickResult:
        log.warning(
            "schedule tick result discarded: another scheduler took the tick over",
            extra={"schedule": tick.schedule, "due_at": tick.due_at.isoformat(), "attempt": tick.attempt},
        )
        return TickResult(
            tick.schedule,
            tick.due_at,
            "SKIPPED",
            tick.attempt,
            "result discarded: the tick was taken over (no heartbeat for run_stall_after_s)",
        )

    status = TickStatus.DONE if result.ok else TickStatus.FAILED
    try:
        outcome = record(status, result.outcome, result.commit if result.ok else None)
    except _Superseded:
        return discarded()
    except Exception as exc:  # the commit (or the DB) failed: the tick failed
        status = TickStatus.FAILED
        try:
            outcome = record(status, "; ".join(t for t in (result.outcome, f"{type(exc).__name__}: {exc}") if t), None)
        except _Superseded:
            return discarded()
    log_at = log.info if status is TickStatus.DONE else log.error
    log_at(
        "schedule tick finished",
        extra={
            "schedule": tick.schedule,
            "due_at": tick.due_at.isoformat(),
            "attempt": tick.attempt,
            "status": status.value,
            "outcome": outcome,
        },
    )
    return TickResult(
        tick.schedule, tick.due_at, "DONE" if status is TickStatus.DONE else "FAILED", tick.attempt, outcome
    )


# Entry points -------------------------------------------------------------------------------
def _clock_from(now: datetime | None) -> Callable[[], datetime]:
    """The real UTC clock, or one that starts at ``now`` (a pretended time) and runs in real time."""
    if now is None:
        return utcnow
    started = time.monotonic()
    return lambda: now + timedelta(seconds=time.monotonic() - started)


def run_due(ws: Workspace, now: datetime | None = None) -> ScheduleReport:
    """Run each schedule's latest tick ≤ ``now`` (default: the current time) unless it already ran.

    A job's failure is recorded (FAILED) and reported, not raised; the other schedules still run.
    First, RUNNING stage executions whose process died are marked ABANDONED (``report.abandoned``).
    """
    tz_name = ws.settings.schedule_timezone
    report = ScheduleReport(now or utcnow())
    try:  # liveness is judged by the real clock, never a pretended one
        report.abandoned = reconcile_executions(ws)
    except Exception:  # a failed reconcile must not stop the ticks; the next pass tries again
        log.exception("stage executions not reconciled")
    clock = _clock_from(now)
    for schedule in schedules(ws):
        at = clock()  # the clock moves on while a job runs
        due_at = latest_tick(schedule.cron, tz_name, at)
        following = next_tick(schedule.cron, tz_name, at)
        claimed = _claim(ws, schedule.name, due_at, at)
        if isinstance(claimed, str):
            report.results.append(TickResult(schedule.name, due_at, "SKIPPED", None, claimed, following))
            continue
        with trace(claimed.trace_id):
            log.info(
                "schedule tick claimed",
                extra={"schedule": schedule.name, "due_at": due_at.isoformat(), "attempt": claimed.attempt},
            )
            try:
                with heartbeating(
                    partial(_beat, ws, claimed, clock),
                    ws.settings.heartbeat_interval_s,
                    name=f"heartbeat-tick-{claimed.row_id}",
                    context={"schedule": schedule.name, "attempt": claimed.attempt},
                ):
                    result = schedule.job(ws, claimed)
            except Exception as exc:  # e.g. a stage refused before its kernel started
                result = JobOutcome(False, f"{type(exc).__name__}: {exc}")
            finished = _finish(ws, claimed, result)
        report.results.append(replace(finished, next_due_at=following))
    return report


def run_forever(ws: Workspace, poll_interval_s: float = 60.0, stop: threading.Event | None = None) -> None:
    """``run_due`` every ``poll_interval_s`` seconds until ``stop`` is set; errors are logged, not fatal."""
    if poll_interval_s <= 0:
        raise ScheduleError(f"poll_interval_s {poll_interval_s}: must be > 0")
    stop = stop or threading.Event()
    log.info("scheduler started", extra={"poll_interval_s": poll_interval_s})
    while not stop.is_set():
        try:
            run_due(ws)
        except Exception:  # e.g. the Metadata DB briefly unreachable: try again next poll
            log.exception("schedule pass failed")
        stop.wait(poll_interval_s)


def describe(result: TickResult, tz_name: str) -> str:
    """One line for the CLI: the tick in UTC and local time, its status and detail."""
    local = result.due_at.astimezone(ZoneInfo(tz_name))
    attempt = f" attempt {result.attempt}" if result.attempt and result.attempt > 1 else ""
    line = (
        f"{result.schedule} tick {result.due_at:%Y-%m-%d %H:%M} UTC ({local:%a %H:%M} {tz_name}): "
        f"{result.status}{attempt} — {result.detail}"
    )
    if result.next_due_at is not None:
        line += f"; next {result.next_due_at.astimezone(ZoneInfo(tz_name)):%Y-%m-%d %H:%M} {tz_name}"
    return line
