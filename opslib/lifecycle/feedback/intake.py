"""Feedback from a live client: checked against what was actually served, durable before it is
acknowledged, written to ``raw_logs/`` in batches.

``accept_feedback`` turns a client's ``(req_id, user_id, rating, used_ids)`` into the feedback
event of the contract — model, index, shown ids and project taken from the stored
``SearchResponseSnapshot``, never from the client — and commits it to the ``feedback_outbox``
table before returning, so an acknowledged event survives a crash of the server. It checks with
the same pieces as ``ingest_feedback`` (``opslib.lifecycle.feedback.events``): the client's fields
first (``check_text``/``check_ids``: no blank value, no control character, at least one used id),
then the whole event (``check_event``: ``created_at`` within the intake limits, a non-blank
``query_text`` …), so the endpoint never acknowledges an event ingestion would refuse. ``flush_outbox``
moves the pending events to one raw-log batch file (when enough have gathered, or the oldest is old
enough, or on shutdown) and deletes them in the same transaction. A crash between the file write
and the commit writes the batch again later: duplicates in ``raw_logs/`` are allowed by the
contract and removed by dataset generation (same ``event_id``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from opslib.db.models import FeedbackOutbox, SearchResponseSnapshot, utcnow
from opslib.errors import Invalid, NotFound, Refused
from opslib.infra.logs import current_trace_id, get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import (
    RATINGS,
    FeedbackEvent,
    IntakeLimits,
    InvalidEvent,
    check_ids,
    check_text,
    ingest_feedback,
    make_event,
)

log = get_logger(__name__)


class FeedbackRejected(Invalid):
    """The feedback does not match what was served (field and reason in the message)."""


class SnapshotNotFound(FeedbackRejected, NotFound):
    """No search response with this ``req_id`` was stored."""


class SnapshotExpired(FeedbackRejected, Refused):
    """The response's snapshot is past its ``expires_at``: feedback on it is no longer taken."""


@dataclass(frozen=True)
class FeedbackIn:
    req_id: str
    user_id: str
    rating: str
    used_ids: list[str]
    project_id: str | None = None  # when given, it must be the response's project


@dataclass(frozen=True)
class Accepted:
    event: FeedbackEvent
    duplicate: bool  # the same feedback was already pending: nothing new was stored


def _checked(feedback: FeedbackIn) -> None:
    """The client's fields, by the intake rules of the event they become (before any look-up)."""
    try:
        check_text("req_id", feedback.req_id)
        check_text("user_id", feedback.user_id)
        if feedback.project_id is not None:
            check_text("project_id", feedback.project_id)
        if feedback.rating not in RATINGS:
            raise FeedbackRejected(f"rating: {feedback.rating!r} is not one of {', '.join(RATINGS)}")
        check_ids("used_ids", feedback.used_ids)
    except InvalidEvent as invalid:
        raise FeedbackRejected(str(invalid)) from None


def accept_feedback(ws: Workspace, feedback: FeedbackIn, *, trace_id: str | None = None) -> Accepted:
    """Check ``feedback`` against its stored response and commit the event to the outbox."""
    _checked(feedback)
    now = utcnow()
    with ws.db.transaction() as session:
        snapshot = session.get(SearchResponseSnapshot, feedback.req_id)
        if snapshot is None:
            raise SnapshotNotFound(f"req_id: no search response {feedback.req_id!r} was stored")
        if snapshot.expires_at <= now:
            raise SnapshotExpired(
                f"req_id: the response {feedback.req_id!r} expired at {snapshot.expires_at.isoformat()}"
            )
        if snapshot.user_id != feedback.user_id:
            raise FeedbackRejected(f"user_id: response {feedback.req_id!r} was served to another user")
        if feedback.project_id is not None and feedback.project_id != snapshot.project_id:
            raise FeedbackRejected(f"project_id: response {feedback.req_id!r} belongs to another project")
        shown = list(snapshot.topk_ids)
        stray = [u for u in feedback.used_ids if u not in shown]
        if stray:
            raise FeedbackRejected(f"used_ids: {stray} were not in the response")
        try:
            event = make_event(
                user_id=snapshot.user_id,
                project_id=snapshot.project_id,
                req_id=snapshot.req_id,
                query_text=snapshot.query_text,
                rating=feedback.rating,
                topk_ids=shown,
                used_ids=list(dict.fromkeys(feedback.used_ids)),
                active_model_version=snapshot.active_model_version,
                active_index_name=snapshot.active_index_name,
                created_at=now,
                # The search's trace when it recorded one: feedback and search are one story.
                trace_id=snapshot.trace_id or trace_id or current_trace_id(),
                now=now,
                limits=IntakeLimits.from_settings(ws.settings),
            )
        except InvalidEvent as invalid:  # e.g. a stored snapshot intake cannot take (a blank query)
            raise FeedbackRejected(str(invalid)) from invalid
        if session.get(FeedbackOutbox, event.event_id) is not None:
            return Accepted(event, duplicate=True)
        session.add(FeedbackOutbox(event_id=event.event_id, event=event.to_dict(), received_at=now))
        try:
            session.flush()
        except IntegrityError:  # the same feedback, delivered twice at once: the other one stored it
            session.rollback()
            return Accepted(event, duplicate=True)
    return Accepted(event, duplicate=False)


@dataclass
class OutboxFlush:
    flushed: int = 0
    raw_files: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)
    pending: int = 0  # left in the outbox afterwards (not due yet, or beyond max_events)


def outbox_backlog(ws: Workspace) -> tuple[int, float | None]:
    """(pending events, age in seconds of the oldest one or None)."""
    with ws.db.read() as session:
        count, oldest = session.execute(select(func.count(), func.min(FeedbackOutbox.received_at))).one()
    return int(count), (utcnow() - oldest).total_seconds() if oldest is not None else None


def flush_outbox(
    ws: Workspace,
    *,
    batch_events: int | None = None,
    max_age: timedelta | None = None,
    force: bool = False,
    max_events: int = 5000,
) -> OutboxFlush:
    """Write pending events to one raw-log batch when ``batch_events`` have gathered or the oldest
    is older than ``max_age`` (defaults from settings), or whatever is pending when ``force``."""
    batch_events = batch_events or ws.settings.feedback_batch_size
    max_age = max_age if max_age is not None else timedelta(seconds=ws.settings.feedback_flush_age_s)
    report = OutboxFlush()
    if not force:  # a read first: most ticks have nothing due, and need not take a write lock
        pending, oldest_age = outbox_backlog(ws)
        if pending == 0 or (pending < batch_events and (oldest_age or 0.0) < max_age.total_seconds()):
            report.pending = pending
            return report
    with ws.db.transaction() as session:
        # Several replicas flush the same table: each takes rows no other flusher holds.
        rows = session.scalars(
            select(FeedbackOutbox)
            .order_by(FeedbackOutbox.received_at, FeedbackOutbox.event_id)
            .limit(max_events)
            .with_for_update(skip_locked=True)
        ).all()
        due = force or len(rows) >= batch_events or (rows and utcnow() - rows[0].received_at >= max_age)
        if rows and due:
            # As lines, checked by ingestion again: a row it refuses goes to error_logs/ with its
            # reason instead of failing every flush (a poison row would block the outbox).
            lines = [orjson.dumps(row.event, option=orjson.OPT_SORT_KEYS) for row in rows]
            ingest = ingest_feedback(
                ws.objects, lines, batch_size=len(lines), limits=IntakeLimits.from_settings(ws.settings)
            )
            session.execute(delete(FeedbackOutbox).where(FeedbackOutbox.event_id.in_([r.event_id for r in rows])))
            report.flushed = len(rows)
            report.raw_files, report.error_files = ingest.raw_files, ingest.error_files
    report.pending = outbox_backlog(ws)[0]
    if report.flushed:
        log.info("feedback outbox flushed", extra={"events": report.flushed, "raw_files": report.raw_files})
    return report
