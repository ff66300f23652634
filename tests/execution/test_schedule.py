"""Schedules (opslib.execution.schedule, `opsbench schedule`): ticks across the time zone, once-only
claims in the Metadata DB, missed / repeated / concurrent / crashed ticks, settings, CLI."""

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

import opslib.execution.schedule as schedule
from opslib.control.messages import (
    TRAINING_REQUEST,
    TrainingRequest,
    parse_control_message,
)
from opslib.db.models import (
    ExecutionStatus,
    OpsMessage,
    ScheduleTick,
    StageExecution,
    TickStatus,
    TrainingDataset,
    utcnow,
)
from opslib.execution.runner import StageResult
from opslib.execution.schedule import (
    DATASET,
    TRAINING,
    latest_tick,
    next_tick,
    run_due,
    run_forever,
)
from opslib.infra.workspace import Workspace
from opslib.ops.bootstrap import init_workspace
from opslib.ops.cli import main
from opslib.settings import Settings

UTC = UTC
SEOUL = "Asia/Seoul"
# Wednesday 2026-12-02 03:30 KST: the daily 03:00 KST tick is 2026-12-01 18:00 UTC and the last
# Monday 04:00 KST tick is Monday 2026-11-30 04:00 KST = Sunday 2026-11-29 19:00 UTC.
NOW = datetime(2026, 12, 1, 18, 30, tzinfo=UTC)
DATASET_TICK = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
TRAINING_TICK = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)


class FakeStages:
    """Stands in for opslib.execution.runner.run_stage: records calls, optionally slow, held or failing.

    ``entered`` is set once a call has started; with a ``gate`` each call runs until the test sets it.
    """

    def __init__(
        self,
        delay: float = 0.0,
        fail: bool = False,
        raises: Exception | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []
        self.delay, self.fail, self.raises, self.gate = delay, fail, raises, gate
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, ws: Workspace, name: str, params: dict[str, Any], *, trace_id: str | None = None) -> StageResult:
        with self._lock:
            self.calls.append((name, params, trace_id))
            n = len(self.calls)
        self.entered.set()
        if self.gate is not None and not self.gate.wait(60):
            raise TimeoutError("the test never released the stage")
        time.sleep(self.delay)
        if self.raises is not None:
            raise self.raises
        error = {"cell_index": 4, "execution_count": 2, "ename": "KeyError", "evalue": "'x'"} if self.fail else None
        status = ExecutionStatus.FAILED if self.fail else ExecutionStatus.SUCCEEDED
        return StageResult(n, name, status, Path(f"/runs/{n}.ipynb"), Path(f"/runs/{n}.html"), error)


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    fake = FakeStages()
    monkeypatch.setattr(schedule, "run_stage", fake)
    return fake


def _ticks(ws: Workspace) -> list[ScheduleTick]:
    with ws.db.read() as session:
        return list(session.scalars(select(ScheduleTick).order_by(ScheduleTick.schedule, ScheduleTick.due_at)))


def _messages(ws: Workspace) -> list[OpsMessage]:
    with ws.db.read() as session:
        return list(session.scalars(select(OpsMessage).order_by(OpsMessage.id)))


def _by_schedule(report: schedule.ScheduleReport) -> dict[str, schedule.TickResult]:
    return {r.schedule: r for r in report.results}


# Tick arithmetic -----------------------------------------------------------------------------
def test_ticks_are_computed_in_the_schedule_time_zone() -> None:
    assert latest_tick("0 3 * * *", SEOUL, NOW) == DATASET_TICK  # 03:00 KST = 18:00 UTC the day before
    assert latest_tick("0 3 * * *", SEOUL, DATASET_TICK) == DATASET_TICK  # a tick is due at its own instant
    assert latest_tick("0 3 * * *", SEOUL, DATASET_TICK - timedelta(microseconds=1)) == DATASET_TICK - timedelta(days=1)
    assert latest_tick("0 4 * * 1", SEOUL, NOW) == TRAINING_TICK
    assert TRAINING_TICK.astimezone(schedule.ZoneInfo(SEOUL)).strftime("%A %H:%M") == "Monday 04:00"
    assert next_tick("0 3 * * *", SEOUL, NOW) == DATASET_TICK + timedelta(days=1)
    assert next_tick("0 4 * * 1", SEOUL, NOW) == TRAINING_TICK + timedelta(days=7)
    assert latest_tick("0 3 * * *", "UTC", NOW) == datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    # the same instant in another offset gives the same tick
    assert latest_tick("0 3 * * *", SEOUL, NOW.astimezone(schedule.ZoneInfo("America/New_York"))) == DATASET_TICK
    with pytest.raises(schedule.ScheduleError, match="UTC offset"):
        latest_tick("0 3 * * *", SEOUL, datetime(2026, 12, 1, 18, 30))


# Once-only claims ------------------------------------------------------------------------------
def test_first_invocation_fires_both_and_a_repeat_in_the_same_tick_does_nothing(
    ws: Workspace, stages: FakeStages
) -> None:
    report = run_due(ws, NOW)
    results = _by_schedule(report)
    assert (results[DATASET].status, results[TRAINING].status) == ("DONE", "DONE")
    assert (results[DATASET].due_at, results[TRAINING].due_at) == (DATASET_TICK, TRAINING_TICK)
    assert results[DATASET].next_due_at == DATASET_TICK + timedelta(days=1)

    ((stage, params, trace_id),) = stages.calls
    assert stage == "20_build_dataset"
    assert params == {"as_of": DATASET_TICK.isoformat(), "source_window_days": 30, "seed": 0}
    (message,) = _messages(ws)
    request = parse_control_message(message.payload)
    assert isinstance(request, TrainingRequest) and message.message_type == TRAINING_REQUEST
    assert request.trigger_source == "schedule" and request.payload_version == "v1"

    dataset_row, training_row = _ticks(ws)
    assert (dataset_row.schedule, dataset_row.due_at, dataset_row.status, dataset_row.attempt) == (
        DATASET,
        DATASET_TICK,
        TickStatus.DONE,
        1,
    )
    assert dataset_row.trace_id == trace_id and "execution 1 SUCCEEDED" in (dataset_row.outcome or "")
    assert (training_row.schedule, training_row.due_at, training_row.status) == (
        TRAINING,
        TRAINING_TICK,
        TickStatus.DONE,
    )
    assert training_row.trace_id == message.trace_id
    assert f"message {message.id}" in (training_row.outcome or "")
    assert dataset_row.finished_at is not None and training_row.finished_at is not None

    again = run_due(ws, NOW + timedelta(minutes=20))
    assert [r.status for r in again.results] == ["SKIPPED", "SKIPPED"] and not again.ran
    assert "already done" in again.results[0].detail
    assert len(stages.calls) == 1 and len(_messages(ws)) == 1 and len(_ticks(ws)) == 2


def test_a_missed_tick_fires_once_at_the_next_invocation(ws: Workspace, stages: FakeStages) -> None:
    run_due(ws, NOW)
    # down for three days and a Monday: six dataset ticks and one training tick missed
    later = NOW + timedelta(days=6, hours=2)
    results = _by_schedule(run_due(ws, later))
    assert results[DATASET].status == "DONE" and results[DATASET].due_at == DATASET_TICK + timedelta(days=6)
    assert results[TRAINING].status == "DONE" and results[TRAINING].due_at == TRAINING_TICK + timedelta(days=7)
    assert [c[1]["as_of"] for c in stages.calls] == [
        DATASET_TICK.isoformat(),
        (DATASET_TICK + timedelta(days=6)).isoformat(),
    ]
    assert len(_messages(ws)) == 2 and len(_ticks(ws)) == 4
    assert [r.status for r in run_due(ws, later + timedelta(minutes=1)).results] == ["SKIPPED", "SKIPPED"]


def test_concurrent_schedulers_fire_each_tick_exactly_once(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(delay=0.3)
    monkeypatch.setattr(schedule, "run_stage", fake)
    start = threading.Barrier(3)
    reports: list[schedule.ScheduleReport] = []
    errors: list[BaseException] = []

    def scheduler() -> None:
        start.wait()
        try:
            reports.append(run_due(ws, NOW))
        except BaseException as exc:  # nothing may escape: the loser skips
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(reports) == 3
    assert len(fake.calls) == 1 and len(_messages(ws)) == 1
    for name in (DATASET, TRAINING):
        statuses = sorted(_by_schedule(r)[name].status for r in reports)
        assert statuses == ["DONE", "SKIPPED", "SKIPPED"], (name, statuses)
    assert [t.status for t in _ticks(ws)] == [TickStatus.DONE, TickStatus.DONE]


def test_a_crashed_started_tick_is_retried_once_its_heartbeat_is_stale(ws: Workspace, stages: FakeStages) -> None:
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    with ws.db.transaction() as session:  # a scheduler claimed the tick, beat once more, and died
        session.add(
            ScheduleTick(
                schedule=DATASET,
                due_at=DATASET_TICK,
                attempt=1,
                status=TickStatus.STARTED,
                started_at=NOW - stall,
                heartbeat_at=NOW,
                trace_id="dead",
            )
        )
    results = _by_schedule(run_due(ws, NOW + stall - timedelta(seconds=1)))
    assert results[DATASET].status == "SKIPPED" and "in progress elsewhere" in results[DATASET].detail
    assert not stages.calls

    results = _by_schedule(run_due(ws, NOW + stall + timedelta(seconds=1)))
    assert results[DATASET].status == "DONE" and results[DATASET].attempt == 2
    assert len(stages.calls) == 1
    row = next(t for t in _ticks(ws) if t.schedule == DATASET)
    assert (row.status, row.attempt) == (TickStatus.DONE, 2) and row.trace_id != "dead"


def test_a_tick_claimed_before_heartbeats_existed_counts_from_its_start(ws: Workspace, stages: FakeStages) -> None:
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    with ws.db.transaction() as session:  # a row from before migration 0005 filled it in
        session.add(
            ScheduleTick(
                schedule=DATASET,
                due_at=DATASET_TICK,
                attempt=1,
                status=TickStatus.STARTED,
                started_at=NOW,
                heartbeat_at=None,
                trace_id="old",
            )
        )
    assert _by_schedule(run_due(ws, NOW + stall - timedelta(seconds=1)))[DATASET].status == "SKIPPED"
    assert _by_schedule(run_due(ws, NOW + stall + timedelta(seconds=1)))[DATASET].attempt == 2


def test_each_pass_ends_the_executions_of_dead_processes_by_the_real_clock(ws: Workspace, stages: FakeStages) -> None:
    """The pass marks a RUNNING StageExecution without a heartbeat for run_stall_after_s ABANDONED
    (a live one is left alone) — judged by the real clock, not the pretended ``now``."""
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    real_now = utcnow()
    ids = []
    with ws.db.transaction() as session:
        for heartbeat in (real_now - stall - timedelta(seconds=5), real_now):
            row = StageExecution(
                stage="20_build_dataset",
                notebook="20_build_dataset.ipynb",
                parameters={},
                status=ExecutionStatus.RUNNING,
                started_at=heartbeat - timedelta(hours=1),
                heartbeat_at=heartbeat,
                trace_id="t",
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
    dead, alive = ids
    report = run_due(ws, NOW + 100 * stall)  # a pretended far future does not make the live one look dead
    assert report.abandoned == [dead]
    with ws.db.read() as session:
        assert session.get(StageExecution, dead).status is ExecutionStatus.ABANDONED
        assert session.get(StageExecution, alive).status is ExecutionStatus.RUNNING
    assert "ABANDONED" in (ws.settings.runs_dir / "index.html").read_text()
    assert run_due(ws, NOW).abandoned == []


class PretendClock:
    """A UTC clock that moves only when the test moves it (stands in for ``schedule._clock_from``)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_a_long_job_whose_scheduler_is_alive_is_not_taken_over(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job outlives the stall limit several times over, but its scheduler keeps beating. Time is
    # pretended and moved only by the test, so scheduling jitter cannot age a heartbeat: the stall
    # limit counts pretended time, the heartbeat thread runs for real (every 20 ms of real time),
    # and each takeover attempt waits for a heartbeat stamped at the moved time to have landed.
    live = Workspace(settings.model_copy(update={"heartbeat_interval_s": 0.02, "run_stall_after_s": 60.0}))
    init_workspace(live)
    stall = timedelta(seconds=live.settings.run_stall_after_s)
    clock = PretendClock(NOW)
    monkeypatch.setattr(schedule, "_clock_from", lambda now: clock)

    beats: list[tuple[str, int, datetime, bool]] = []  # (schedule, attempt, stamped time, landed)
    beat_seen = threading.Condition()
    real_beat = schedule._beat

    def recording_beat(ws: Workspace, tick: schedule.ClaimedTick, clk: Any) -> bool:
        stamp = clk()
        landed = real_beat(ws, tick, lambda: stamp)
        with beat_seen:
            beats.append((tick.schedule, tick.attempt, stamp, landed))
            beat_seen.notify_all()
        return landed

    monkeypatch.setattr(schedule, "_beat", recording_beat)
    release = threading.Event()
    slow = FakeStages(gate=release)
    monkeypatch.setattr(schedule, "run_stage", slow)
    first: list[schedule.ScheduleReport] = []
    runner = threading.Thread(target=lambda: first.append(run_due(live, NOW)), daemon=True)
    runner.start()
    try:
        assert slow.entered.wait(60), "the dataset job never started"
        for stalls in (1, 2, 3):  # the job runs three stall limits long
            clock.now = NOW + stalls * stall + timedelta(seconds=1)  # past the limit since the claim
            with beat_seen:
                landed_now = beat_seen.wait_for(
                    lambda: any(s == DATASET and ok and at == clock.now for s, _, at, ok in beats), timeout=60
                )
            assert landed_now, f"no dataset heartbeat landed at {clock.now}"
            second = _by_schedule(run_due(live, NOW))  # NOW is ignored: the pretended clock rules
            assert second[DATASET].status == "SKIPPED", (stalls, second[DATASET])
            assert "in progress elsewhere" in second[DATASET].detail
    finally:
        release.set()
        runner.join(60)
    assert not runner.is_alive() and len(slow.calls) == 1
    assert _by_schedule(first[0])[DATASET].status == "DONE" and _by_schedule(first[0])[DATASET].attempt == 1
    assert {attempt for s, attempt, _, _ in beats if s == DATASET} == {1}  # never taken over
    row = next(t for t in _ticks(live) if t.schedule == DATASET)
    assert (row.status, row.attempt, row.started_at) == (TickStatus.DONE, 1, NOW)
    assert row.heartbeat_at == NOW + 3 * stall + timedelta(seconds=1)


def test_a_pretended_now_runs_on_in_real_time() -> None:
    clock = schedule._clock_from(NOW)  # what run_due(ws, NOW) stamps claims and heartbeats with
    first, later = clock(), clock()
    assert NOW <= first <= later < NOW + timedelta(minutes=5)


def test_a_scheduler_whose_tick_was_taken_over_publishes_nothing(ws: Workspace) -> None:
    stall = timedelta(seconds=ws.settings.run_stall_after_s)
    slow = schedule._claim(ws, TRAINING, TRAINING_TICK, NOW)
    assert isinstance(slow, schedule.ClaimedTick) and slow.attempt == 1
    assert isinstance(schedule._claim(ws, TRAINING, TRAINING_TICK, NOW), str)  # still fresh: skipped
    takeover = schedule._claim(ws, TRAINING, TRAINING_TICK, NOW + stall + timedelta(seconds=1))
    assert isinstance(takeover, schedule.ClaimedTick) and takeover.attempt == 2
    assert not schedule._beat(ws, slow, lambda: NOW)  # the old attempt's heartbeat no longer lands
    late = schedule._finish(ws, slow, schedule.training_job(ws, slow))
    assert late.status == "SKIPPED" and "taken over" in late.detail
    assert _messages(ws) == []  # the publish rolled back with the lost DONE
    done = schedule._finish(ws, takeover, schedule.training_job(ws, takeover))
    assert done.status == "DONE" and len(_messages(ws)) == 1


# Failures ------------------------------------------------------------------------------------
def test_a_failed_stage_is_recorded_and_not_retried_within_its_tick(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule, "run_stage", FakeStages(fail=True))
    report = run_due(ws, NOW)
    results = _by_schedule(report)
    assert results[DATASET].status == "FAILED" and results[TRAINING].status == "DONE"
    assert report.failed == [results[DATASET]]
    assert "FAILED at cell 4: KeyError" in results[DATASET].detail and "/runs/1.html" in results[DATASET].detail
    row = next(t for t in _ticks(ws) if t.schedule == DATASET)
    assert row.status is TickStatus.FAILED and row.finished_at is not None
    again = _by_schedule(run_due(ws, NOW + timedelta(minutes=5)))[DATASET]
    assert again.status == "SKIPPED" and "not retried" in again.detail


def test_an_exception_in_a_job_or_its_publish_fails_the_tick(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "run_stage", FakeStages(raises=FileNotFoundError("notebook 20 is missing")))

    def broken_publish(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("queue unavailable")

    monkeypatch.setattr(schedule, "publish", broken_publish)
    results = _by_schedule(run_due(ws, NOW))
    assert (
        results[DATASET].status == "FAILED" and "FileNotFoundError: notebook 20 is missing" in results[DATASET].detail
    )
    assert results[TRAINING].status == "FAILED" and "RuntimeError: queue unavailable" in results[TRAINING].detail
    assert _messages(ws) == []
    assert {t.status for t in _ticks(ws)} == {TickStatus.FAILED}


# Settings --------------------------------------------------------------------------------------
def test_schedule_settings_defaults_and_overrides(ws: Workspace, stages: FakeStages) -> None:
    defaults = Settings()
    assert (
        defaults.schedule_timezone,
        defaults.dataset_schedule,
        defaults.training_schedule,
        defaults.dataset_source_window_days,
    ) == ("Asia/Seoul", "0 3 * * *", "0 4 * * 1", 30)
    custom = Workspace(
        Settings(
            **{
                **ws.settings.model_dump(),
                "schedule_timezone": "UTC",
                "dataset_schedule": "30 1 * * *",
                "dataset_source_window_days": 7,
            }
        )
    )
    results = _by_schedule(run_due(custom, NOW))
    assert results[DATASET].due_at == datetime(2026, 12, 1, 1, 30, tzinfo=UTC)
    assert results[TRAINING].due_at == datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    assert stages.calls[0][1]["source_window_days"] == 7


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset_schedule", "61 3 * * *"),
        ("dataset_schedule", "0 3 * *"),
        ("training_schedule", "0 4 * * 1 2026"),
        ("training_schedule", "every monday"),
        ("training_schedule", "0 0 30 2 *"),  # February 30th never comes
        ("schedule_timezone", "Asia/Pyongyang-ish"),
        ("schedule_timezone", ""),
        ("dataset_source_window_days", 0),
    ],
)
def test_bad_schedule_settings_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


# Loop and CLI ----------------------------------------------------------------------------------
def test_run_forever_polls_until_stopped(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    passes: list[int] = []

    def fake_run_due(_ws: Workspace) -> None:
        passes.append(1)
        if len(passes) == 2:
            raise RuntimeError("db briefly down")  # logged, the loop goes on
        if len(passes) == 3:
            stop.set()

    monkeypatch.setattr(schedule, "run_due", fake_run_due)
    run_forever(ws, poll_interval_s=0.01, stop=stop)
    assert len(passes) == 3
    with pytest.raises(schedule.ScheduleError, match="poll_interval_s"):
        run_forever(ws, poll_interval_s=0)


def test_cli_schedule_once(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stages: FakeStages,
) -> None:
    for key, value in {
        "OPS_WORKSPACE": tmp_path / "ws",
        "OPS_RUNS_DIR": tmp_path / "runs",
        "OPS_BASE_MODEL_PATH": tiny_model_dir,
        "OPS_BASE_MODEL_VERSION": "tiny-base",
        "OPS_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, str(value))
    assert main(["schedule", "--once"]) == 2
    assert "the workspace is not initialised: run `opsbench init`" in capsys.readouterr().err
    assert main(["init", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["schedule", "--once"]) == 0
    out = capsys.readouterr().out
    assert "dataset tick" in out and "training tick" in out and out.count(": DONE") == 2
    assert "Asia/Seoul" in out and "next " in out
    assert main(["schedule", "--once"]) == 0
    assert capsys.readouterr().out.count("SKIPPED — already done") == 2
    assert len(stages.calls) == 1
    ws = Workspace(Settings())
    with ws.db.transaction() as session:  # a stage whose process died long ago
        session.add(
            StageExecution(
                stage="10_feedback_health",
                notebook="10_feedback_health.ipynb",
                parameters={},
                status=ExecutionStatus.RUNNING,
                started_at=datetime(2026, 1, 1, tzinfo=UTC),
                trace_id="t",
            )
        )
    assert main(["schedule", "--once"]) == 0
    assert "stage execution 1: ABANDONED (its process died" in capsys.readouterr().out

    monkeypatch.setenv("OPS_TRAINING_SCHEDULE", "0 25 * * *")
    assert main(["schedule", "--once"]) == 2
    assert "training_schedule" in capsys.readouterr().err


def test_cli_schedule_reports_a_failed_tick_with_exit_code_1(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {
        "OPS_WORKSPACE": tmp_path / "ws",
        "OPS_RUNS_DIR": tmp_path / "runs",
        "OPS_BASE_MODEL_PATH": tiny_model_dir,
        "OPS_BASE_MODEL_VERSION": "tiny-base",
        "OPS_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(schedule, "run_stage", FakeStages(fail=True))
    assert main(["init", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["schedule", "--once"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_schedule_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "opslib.ops.cli", "schedule", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "usage: opsbench schedule" in done.stdout
    assert "--once" in done.stdout and "--poll-interval" in done.stdout


# The real notebook -----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_dataset_schedule_executes_the_real_stage(ws: Workspace) -> None:
    results = _by_schedule(run_due(ws, NOW))
    assert results[DATASET].status == "DONE", results[DATASET].detail
    assert "20_build_dataset execution" in results[DATASET].detail
    with ws.db.read() as session:
        (dataset,) = session.scalars(select(TrainingDataset)).all()
    assert dataset.source_window_end == DATASET_TICK
    assert dataset.source_window_start == DATASET_TICK - timedelta(days=30)
    assert f"dataset {dataset.dataset_version}" in results[DATASET].detail  # recorded by the stage
