"""Reindex shards: a candidate index build split into slices that any live worker may claim.

Stage 50's driver plans the shards once per candidate index (``plan_shards``: the chunk ids to
encode, in fixed slices, recorded in ``reindex_shards``); then it and every other live worker
``claim_shard`` — the lowest unfinished shard that nobody holds, or whose holder stopped beating
for ``stale_after_s`` — encode it, and ``complete_shard``. A claim is a small lease: each claim
increments the shard's ``token``, the holder renews ``heartbeat_at`` while it works, and its
entry writes and its completion check the token (``shard_still_ours``), so a worker that was
taken over records nothing more. Content-hash reuse makes a re-encoded slice cost nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session

from opslib.db.engine import Database
from opslib.db.models import ReindexShard, utcnow
from opslib.errors import Invalid


class ShardError(Invalid):
    pass


@dataclass(frozen=True)
class ShardClaim:
    shard_id: int
    index_name: str
    model_version: str
    shard_no: int
    chunk_ids: list[str]
    token: int
    holder: str


@dataclass(frozen=True)
class ShardProgress:
    total: int
    done: int
    held: int  # claimed by a live worker, not done
    chunks: int
    chunks_done: int

    @property
    def finished(self) -> bool:
        return self.done == self.total


def plan_shards(db: Database, index_name: str, model_version: str, chunk_ids: Sequence[str], shard_size: int) -> int:
    """Record the shards of ``index_name`` (once: a resumed build keeps its plan); their count."""
    if shard_size < 1:
        raise ShardError(f"shard_size {shard_size}: must be >= 1")
    with db.transaction() as session:
        existing = session.scalar(
            select(func.count()).select_from(ReindexShard).where(ReindexShard.index_name == index_name)
        )
        if existing:
            return int(existing)
        ids = list(dict.fromkeys(chunk_ids))
        now = utcnow()
        for shard_no, start in enumerate(range(0, len(ids), shard_size)):
            session.add(
                ReindexShard(
                    index_name=index_name,
                    model_version=model_version,
                    shard_no=shard_no,
                    chunk_ids=ids[start : start + shard_size],
                    token=0,
                    attempts=0,
                    embedded=0,
                    reused=0,
                    created_at=now,
                )
            )
        return (len(ids) + shard_size - 1) // shard_size


def claim_shard(
    db: Database, index_name: str, holder: str, *, stale_after_s: float, now: datetime | None = None
) -> ShardClaim | None:
    """The lowest unfinished shard nobody live holds, now ``holder``'s (None when there is none)."""
    now = now or utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    with db.transaction() as session:
        query = (
            select(ReindexShard)
            .where(
                ReindexShard.index_name == index_name,
                ReindexShard.done_at.is_(None),
                (ReindexShard.claimed_by.is_(None)) | (ReindexShard.heartbeat_at < stale),
            )
            .order_by(ReindexShard.shard_no)
            .limit(1)
        )
        if db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = session.scalars(query).first()
        if row is None:
            return None
        row.token += 1
        row.attempts += 1
        row.claimed_by = holder
        row.heartbeat_at = now
        return ShardClaim(
            row.id, row.index_name, row.model_version, row.shard_no, list(row.chunk_ids), row.token, holder
        )


def _ours(claim: ShardClaim) -> tuple[Any, ...]:
    return (
        ReindexShard.id == claim.shard_id,
        ReindexShard.token == claim.token,
        ReindexShard.claimed_by == claim.holder,
        ReindexShard.done_at.is_(None),
    )


def renew_shard(db: Database, claim: ShardClaim) -> bool:
    """Stamp the claim's heartbeat; False once it is no longer ours (taken over, or done)."""
    with db.transaction() as session:
        done = cast(
            CursorResult[Any], session.execute(update(ReindexShard).where(*_ours(claim)).values(heartbeat_at=utcnow()))
        ).rowcount
    return bool(done)


def shard_still_ours(claim: ShardClaim) -> Callable[[Session], bool]:
    """A write guard (asked inside the entry-writing transaction): is the claim still ours?"""

    def guard(session: Session) -> bool:
        return session.scalar(select(func.count()).select_from(ReindexShard).where(*_ours(claim))) == 1

    return guard


def complete_shard(db: Database, claim: ShardClaim, *, embedded: int, reused: int, seconds: float) -> bool:
    """Mark the shard done by this claim; False if the claim was lost meanwhile."""
    with db.transaction() as session:
        done = cast(
            CursorResult[Any],
            session.execute(
                update(ReindexShard)
                .where(*_ours(claim))
                .values(
                    done_at=utcnow(),
                    done_by=claim.holder,
                    claimed_by=None,
                    embedded=embedded,
                    reused=reused,
                    seconds=seconds,
                )
            ),
        ).rowcount
    return bool(done)


def shard_progress(db: Database, index_name: str, *, stale_after_s: float) -> ShardProgress:
    stale = utcnow() - timedelta(seconds=stale_after_s)
    with db.read() as session:
        rows = session.execute(
            select(
                ReindexShard.done_at, ReindexShard.claimed_by, ReindexShard.heartbeat_at, ReindexShard.chunk_ids
            ).where(ReindexShard.index_name == index_name)
        ).all()
    done = [r for r in rows if r.done_at is not None]
    held = [r for r in rows if r.done_at is None and r.claimed_by and r.heartbeat_at and r.heartbeat_at >= stale]
    return ShardProgress(
        len(rows), len(done), len(held), sum(len(r.chunk_ids) for r in rows), sum(len(r.chunk_ids) for r in done)
    )


def shard_table(db: Database, index_name: str) -> list[dict[str, Any]]:
    """Every shard of ``index_name``: who encoded it, what, how long, on which attempt."""
    with db.read() as session:
        rows = session.scalars(
            select(ReindexShard).where(ReindexShard.index_name == index_name).order_by(ReindexShard.shard_no)
        )
        return [
            {
                "shard": r.shard_no,
                "chunks": len(r.chunk_ids),
                "done by": r.done_by or (f"({r.claimed_by})" if r.claimed_by else "—"),
                "claims": r.attempts,
                "embedded": r.embedded,
                "reused": r.reused,
                "seconds": None if r.seconds is None else round(r.seconds, 2),
            }
            for r in rows
        ]


def drop_shards(session: Session, index_name: str) -> None:
    """Forget the plan of an index that is being dropped (an aborted candidate)."""
    session.execute(delete(ReindexShard).where(ReindexShard.index_name == index_name))
