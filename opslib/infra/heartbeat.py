"""Heartbeats: keep a claim's liveness timestamp fresh from a background thread.

A worker holding a run and a scheduler holding a schedule tick both prove they are alive the same
way: a ``beat`` function stamps ``heartbeat_at`` on their row (and returns False once the row is no
longer theirs), called right away and then every ``interval_s`` while the guarded block runs.
Whoever finds the stamp older than ``settings.run_stall_after_s`` may take the claim over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opslib.infra.logs import get_logger

log = get_logger(__name__)


@contextmanager
def heartbeating(
    beat: Callable[[], bool], interval_s: float, *, name: str, context: dict[str, Any] | None = None
) -> Iterator[None]:
    """Call ``beat`` now and every ``interval_s`` seconds until the block ends or it returns False."""
    if interval_s <= 0:
        raise ValueError(f"interval_s {interval_s}: must be > 0")
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                if not beat():
                    return  # the claim is gone (finished or taken over): nothing left to keep alive
            except Exception:  # a missed beat is survivable; staleness is judged by the reader
                log.exception("heartbeat failed", extra={"heartbeat": name, **(context or {})})

    beat()
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 5)
