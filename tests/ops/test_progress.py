"""The console progress the demo prints while the worker's stages run in their kernels."""

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from opslib.db.models import ExecutionStatus, StageExecution, utcnow
from opslib.execution.runner import kernel_log_path
from opslib.infra.workspace import Workspace
from opslib.ops.progress import StageProgress, elapsed_text, last_log_line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _execution(ws: Workspace, stage: str, *, started_ago: timedelta = timedelta(0)) -> int:
    with ws.db.transaction() as session:
        row = StageExecution(
            stage=stage,
            notebook=f"{stage}.ipynb",
            parameters={},
            status=ExecutionStatus.RUNNING,
            started_at=utcnow() - started_ago,
            trace_id="t",
        )
        session.add(row)
        session.flush()
        return row.id


def _finish(ws: Workspace, execution_id: int, status: ExecutionStatus, took: timedelta) -> None:
    with ws.db.transaction() as session:
        row = session.get(StageExecution, execution_id)
        row.status, row.finished_at = status, row.started_at + took


def _kernel_log(ws: Workspace, execution_id: int, *records: dict) -> Path:
    with ws.db.read() as session:
        path = kernel_log_path(ws.settings.runs_dir, session.get(StageExecution, execution_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_each_stage_is_announced_timed_and_described_while_it_runs(ws: Workspace) -> None:
    earlier = _execution(ws, "10_feedback_health")
    _finish(ws, earlier, ExecutionStatus.SUCCEEDED, timedelta(seconds=4))
    lines: list[str] = []
    clock = Clock()
    progress = StageProgress(ws, lines.append, every_s=30, clock=clock, indent="")
    progress.start()
    progress.poll()
    assert lines == []  # what ended before the watcher started is not its news

    train = _execution(ws, "30_train_candidate", started_ago=timedelta(seconds=75))
    progress.poll()
    assert lines == [f"▸ 30_train_candidate started (execution {train})"]
    clock.now += 29
    progress.poll()
    assert len(lines) == 1  # nothing new, and not yet time for a heartbeat

    clock.now += 1
    progress.poll()
    assert lines[-1] == "… 30_train_candidate running for 1 min 15 s: starting its kernel"  # no log line yet
    _kernel_log(
        ws,
        train,
        {"ts": "…", "level": "INFO", "logger": "x", "trace_id": "t", "message": "mining hard negatives", "groups": 7},
        {"ts": "…", "level": "INFO", "message": "training step", "step": 40, "of": 120, "epoch": 1.0, "loss": 0.83124},
    )
    clock.now += 30
    progress.poll()
    assert lines[-1] == (
        "… 30_train_candidate running for 1 min 15 s: training step (step 40, of 120, epoch 1, loss 0.8312)"
    )

    _finish(ws, train, ExecutionStatus.SUCCEEDED, timedelta(minutes=3, seconds=5))
    evaluate = _execution(ws, "40_evaluate_candidate")
    _finish(ws, evaluate, ExecutionStatus.FAILED, timedelta(seconds=42))  # started and ended between two looks
    progress.poll()
    assert lines[-2:] == [
        "▸ 30_train_candidate SUCCEEDED after 3 min 05 s",
        "▸ 40_evaluate_candidate FAILED after 42 s",
    ]
    said = len(lines)
    clock.now += 300
    progress.poll()
    assert len(lines) == said  # each end is said once, and nothing runs: no heartbeat


def test_the_watcher_thread_reports_the_last_stage_before_it_returns(ws: Workspace) -> None:
    lines: list[str] = []
    with StageProgress(ws, lines.append, poll_s=0.05, indent=""):
        execution = _execution(ws, "60_cutover")
        time.sleep(0.3)
        _finish(ws, execution, ExecutionStatus.SUCCEEDED, timedelta(seconds=2))
    assert lines == [f"▸ 60_cutover started (execution {execution})", "▸ 60_cutover SUCCEEDED after 2 s"]


def test_a_failing_read_costs_lines_not_the_work(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: StageProgress) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(StageProgress, "poll", broken)
    with StageProgress(ws, print, poll_s=0.01):
        time.sleep(0.05)  # the thread's polls fail; nothing is raised here or on exit


def test_last_log_line_skips_what_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "k.log"
    assert last_log_line(path) is None  # the kernel has not written yet
    path.write_text(
        json.dumps({"message": "ranking with the candidate", "model": "cand-r00001", "queries": 201}) + "\n"
        '{"message": "half a line'
    )
    assert last_log_line(path) == "ranking with the candidate (model cand-r00001, queries 201)"
    path.write_text(json.dumps({"message": "x" * 300}) + "\n")
    line = last_log_line(path)
    assert line is not None and len(line) == 140 and line.endswith("…")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (59.4, "59 s"), (60, "1 min 00 s"), (3599, "59 min 59 s"), (3720, "1 h 02 min")]
)
def test_elapsed_text(seconds: float, text: str) -> None:
    assert elapsed_text(timedelta(seconds=seconds)) == text
