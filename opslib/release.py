"""ModelRelease: the serving combination and its history (DESIGN §3, §5).

Every change to the release row goes through ``transition``: it checks the move against the
transition table, updates the row by compare-and-swap on ``row_version`` (SQLAlchemy's
version counter) and appends a ``ReleaseEvent`` in the same transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opslib.db.models import ModelRelease, ReleaseEvent, ReleaseStatus

SERVING_KEY = "default"

# (from, to) -> event kind. ``None`` is "no release row yet".
TRANSITIONS: dict[tuple[ReleaseStatus | None, ReleaseStatus], str] = {
    (None, ReleaseStatus.STABLE): "BOOTSTRAP",
}

_SNAPSHOT_FIELDS = (
    "release_status", "active_model_version", "active_index_name", "previous_model_version",
    "previous_index_name", "candidate_model_version", "candidate_index_name", "candidate_run_id",
    "rollback_snapshot_active_model_version", "rollback_snapshot_active_index_name",
    "rollback_snapshot_captured_at", "candidate_ready_at", "switched_at", "row_version",
)


class ReleaseError(Exception):
    """A refused release transition; nothing was changed."""


def current_release(session: Session, *, for_update: bool = False) -> ModelRelease | None:
    query = select(ModelRelease).where(ModelRelease.serving_key == SERVING_KEY)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def release_state(release: ModelRelease | None) -> dict[str, Any] | None:
    if release is None:
        return None
    state: dict[str, Any] = {}
    for name in _SNAPSHOT_FIELDS:
        value = getattr(release, name)
        state[name] = value.isoformat() if hasattr(value, "isoformat") else (
            value.value if hasattr(value, "value") else value
        )
    return state


def create_initial_release(
    session: Session, *, model_version: str, index_name: str, actor: str, trace_id: str
) -> ModelRelease:
    """— → STABLE: the first serving combination (bootstrap)."""
    if current_release(session, for_update=True) is not None:
        raise ReleaseError("a ModelRelease already exists; bootstrap only creates the first one")
    kind = TRANSITIONS[(None, ReleaseStatus.STABLE)]
    release = ModelRelease(
        serving_key=SERVING_KEY,
        release_status=ReleaseStatus.STABLE,
        active_model_version=model_version,
        active_index_name=index_name,
    )
    session.add(release)
    session.flush()
    session.add(
        ReleaseEvent(
            release_id=release.id, kind=kind, before=None, after=release_state(release) or {},
            actor=actor, trace_id=trace_id,
        )
    )
    return release
