"""Fault injection for crash-safety tests: ``checkpoint`` kills the process at a named step.

Only ``Settings.fault_point`` (``OPS_FAULT_POINT``) arms it; every release step calls
``checkpoint`` at its boundaries so a test can SIGKILL the process exactly there.
"""

from __future__ import annotations

import os
import signal

from opslib.settings import Settings

# Every named checkpoint, in the order the stages pass them (the crash-matrix rows).
CHECKPOINTS = {
    "50_reindex_candidate": ("reindex.opened", "reindex.loaded", "reindex.mid_batch", "reindex.built", "reindex.ready"),
    "60_cutover": ("cutover.time_fixed", "cutover.complete", "cutover.exported", "cutover.switched"),
    "70_rollback": (
        "rollback.prepared",
        "rollback.loaded",
        "rollback.restored",
        "rollback.switched",
        "rollback.reembedded_one",
    ),
}


def checkpoint(settings: Settings, name: str) -> None:
    if settings.fault_point == name:
        os.kill(os.getpid(), signal.SIGKILL)
