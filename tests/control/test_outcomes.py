"""One outcome vocabulary: a run's outcome comes from its row and the release history."""

from __future__ import annotations

from datetime import timedelta

from helpers import add_run

from opslib.control.outcomes import RunOutcome, Tone, colour, released_run_ids, run_outcome, tone
from opslib.control.runs import is_stalled
from opslib.db.models import FailureType, MLPipelineRun, ReleaseEvent, RunStatus, utcnow
from opslib.infra.workspace import Workspace


def test_a_run_is_released_only_once_a_cutover_event_switched_its_candidate(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        release_id = session.scalar(ReleaseEvent.__table__.select().with_only_columns(ReleaseEvent.release_id))
        switched = add_run(session, RunStatus.READY_FOR_RELEASE, cutover_time=utcnow())
        waiting = add_run(session, RunStatus.READY_FOR_RELEASE, cutover_time=utcnow())  # the gate not met yet
        session.add(
            ReleaseEvent(
                release_id=release_id,
                kind="CUTOVER",
                before={"candidate_run_id": switched.id},
                after={"candidate_run_id": None},
                actor="test",
                trace_id="t",
            )
        )
    with ws.db.read() as session:
        released = released_run_ids(session)
        assert switched.id in released and waiting.id not in released
        rows = {r.id: r for r in session.query(MLPipelineRun)}
        assert run_outcome(rows[switched.id], released=True) is RunOutcome.RELEASED
        assert run_outcome(rows[waiting.id], released=False) is RunOutcome.PASS


def test_outcomes_of_every_status(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        held = add_run(session, RunStatus.READY_FOR_RELEASE, release_hold="not significant")
        promoted = add_run(session, RunStatus.READY_FOR_RELEASE, release_hold="not significant", promoted_at=utcnow())
        fail = add_run(session, RunStatus.FAILED, failure_type=FailureType.FAIL)
        error = add_run(session, RunStatus.FAILED, failure_type=FailureType.ERROR)
        silent = add_run(session, RunStatus.RUNNING, heartbeat_at=utcnow() - timedelta(hours=2))
        superseded = add_run(session, RunStatus.SUPERSEDED)
        assert run_outcome(held, released=False) is RunOutcome.HELD
        assert run_outcome(promoted, released=False) is RunOutcome.PASS
        assert run_outcome(fail, released=False) is RunOutcome.FAIL
        assert run_outcome(error, released=False) is RunOutcome.ERROR
        stalled = is_stalled(silent, 60)
        assert run_outcome(silent, released=False, stalled=stalled) is RunOutcome.STALLED
        assert run_outcome(silent, released=False) is RunOutcome.RUNNING
        assert run_outcome(superseded, released=False) is RunOutcome.SUPERSEDED


def test_every_word_has_one_tone() -> None:
    assert tone("RELEASED") is tone("PASS") is Tone.GOOD
    assert tone("FAIL") is Tone.BAD and tone("ERROR") is Tone.ERROR and tone("HELD") is Tone.WARN
    assert tone("something else") is Tone.INFO
    assert colour("PASS") != colour("FAIL")
