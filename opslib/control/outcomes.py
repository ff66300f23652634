"""One vocabulary for how things ended, shared by the run index, the stage reports, the dashboard
and ``opsbench status`` — so one outcome never goes by three names.

Two families of words:

- a **run outcome** (``RunOutcome``) says where an ``MLPipelineRun`` stands for people: its
  status refined by what the release did with it (a READY_FOR_RELEASE run that was cut over is
  ``RELEASED``; one the release rule holds is ``HELD``; a RUNNING run without a heartbeat is
  ``STALLED``; a FAILED one is ``FAIL`` — quality below the criteria — or ``ERROR``);
- a **stage verdict** (``Verdict``) says how one stage execution ended: the stage's own word
  (``ELIGIBLE``, ``TRAINED``, ``DELIVERED``, ``PASS``, ``RELEASED``, …) or how the execution itself ended
  (``ERROR``, ``REFUSED``, ``ABANDONED``, ``STALLED``, ``RUNNING``).

Every word has a ``Tone`` (good, bad, warning, …) that decides its colour everywhere.
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from opslib.db.models import FailureType, MLPipelineRun, ReleaseEvent, RunStatus


class Tone(enum.StrEnum):
    GOOD = "good"
    BAD = "bad"  # a quality verdict said no
    ERROR = "error"  # a system error
    REFUSED = "refused"  # a guard said no; nothing changed
    WARN = "warn"
    RUNNING = "running"
    STALLED = "stalled"
    ABANDONED = "abandoned"
    INFO = "info"


TONE_COLOURS: dict[Tone, str] = {
    Tone.GOOD: "#1b7f3b",
    Tone.BAD: "#b3261e",
    Tone.ERROR: "#7a1fa2",
    Tone.REFUSED: "#b35c00",
    Tone.WARN: "#b35c00",
    Tone.RUNNING: "#1f4e8c",
    Tone.STALLED: "#d35400",
    Tone.ABANDONED: "#5d4037",
    Tone.INFO: "#555555",
}


class RunOutcome(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STALLED = "STALLED"  # RUNNING, no heartbeat past the stall limit
    PASS = "PASS"  # READY_FOR_RELEASE, releases when the worker (or a promote) cuts it over
    HELD = "HELD"  # READY_FOR_RELEASE, passed but not significantly: waits for an operator's promote
    RELEASED = "RELEASED"  # cut over: its candidate served (a later rollback shows in the release history)
    FAIL = "FAIL"  # quality below the criteria
    ERROR = "ERROR"  # a system error
    SUPERSEDED = "SUPERSEDED"


class Verdict(enum.StrEnum):
    # 10_feedback_health
    OK = "OK"
    WARN = "WARN"
    # 20_build_dataset
    ELIGIBLE = "ELIGIBLE"
    INELIGIBLE = "INELIGIBLE"
    # 30_train_candidate
    TRAINED = "TRAINED"
    DELIVERED = "DELIVERED"  # an operator delivered the candidate (opsbench propose-model): nothing trained
    # 40_evaluate_candidate
    PASS = "PASS"
    FAIL = "FAIL"
    # 50 / 60 / 70: the last release transition the execution made
    BOOTSTRAPPED = "BOOTSTRAPPED"
    REINDEXING = "REINDEXING"
    CANDIDATE_READY = "CANDIDATE READY"
    RELEASED = "RELEASED"
    WAITING = "WAITING"  # 60 ran, the gate is not met yet
    ABORTED = "ABORTED"
    ROLLBACK_PREPARING = "ROLLBACK PREPARING"
    ROLLED_BACK = "ROLLED BACK"
    NO_CHANGE = "NO CHANGE"
    # how the execution itself ended
    RUNNING = "RUNNING"
    STALLED = "STALLED"
    ABANDONED = "ABANDONED"
    ERROR = "ERROR"
    REFUSED = "REFUSED"


# The verdict of a stage whose last release transition was this ReleaseEvent kind.
RELEASE_EVENT_VERDICTS: dict[str, Verdict] = {
    "BOOTSTRAP": Verdict.BOOTSTRAPPED,
    "OPEN_CANDIDATE": Verdict.REINDEXING,
    "CANDIDATE_READY": Verdict.CANDIDATE_READY,
    "CUTOVER": Verdict.RELEASED,
    "ABORT_CANDIDATE": Verdict.ABORTED,
    "PREPARE_ROLLBACK": Verdict.ROLLBACK_PREPARING,
    "COMPLETE_ROLLBACK": Verdict.ROLLED_BACK,
}

_TONES: dict[str, Tone] = {
    **{
        w: Tone.GOOD
        for w in ("OK", "ELIGIBLE", "TRAINED", "DELIVERED", "PASS", "CANDIDATE READY", "RELEASED", "ROLLED BACK")
    },
    **{w: Tone.BAD for w in ("FAIL", "INELIGIBLE", "ABORTED")},
    **{w: Tone.WARN for w in ("WARN", "HELD", "WAITING", "ROLLBACK PREPARING")},
    "ERROR": Tone.ERROR,
    "REFUSED": Tone.REFUSED,
    "RUNNING": Tone.RUNNING,
    "REINDEXING": Tone.RUNNING,
    "PENDING": Tone.INFO,
    # statuses shown beside the outcomes (an execution's, a message's)
    "SUCCEEDED": Tone.GOOD,
    "DONE": Tone.GOOD,
    "FAILED": Tone.BAD,
    "STALLED": Tone.STALLED,
    "ABANDONED": Tone.ABANDONED,
}


def tone(word: str) -> Tone:
    """The tone of any outcome or verdict word (``INFO`` for a word outside the vocabulary)."""
    return _TONES.get(str(word), Tone.INFO)


def colour(word: str) -> str:
    return TONE_COLOURS[tone(word)]


def released_run_ids(session: Session) -> set[int]:
    """The runs whose candidate was switched to serving: a ``CUTOVER`` release event had them as
    its candidate (``cutover_time`` alone is not enough — it is fixed before the gate passes)."""
    ids = set()
    for before in session.scalars(select(ReleaseEvent.before).where(ReleaseEvent.kind == "CUTOVER")):
        run_id = before.get("candidate_run_id") if isinstance(before, dict) else None
        if isinstance(run_id, int):
            ids.add(run_id)
    return ids


def run_outcome(run: MLPipelineRun, *, released: bool, stalled: bool = False) -> RunOutcome:
    """Where ``run`` stands, in the shared vocabulary. ``released``: its candidate was cut over
    (``released_run_ids``); ``stalled``: the caller's staleness check
    (``opslib.control.runs.is_stalled``)."""
    if stalled and run.status is RunStatus.RUNNING:
        return RunOutcome.STALLED
    if run.status is RunStatus.FAILED:
        return RunOutcome.FAIL if run.failure_type is FailureType.FAIL else RunOutcome.ERROR
    if run.status is RunStatus.READY_FOR_RELEASE:
        if released:
            return RunOutcome.RELEASED
        return RunOutcome.HELD if run.release_hold and run.promoted_at is None else RunOutcome.PASS
    return RunOutcome(run.status.value)
