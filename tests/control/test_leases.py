"""Leases with fencing tokens (opslib.control.leases): one driver at a time, and a driver that
was taken over cannot write afterwards."""

import time
from datetime import timedelta

import pytest

from opslib.control.leases import (
    LeaseBusy,
    StaleLease,
    acquire,
    check_fence,
    holding,
    lease_state,
    release,
    renew,
)
from opslib.control.release import apply, current_release
from opslib.db.models import ReleaseEvent, utcnow
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
