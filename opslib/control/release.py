"""ModelRelease: the serving combination and its history (state machine described in docs/release.md).

Every change to the release row goes through ``apply``: it checks the move against
``TRANSITIONS``, runs the move's guard, updates the row by compare-and-swap on ``row_version``
(SQLAlchemy's version counter: the UPDATE matches only the version it read) and appends a
``ReleaseEvent`` with the state before and after — all in the caller's one transaction. A refused
move raises ``ReleaseError`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from opslib.control.leases import Lease, check_fence
from opslib.db.models import ModelRelease, ReleaseEvent, ReleaseStatus, utcnow
from opslib.errors import Conflict, Refused

SERVING_KEY = "default"
S = ReleaseStatus


@dataclass(frozen=True)
class Transition:
    source: ReleaseStatus | None  # None: no release row yet
    target: ReleaseStatus
    when: str


# The release state machine (docs/release.md), by event kind.
TRANSITIONS: dict[str, Transition] = {
    "BOOTSTRAP": Transition(None, S.STABLE, "empty workspace: the packaged model serves"),
    "OPEN_CANDIDATE": Transition(S.STABLE, S.CANDIDATE_REINDEXING, "a READY_FOR_RELEASE run: build its index"),
    "CANDIDATE_READY": Transition(
        S.CANDIDATE_REINDEXING, S.CANDIDATE_REINDEXING, "candidate loaded and its index built"
    ),
    "CUTOVER": Transition(
        S.CANDIDATE_REINDEXING, S.STABLE, "candidate ready and complete: snapshot the active, switch"
    ),
    "ABORT_CANDIDATE": Transition(S.CANDIDATE_REINDEXING, S.STABLE, "reindex failed: drop the candidate"),
    "PREPARE_ROLLBACK": Transition(S.STABLE, S.ROLLBACK_PREPARING, "ROLLBACK_REQUEST with a snapshot"),
    "COMPLETE_ROLLBACK": Transition(S.ROLLBACK_PREPARING, S.STABLE, "target ready, snapshot index restored"),
}

_STATE_FIELDS = (
    "release_status",
    "active_model_version",
    "active_index_name",
    "previous_model_version",
    "previous_index_name",
    "candidate_model_version",
    "candidate_index_name",
    "candidate_run_id",
    "rollback_snapshot_active_model_version",
    "rollback_snapshot_active_index_name",
    "rollback_snapshot_captured_at",
    "candidate_ready_at",
    "switched_at",
    "row_version",
)
CANDIDATE_FIELDS = ("candidate_model_version", "candidate_index_name", "candidate_run_id", "candidate_ready_at")


class ReleaseError(Refused):
    """A refused release transition; nothing was changed."""


class ReleaseConflict(ReleaseError, Conflict):
    """The release changed since the caller read it (its ``expected_row_version``): refused,
    like every ``ReleaseError``; re-read the release before asking again."""


def current_release(session: Session, *, for_update: bool = False, for_share: bool = False) -> ModelRelease | None:
    """The release row; ``for_update`` locks it exclusively (transitions), ``for_share`` against
    transitions only (PostgreSQL; SQLite write transactions are serialised anyway)."""
    query = select(ModelRelease).where(ModelRelease.serving_key == SERVING_KEY)
    if for_update:
        query = query.with_for_update()
    elif for_share:
        query = query.with_for_update(read=True)
    return session.scalars(query).one_or_none()


def release_state(release: ModelRelease | None) -> dict[str, Any] | None:
    if release is None:
        return None
    state: dict[str, Any] = {}
    for name in _STATE_FIELDS:
        value = getattr(release, name)
        state[name] = (
            value.isoformat() if isinstance(value, datetime) else (value.value if hasattr(value, "value") else value)
        )
    return state


def apply(
    session: Session,
    kind: str,
    *,
    actor: str,
    trace_id: str,
    changes: dict[str, Any] | None = None,
    guard: Callable[[ModelRelease], None] | None = None,
    expected_row_version: int | None = None,
    fence: Lease | None = None,
) -> ModelRelease:
    """Move the release by ``kind``: check the table and the guard, set ``changes``, record it.

    With ``fence`` (the release lease the caller holds) the move is refused (``StaleLease``)
    unless that lease is still the current one: a taken-over driver cannot move the release."""
    if kind not in TRANSITIONS:
        raise ReleaseError(f"release transition {kind!r}: unknown")
    move = TRANSITIONS[kind]
    if fence is not None:
        check_fence(session, fence)
    release = current_release(session, for_update=True)
    status = release.release_status if release is not None else None
    if status is not move.source:
        raise ReleaseError(
            f"release transition {kind} needs {move.source.value if move.source else 'no release'}, "
            f"the release is {status.value if status else 'not created'}"
        )
    if release is not None and expected_row_version is not None and release.row_version != expected_row_version:
        raise ReleaseConflict(
            f"release transition {kind}: the release changed (row version {release.row_version}, "
            f"expected {expected_row_version})"
        )
    if release is None:
        release = ModelRelease(serving_key=SERVING_KEY, release_status=move.target, **(changes or {}))
        before = None
        if guard:
            guard(release)
        session.add(release)
    else:
        before = release_state(release)
        if guard:
            guard(release)
        for name, value in (changes or {}).items():
            setattr(release, name, value)
        release.release_status = move.target
    session.flush()  # the UPDATE carries WHERE row_version = <read version>: a concurrent change fails it
    session.add(
        ReleaseEvent(
            release_id=release.id,
            kind=kind,
            before=before,
            after=release_state(release) or {},
            actor=actor,
            trace_id=trace_id,
            at=utcnow(),
        )
    )
    session.flush()
    return release


def create_initial_release(
    session: Session, *, model_version: str, index_name: str, actor: str, trace_id: str
) -> ModelRelease:
    """— → STABLE: the first serving combination (bootstrap)."""
    return apply(
        session,
        "BOOTSTRAP",
        actor=actor,
        trace_id=trace_id,
        changes={"active_model_version": model_version, "active_index_name": index_name},
    )


def history(session: Session, limit: int | None = None) -> list[ReleaseEvent]:
    """Release events, oldest first: what served when."""
    query = select(ReleaseEvent).order_by(ReleaseEvent.id)
    events = list(session.scalars(query))
    return events[-limit:] if limit else events


def cleared_candidate() -> dict[str, Any]:
    return {name: None for name in CANDIDATE_FIELDS}


def history_frame(session: Session) -> Any:
    """The release history as a table: when, what, who, and what served after it."""
    rows = [
        {
            "at": e.at,
            "kind": e.kind,
            "actor": e.actor,
            "status": e.after.get("release_status"),
            "active": e.after.get("active_model_version"),
            "candidate": e.after.get("candidate_model_version"),
            "trace_id": e.trace_id,
        }
        for e in history(session)
    ]
    return pd.DataFrame(rows, columns=["at", "kind", "actor", "status", "active", "candidate", "trace_id"])


def compare_states(before: dict[str, Any] | None, after: dict[str, Any] | None) -> Any:
    """Release fields before and after a stage, changed ones marked."""
    names = list((after or before or {}).keys())
    rows = []
    for name in names:
        old, new = (before or {}).get(name), (after or {}).get(name)
        rows.append({"field": name, "before": old, "after": new, "changed": "●" if old != new else ""})
    return pd.DataFrame(rows).set_index("field")
