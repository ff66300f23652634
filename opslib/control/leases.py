"""Leases with fencing tokens: one driver at a time for work two workers could otherwise drive at once.

A lease (``StageLease``) names a piece of work — ``RELEASE_LEASE`` covers every stage that moves
the release row (50 reindex, 60 cutover, 70 rollback, and the worker's repairs of the release).
``acquire`` takes it when it is free, released, or stale (no heartbeat for ``stale_after_s``);
each acquisition increments the **token**. Every write of the work checks its token in the
writer's own transaction (``check_fence``), so a holder that was paused past staleness and taken
over cannot write afterwards: its token is no longer the lease's. ``holding`` acquires, renews the
heartbeat from a background thread and releases on exit.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from opslib.db.engine import Database
from opslib.db.models import StageLease, utcnow
from opslib.errors import Conflict
from opslib.infra.heartbeat import heartbeating
from opslib.infra.logs import get_logger
from opslib.settings import Settings

log = get_logger(__name__)

RELEASE_LEASE = "release"  # 50, 60, 70 and the release repairs: they all move the one release row


class LeaseBusy(Conflict):
    """Another live holder drives this work: nothing was done; it is theirs to finish."""


class StaleLease(Conflict):
    """This holder's lease was taken over (its token is no longer the lease's): the write is refused."""


@dataclass(frozen=True)
class Lease:
    name: str
    token: int
    holder: str


@dataclass(frozen=True)
class LeaseState:
    name: str
    token: int
    holder: str | None
    purpose: str
    heartbeat_at: datetime
    live: bool  # held and beating within the stale limit


def default_holder(role: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}{':' + role if role else ''}"


def _is_live(row: StageLease, stale_after_s: float, now: datetime) -> bool:
    return row.holder is not None and now - row.heartbeat_at <= timedelta(seconds=stale_after_s)


def acquire(
    db: Database, name: str, holder: str, *, purpose: str, stale_after_s: float, now: datetime | None = None
) -> Lease:
    """Take the lease (a new token) unless another live holder has it: then ``LeaseBusy``."""
    now = now or utcnow()
    with db.transaction() as session:
        row = session.scalars(select(StageLease).where(StageLease.name == name).with_for_update()).one_or_none()
        if row is None:
            row = StageLease(name=name, token=0, purpose=purpose, acquired_at=now, heartbeat_at=now)
            session.add(row)
        elif _is_live(row, stale_after_s, now):
            age = (now - row.heartbeat_at).total_seconds()
            raise LeaseBusy(
                f"lease {name!r}: held by {row.holder} for {row.purpose!r} (token {row.token}, "
                f"heartbeat {age:.0f} s ago)"
            )
        elif row.holder is not None:
            log.warning(
                "taking over a stale lease",
                extra={"lease": name, "from": row.holder, "token": row.token, "last_heartbeat": row.heartbeat_at},
            )
        row.token += 1
        row.holder = holder
        row.purpose = purpose[:256]
        row.acquired_at = row.heartbeat_at = now
        row.released_at = None
        session.flush()
        return Lease(name, row.token, holder)


def _held(lease: Lease) -> Any:
    return (StageLease.name == lease.name, StageLease.token == lease.token, StageLease.holder == lease.holder)


def renew(db: Database, lease: Lease) -> bool:
    """Stamp the heartbeat; False once the lease is no longer this holder's (taken over or released)."""
    with db.transaction() as session:
        done = cast(
            CursorResult[Any], session.execute(update(StageLease).where(*_held(lease)).values(heartbeat_at=utcnow()))
        ).rowcount
    return bool(done)


def release(db: Database, lease: Lease) -> bool:
    """Give the lease up (the next acquisition needs no staleness wait); False if it was not ours."""
    with db.transaction() as session:
        done = cast(
            CursorResult[Any],
            session.execute(update(StageLease).where(*_held(lease)).values(holder=None, released_at=utcnow())),
        ).rowcount
    return bool(done)


def check_fence(session: Session, lease: Lease) -> None:
    """In the writer's transaction: refuse unless ``lease`` is still the current one (locks the row
    against a takeover until the transaction ends)."""
    row = session.scalars(select(StageLease).where(StageLease.name == lease.name).with_for_update()).one_or_none()
    if row is None or row.token != lease.token or row.holder != lease.holder:
        now_held = f"token {row.token}, held by {row.holder}" if row is not None else "no such lease"
        raise StaleLease(
            f"lease {lease.name!r}: token {lease.token} of {lease.holder} is no longer valid ({now_held}); "
            f"the write is refused"
        )


def lease_state(db: Database, name: str, *, stale_after_s: float, now: datetime | None = None) -> LeaseState | None:
    now = now or utcnow()
    with db.read() as session:
        row = session.get(StageLease, name)
        if row is None:
            return None
        return LeaseState(
            row.name, row.token, row.holder, row.purpose, row.heartbeat_at, _is_live(row, stale_after_s, now)
        )


@contextmanager
def holding(
    db: Database, name: str, *, purpose: str, stale_after_s: float, heartbeat_s: float, holder: str | None = None
) -> Iterator[Lease]:
    """Acquire (or raise ``LeaseBusy``), renew every ``heartbeat_s`` while the block runs, release after."""
    lease = acquire(db, name, holder or default_holder(), purpose=purpose, stale_after_s=stale_after_s)
    try:
        with heartbeating(
            lambda: renew(db, lease), heartbeat_s, name=f"lease-{name}", context={"lease": name, "token": lease.token}
        ):
            yield lease
    finally:
        release(db, lease)


def holding_release(
    db: Database, settings: Settings, purpose: str, *, held: Lease | None = None
) -> AbstractContextManager[Lease]:
    """The release lease, with the workspace's staleness and heartbeat settings — or ``held``, the
    lease of the driver that started this stage (a worker driving 50 → 60 or 70 holds it across
    the stages and their kernels): checked now, and renewed and released by that driver."""
    if held is not None:
        return _driven_by(db, held)
    return holding(
        db,
        RELEASE_LEASE,
        purpose=purpose,
        stale_after_s=settings.lease_stale_after_s,
        heartbeat_s=settings.heartbeat_interval_s,
    )


@contextmanager
def _driven_by(db: Database, lease: Lease) -> Iterator[Lease]:
    verify_fence(db, lease)  # StaleLease now, before any work, if the driver lost it
    yield lease


def release_lease_of(token: int | None, holder: str | None) -> Lease | None:
    """The release lease a driver handed to a stage as its two parameters (None: the stage takes
    the lease itself, as when an operator runs it by hand)."""
    return Lease(RELEASE_LEASE, token, holder) if token is not None and holder is not None else None


def verify_fence(db: Database, lease: Lease) -> None:
    """``check_fence`` in a transaction of its own: before a write that cannot join one (an object)."""
    with db.transaction() as session:
        check_fence(session, lease)
