"""Structured JSON logs: one JSON object per line, every line carrying the current ``trace_id``.

A trace id is bound with ``trace(trace_id)``; messages and runs carry theirs, so every line a
stage writes can be joined to the request that caused it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "trace_id"}


def new_trace_id() -> str:
    return uuid.uuid4().hex


def current_trace_id() -> str:
    """The bound trace id, or a fresh one bound for the rest of this context."""
    value = _trace_id.get()
    if value is None:
        value = new_trace_id()
        _trace_id.set(value)
    return value


def bind_trace_id(trace_id: str) -> None:
    """Bind ``trace_id`` for the rest of this context (a notebook kernel's whole session)."""
    _trace_id.set(trace_id)


@contextmanager
def trace(trace_id: str | None = None) -> Iterator[str]:
    token = _trace_id.set(trace_id or new_trace_id())
    try:
        yield _trace_id.get() or ""
    finally:
        _trace_id.reset(token)


class TraceIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", None):
            record.trace_id = current_trace_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "trace_id": getattr(record, "trace_id", None) or current_trace_id(),
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (it may be swapped after configuration)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(
    level: str = "INFO", stream: Any = None, path: Any = None, console_level: str | None = None
) -> None:
    """JSON lines on ``stream`` (stderr by default), or appended to the file ``path``, for
    ``opslib`` at ``level`` and for every other library (papermill, alembic, chromadb, …) at
    WARNING — all carrying the trace id. With ``path`` and ``console_level``, records at or
    above ``console_level`` also go to the stream (a command keeps its warnings in sight);
    without ``path``, ``console_level`` filters the stream."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_opslib_json", False):
            root.removeHandler(old)
            old.close()
    handlers: list[logging.Handler] = []
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    if path is None or console_level is not None:
        console = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
        if console_level is not None:
            console.setLevel(console_level)
        handlers.append(console)
    for handler in handlers:
        handler._opslib_json = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter())
        handler.addFilter(TraceIdFilter())
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("opslib").setLevel(level)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("opslib") else f"opslib.{name}")
