"""Video state control: the one module that changes a video's serving state and its status.

Two columns of ``Video`` carry state, each with its own transition table:

* ``search_serving_state`` (``SERVING_TRANSITIONS``): whether search may show the video. A
  rollback hides the videos the snapshot index does not fully hold and shows them again once the
  restored model has re-embedded them (``opslib.lifecycle.rollback``).
* ``status`` (``STATUS_TRANSITIONS``): the ingest lifecycle (``opslib.corpus.ingest``). A video
  is PROCESSING while its chunks are embedded, READY once they are in every index the release
  writes to, FAILED if that failed. PENDING, UPLOADED and DELETING have no transition here: the
  upload pipeline and video deletion are outside the workbench (search and the dataset builder
  only read them).

Every function takes the caller's ``Session`` so a change commits atomically with the caller's
other writes, and works on a set of videos with one ``UPDATE … WHERE id IN (…) AND <state> =
<source>``. ``None`` as a source is "no row yet": the states a new video is created in
(``new_video``). A move the table does not hold raises ``VideoStateError`` (``Refused``) before any
SQL; a strict move whose videos are not all in its source state raises ``VideoStateConflict``
(``Refused`` and ``Conflict``) and changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from opslib.db.models import ServingState, Video, VideoStatus, utcnow
from opslib.errors import Conflict, Refused

# (from, to) -> what the move is. ``None`` is "no row yet" (ingest creates the video).
SERVING_TRANSITIONS: dict[tuple[ServingState | None, ServingState], str] = {
    (None, ServingState.SERVABLE): "ingest: a new video is servable (search shows it once it is READY)",
    (ServingState.SERVABLE, ServingState.ROLLBACK_EXCLUDED): "rollback: a chunk is missing from the snapshot index",
    (ServingState.ROLLBACK_EXCLUDED, ServingState.SERVABLE): "re-embedded with the restored model",
}
STATUS_TRANSITIONS: dict[tuple[VideoStatus | None, VideoStatus], str] = {
    (None, VideoStatus.PROCESSING): "ingest: the video and its chunks are recorded; embedding starts",
    (VideoStatus.PROCESSING, VideoStatus.READY): "every chunk is in each index the release writes to",
    (VideoStatus.PROCESSING, VideoStatus.FAILED): "ingest failed (INDEXING): the video never becomes READY",
}
_SHOWN = 10  # videos named in an error message


class VideoStateError(Refused):
    """A refused video transition (not in the table); nothing was changed."""


class VideoStateConflict(VideoStateError, Conflict):
    """Videos a strict move names are not in its source state (another writer moved or deleted
    them since the caller read them): refused, nothing was changed; re-read them."""


def _name(state: enum.Enum | None) -> str:
    return state.value if state is not None else "—"


def check_serving_transition(current: ServingState | None, target: ServingState) -> str:
    try:
        return SERVING_TRANSITIONS[(current, target)]
    except KeyError:
        raise VideoStateError(
            f"video serving-state transition {_name(current)} → {target.value} is not allowed"
        ) from None


def check_status_transition(current: VideoStatus | None, target: VideoStatus) -> str:
    try:
        return STATUS_TRANSITIONS[(current, target)]
    except KeyError:
        raise VideoStateError(f"video status transition {_name(current)} → {target.value} is not allowed") from None


def new_video(*, id: str, user_id: str, project_id: str, title: str, category: str | None = None) -> Video:
    """A new ``Video`` in its initial states (— → PROCESSING, — → SERVABLE); the caller adds it."""
    check_status_transition(None, VideoStatus.PROCESSING)
    check_serving_transition(None, ServingState.SERVABLE)
    return Video(
        id=id,
        user_id=user_id,
        project_id=project_id,
        title=title,
        category=category,
        status=VideoStatus.PROCESSING,
        search_serving_state=ServingState.SERVABLE,
    )


def _move(
    session: Session,
    column: InstrumentedAttribute,  # type: ignore[type-arg]
    what: str,
    video_ids: Iterable[str],
    source: enum.Enum,
    target: enum.Enum,
    values: Mapping[str, object],
    only_in_source: bool,
) -> int:
    ids = list(dict.fromkeys(video_ids))
    if not ids:
        return 0
    statement = (
        update(Video)
        .where(Video.id.in_(ids), column == source)
        .values({column.key: target, "updated_at": utcnow(), **values})
    )
    if only_in_source:
        return session.execute(statement).rowcount  # type: ignore[attr-defined, no-any-return]
    # All or nothing: under a savepoint, so a refusal leaves the caller's transaction as it was.
    savepoint = session.begin_nested()
    moved: int = session.execute(statement).rowcount  # type: ignore[attr-defined]
    if moved == len(ids):
        savepoint.commit()
        return moved
    savepoint.rollback()
    found: dict[str, enum.Enum] = dict(
        session.execute(select(Video.id, column).where(Video.id.in_(ids))).tuples().all()
    )
    refused = [vid for vid in ids if found.get(vid) is not source]
    shown = ", ".join(
        f"{vid!r} is {found[vid].value}" if vid in found else f"{vid!r} does not exist" for vid in refused[:_SHOWN]
    )
    more = f" and {len(refused) - _SHOWN} more" if len(refused) > _SHOWN else ""
    raise VideoStateConflict(
        f"video {what} transition {source.value} → {target.value} refused for {len(refused)} of {len(ids)} "
        f"video(s), which are not {source.value}: {shown}{more}; nothing was changed"
    )


def move_serving_state(
    session: Session,
    video_ids: Iterable[str],
    source: ServingState,
    target: ServingState,
    *,
    only_in_source: bool = False,
) -> int:
    """``source`` → ``target`` for ``video_ids`` in one UPDATE; the number of videos moved.

    ``only_in_source``: videos not in ``source`` (or gone) are left as they are — for moves that
    are safe to repeat. Otherwise every named video must be in ``source``, or nothing changes and
    ``VideoStateConflict`` names the videos that are not."""
    check_serving_transition(source, target)
    return _move(session, Video.search_serving_state, "serving-state", video_ids, source, target, {}, only_in_source)


def move_status(
    session: Session,
    video_ids: Iterable[str],
    source: VideoStatus,
    target: VideoStatus,
    *,
    failed_stage: str | None = None,
    only_in_source: bool = False,
) -> int:
    """``source`` → ``target`` for ``video_ids`` in one UPDATE (``failed_stage`` set with it);
    the number of videos moved. ``only_in_source`` as for ``move_serving_state``."""
    check_status_transition(source, target)
    values = {"failed_stage": failed_stage}
    return _move(session, Video.status, "status", video_ids, source, target, values, only_in_source)


def mark_ready(session: Session, video_ids: Iterable[str]) -> int:
    """PROCESSING → READY for every one of ``video_ids`` (all were being ingested), or none."""
    return move_status(session, video_ids, VideoStatus.PROCESSING, VideoStatus.READY)


def mark_failed(session: Session, video_ids: Iterable[str], *, stage: str) -> int:
    """PROCESSING → FAILED at ``stage`` for those of ``video_ids`` still PROCESSING.

    Lenient on purpose: it runs while an ingest error propagates, which it must not replace."""
    return move_status(
        session, video_ids, VideoStatus.PROCESSING, VideoStatus.FAILED, failed_stage=stage, only_in_source=True
    )


def exclude_for_rollback(session: Session, video_ids: Iterable[str]) -> int:
    """SERVABLE → ROLLBACK_EXCLUDED for those of ``video_ids`` still SERVABLE (safe to repeat)."""
    return move_serving_state(
        session, video_ids, ServingState.SERVABLE, ServingState.ROLLBACK_EXCLUDED, only_in_source=True
    )


def make_servable_again(session: Session, video_ids: Iterable[str]) -> int:
    """ROLLBACK_EXCLUDED → SERVABLE for those of ``video_ids`` still excluded (safe to repeat)."""
    return move_serving_state(
        session, video_ids, ServingState.ROLLBACK_EXCLUDED, ServingState.SERVABLE, only_in_source=True
    )
