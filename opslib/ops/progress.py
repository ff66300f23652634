"""Console progress for stages that run out of sight: a line when each starts and ends, and a
heartbeat line while one runs, with what it is doing.

The worker executes stages in Papermill kernels; what they print and their progress bars go to
the archived notebook, not to the console, so `opsbench demo` was silent for minutes while a
candidate trained and was evaluated. ``StageProgress`` watches from beside the work, never inside
it: from a background thread it reads the ``StageExecution`` rows that appear after it starts (the
Metadata DB says what runs) and the newest line of each running stage's kernel log — the JSON log
the kernel writes beside its archive (``training step`` with its step and loss, ``ranking with the
candidate``, …). A watcher that fails to read only costs its lines: it never stops the work.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import func, select

from opslib.db.models import ExecutionStatus, StageExecution, utcnow
from opslib.execution.runner import kernel_log_path
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)

# Log-line keys that say nothing about progress (the line's envelope and the stage's identity).
_QUIET_KEYS = {"ts", "level", "logger", "trace_id", "message", "exception", "stage", "execution_id", "run_id"}
_TAIL_BYTES = 16_384
_MAX_DOING = 140


def elapsed_text(delta: timedelta) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: a duration as a console line reads it."""
    seconds = max(0, round(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def last_log_line(path: Path) -> str | None:
    """The newest line of a kernel's JSON log as a phrase — its message and its fields, e.g.
    ``training step (step 40, of 120, epoch 1.0, loss 0.8312)`` — or None when there is none yet."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:  # not written yet: the kernel is still starting
        return None
    for line in reversed(tail.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the tail's start, or one being written
            continue
        if not isinstance(record, dict) or not record.get("message"):
            continue
        fields = [f"{key} {_value(value)}" for key, value in record.items() if key not in _QUIET_KEYS]
        phrase = str(record["message"]) + (f" ({', '.join(fields)})" if fields else "")
        return phrase if len(phrase) <= _MAX_DOING else phrase[: _MAX_DOING - 1] + "…"
    return None


@dataclass
class _Watched:
    stage: str
    started_at: datetime
    announced: bool = False


class StageProgress:
    """Prints progress of the stage executions recorded after ``start()`` (or entering ``with``).

    ``poll()`` is one look (the thread calls it every ``poll_s``): a stage seen running is
    announced once; a stage that ended is reported once with its status and duration; and when
    nothing was said for ``every_s`` seconds, each running stage gets a line with how long it has
    run and the newest line of its kernel's log."""

    def __init__(
        self,
        ws: Workspace,
        say: Callable[[str], None] = print,
        *,
        every_s: float = 30.0,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        indent: str = "      ",
    ) -> None:
        self.ws, self.say, self.every_s, self.poll_s, self.clock, self.indent = ws, say, every_s, poll_s, clock, indent
        self._after = 0
        self._watched: dict[int, _Watched] = {}
        self._ended: set[int] = set()
        self._last_said = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def start(self) -> None:
        """Watch only what starts from now on (earlier executions are not this watcher's)."""
        with self.ws.db.read() as session:
            self._after = int(session.scalar(select(func.max(StageExecution.id))) or 0)
        self._last_said = self.clock()

    def _say(self, text: str) -> None:
        self.say(f"{self.indent}{text}")
        self._last_said = self.clock()

    def poll(self) -> None:
        with self.ws.db.read() as session:
            rows = list(
                session.execute(
                    select(
                        StageExecution.id,
                        StageExecution.stage,
                        StageExecution.status,
                        StageExecution.started_at,
                        StageExecution.finished_at,
                        StageExecution.run_id,
                    )
                    .where(StageExecution.id > self._after)
                    .order_by(StageExecution.id)
                )
            )
        running: list[int] = []
        for execution_id, stage, status, started_at, finished_at, run_id in rows:
            if execution_id in self._ended:
                continue
            watched = self._watched.setdefault(execution_id, _Watched(stage, started_at))
            of_run = f" of run {run_id}" if run_id is not None else ""
            if status is ExecutionStatus.RUNNING:
                running.append(execution_id)
                if not watched.announced:
                    watched.announced = True
                    self._say(f"▸ {stage}{of_run} started (execution {execution_id})")
                continue
            self._ended.add(execution_id)
            took = elapsed_text((finished_at or utcnow()) - started_at)
            self._say(f"▸ {stage}{of_run} {status.value} after {took}")
        if running and self.clock() - self._last_said >= self.every_s:
            for execution_id in running:
                watched = self._watched[execution_id]
                doing = self._doing(execution_id, watched)
                self._say(f"… {watched.stage} running for {elapsed_text(utcnow() - watched.started_at)}: {doing}")

    def _doing(self, execution_id: int, watched: _Watched) -> str:
        with self.ws.db.read() as session:
            row = session.get(StageExecution, execution_id)
            path = kernel_log_path(self.ws.settings.runs_dir, row) if row is not None else None
        return (last_log_line(path) if path is not None else None) or "starting its kernel"

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll_safely()

    def _poll_safely(self) -> None:
        try:
            self.poll()
        except Exception:  # progress lines are a courtesy: a failed read must not stop the work
            if not self._failed:
                self._failed = True
                log.warning("stage progress: a read failed; lines may be missing", exc_info=True)

    def __enter__(self) -> StageProgress:
        self.start()
        self._thread = threading.Thread(target=self._loop, name="stage-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll_safely()  # the last stage's end, before the caller prints its summary
