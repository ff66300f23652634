"""Leases with fencing tokens (opslib.control.leases): one driver at a time, and a driver that
was taken over cannot write afterwards."""

import time
from datetime import timedelta

import pytest

from opslib.control.leases import (
    Lease,
    LeaseBusy,
    StaleLease,
    acquire,
    check_fence,
    holding,
    holding_release,
    lease_state,
    release,
    renew,
)
from opslib.control.release import apply, current_release
from opslib.db.models import ReleaseEvent, utcnow
from opslib.execution.registry import StageError, validate_params
from opslib.infra.workspace import Workspace


def test_a_live_lease_is_busy_a_stale_one_is_taken_over_with_a_new_token(ws: Workspace) -> None:
    a = acquire(ws.db, "release", "worker-a", purpose="release run 1", stale_after_s=30)
    with pytest.raises(LeaseBusy, match="held by worker-a for 'release run 1'"):
        acquire(ws.db, "release", "worker-b", purpose="release run 1", stale_after_s=30)
    later = utcnow() + timedelta(seconds=31)  # worker-a stopped beating (paused or dead)
    b = acquire(ws.db, "release", "worker-b", purpose="release run 1", stale_after_s=30, now=later)
    assert b.token == a.token + 1
    assert not renew(ws.db, a)  # a's heartbeat no longer lands
    assert not release(ws.db, a)  # nor can a give away what b holds
    with pytest.raises(StaleLease, match=f"token {a.token} of worker-a is no longer valid"), ws.db.transaction() as s:
        check_fence(s, a)
    with ws.db.transaction() as session:
        check_fence(session, b)
    assert release(ws.db, b)
    c = acquire(ws.db, "release", "worker-c", purpose="x", stale_after_s=30)  # released: no wait
    assert c.token == b.token + 1


def test_a_taken_over_driver_cannot_move_the_release(ws: Workspace) -> None:
    a = acquire(ws.db, "release", "worker-a", purpose="rollback", stale_after_s=30)
    acquire(ws.db, "release", "worker-b", purpose="rollback", stale_after_s=30, now=utcnow() + timedelta(minutes=1))
    with ws.db.read() as session:
        before = current_release(session).row_version  # type: ignore[union-attr]
        events = session.query(ReleaseEvent).count()
    with pytest.raises(StaleLease), ws.db.transaction() as session:
        apply(session, "PREPARE_ROLLBACK", actor="worker-a", trace_id="t", fence=a)
    with ws.db.read() as session:
        assert current_release(session).row_version == before  # type: ignore[union-attr]
        assert session.query(ReleaseEvent).count() == events


def test_holding_renews_while_the_block_runs_and_releases_after(ws: Workspace) -> None:
    with holding(ws.db, "release", purpose="long work", stale_after_s=1.0, heartbeat_s=0.2, holder="w") as lease:
        time.sleep(1.5)  # longer than the stale limit: the heartbeat keeps it live
        state = lease_state(ws.db, "release", stale_after_s=1.0)
        assert state is not None and state.live and state.token == lease.token
        with pytest.raises(LeaseBusy):
            acquire(ws.db, "release", "other", purpose="x", stale_after_s=1.0)
    state = lease_state(ws.db, "release", stale_after_s=1.0)
    assert state is not None and state.holder is None and not state.live


def test_a_stage_works_under_the_lease_its_driver_hands_it_and_leaves_it_to_the_driver(ws: Workspace) -> None:
    """A worker holds the release lease across 50 → 60 and hands it to each stage's kernel: the
    stage checks it, and neither renews nor releases it (the driver does)."""
    driver = acquire(ws.db, "release", "worker-a", purpose="release of run 1", stale_after_s=30)
    with holding_release(ws.db, ws.settings, "50 for run 1", held=driver) as lease:
        assert lease == driver
    state = lease_state(ws.db, "release", stale_after_s=30)
    assert state is not None and state.live and (state.holder, state.token) == ("worker-a", driver.token)
    # A hand-off from a driver that was taken over is refused before the stage does anything.
    later = utcnow() + timedelta(seconds=31)
    acquire(ws.db, "release", "worker-b", purpose="release of run 1", stale_after_s=30, now=later)
    with (
        pytest.raises(StaleLease, match=f"token {driver.token} of worker-a is no longer valid"),
        holding_release(ws.db, ws.settings, "60 for run 1", held=driver),
    ):
        pytest.fail("the stage ran under a stale lease")


def test_the_hand_off_parameters_come_both_or_not_at_all() -> None:
    params = validate_params("60_cutover", {"run_id": 3, "lease_token": 7, "lease_holder": "worker-a"})
    assert params.lease == Lease("release", 7, "worker-a")  # type: ignore[attr-defined]
    assert validate_params("60_cutover", {"run_id": 3}).lease is None  # type: ignore[attr-defined]
    with pytest.raises(StageError, match="lease_token and lease_holder: give both"):
        validate_params("70_rollback", {"message_id": 1, "lease_token": 7})
