"""The message queue on the Metadata DB (``OpsMessage``), at-least-once.

``claim`` hides a message for a visibility timeout and counts the delivery in ``attempt``; a
consumer that does not ``ack`` in time loses it to the next claimer (redelivery, attempt + 1).
A consumer that works longer than the timeout keeps its claim with ``extend`` (from its
heartbeat), and hands it back unfinished with ``release_claim`` on a clean stop. A message
delivered as often as its type's cap (``max_deliveries``) without an ack is *parked*: acked with
outcome PARKED and the reason, never delivered again (a poison message cannot loop forever).
On PostgreSQL claimers skip each other's locked rows (``FOR UPDATE SKIP LOCKED``); on SQLite the
write transaction (BEGIN IMMEDIATE) serialises them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from opslib.control.messages import (
    MessageRefused,
    RollbackRequest,
    TrainingRequest,
    parse_control_message,
    to_payload,
)
from opslib.db.engine import Database
from opslib.db.models import MessageOutcome, OpsMessage, utcnow
from opslib.errors import Invalid
from opslib.infra.logs import get_logger

log = get_logger(__name__)


class QueueError(Invalid):
    pass


@dataclass(frozen=True)
class Delivery:
    message_id: int
    message_type: str
    payload: dict[str, Any]
    trace_id: str
    attempt: int
    claimed_by: str
    visible_at: datetime


def publish(
    db: Database, message: TrainingRequest | RollbackRequest | dict[str, Any], *, session: Session | None = None
) -> int:
    """Enqueue a message; returns its id. Raw dicts are stored as given (checked at consume).

    With ``session`` the message is added to that open transaction (and commits or rolls back
    with the caller's other changes); without it, it is committed on its own.
    """
    payload = to_payload(message) if not isinstance(message, dict) else dict(message)
    if session is not None:
        return _add_message(session, payload)
    with db.transaction() as own:
        return _add_message(own, payload)


def _add_message(session: Session, payload: dict[str, Any]) -> int:
    now = utcnow()
    row = OpsMessage(
        message_type=str(payload.get("message_type") or "UNKNOWN")[:64],
        payload=payload,
        trace_id=str(payload.get("trace_id") or "")[:64] or "untraced",
        attempt=0,
        issued_at=now,
        visible_at=now,
    )
    session.add(row)
    session.flush()
    log.info(
        "message published", extra={"message_id": row.id, "message_type": row.message_type, "trace_id": row.trace_id}
    )
    return row.id


def delivery_cap(max_deliveries: Mapping[str, int] | None, message_type: str) -> int | None:
    """How many deliveries a message of ``message_type`` gets (None: no cap configured)."""
    if not max_deliveries:
        return None
    return max_deliveries.get(message_type, max_deliveries.get("*"))


def claim(
    db: Database,
    consumer: str,
    *,
    visibility_timeout_s: float,
    message_types: tuple[str, ...] | None = None,
    max_deliveries: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> Delivery | None:
    """Claim the oldest visible, unacked message (or None); park those past their delivery cap."""
    if visibility_timeout_s <= 0:
        raise QueueError(f"visibility_timeout_s {visibility_timeout_s}: must be > 0")
    if not consumer:
        raise QueueError("consumer: must name the claiming worker")
    now = now or utcnow()
    with db.transaction() as session:
        query = (
            select(OpsMessage)
            .where(OpsMessage.acked_at.is_(None), OpsMessage.visible_at <= now)
            .order_by(OpsMessage.visible_at, OpsMessage.id)
            .limit(1)
        )
        if message_types:
            query = query.where(OpsMessage.message_type.in_(message_types))
        if db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        while True:
            row = session.scalars(query).first()
            if row is None:
                return None
            cap = delivery_cap(max_deliveries, row.message_type)
            if cap is None or row.attempt < cap:
                break
            _park(
                session,
                row,
                f"delivered {row.attempt} times without an ack (cap {cap}); last claimed by {row.claimed_by}",
            )
        row.attempt += 1
        row.claimed_by = consumer
        row.visible_at = now + timedelta(seconds=visibility_timeout_s)
        return Delivery(
            row.id, row.message_type, dict(row.payload), row.trace_id, row.attempt, consumer, row.visible_at
        )


def _park(session: Session, row: OpsMessage, reason: str) -> None:
    row.acked_at = utcnow()
    row.outcome = MessageOutcome.PARKED
    row.outcome_reason = reason
    session.flush()
    log.error(
        "message parked as poison",
        extra={"message_id": row.id, "message_type": row.message_type, "reason": reason, "trace_id": row.trace_id},
    )


def _finish(db: Database, delivery: Delivery, outcome: MessageOutcome, reason: str | None) -> bool:
    with db.transaction() as session:
        done = cast(  # DML: Session.execute is typed Result, returns a CursorResult
            CursorResult[Any],
            session.execute(
                update(OpsMessage)
                .where(OpsMessage.id == delivery.message_id, OpsMessage.acked_at.is_(None))
                .values(acked_at=utcnow(), outcome=outcome, outcome_reason=reason)
            ),
        ).rowcount
    return bool(done)


def ack(db: Database, delivery: Delivery, note: str | None = None) -> bool:
    """Mark done. False if it was already acked (a redelivered copy finished first)."""
    return _finish(db, delivery, MessageOutcome.DONE, note)


def refuse(db: Database, delivery: Delivery, reason: str) -> bool:
    """Mark refused with ``reason``: never executed, never redelivered."""
    log.warning(
        "message refused", extra={"message_id": delivery.message_id, "reason": reason, "trace_id": delivery.trace_id}
    )
    return _finish(db, delivery, MessageOutcome.REFUSED, reason)


def park(db: Database, delivery: Delivery, reason: str) -> bool:
    """Park a delivery as poison (e.g. it failed on its last allowed delivery): never redelivered."""
    log.error(
        "message parked as poison",
        extra={"message_id": delivery.message_id, "reason": reason, "trace_id": delivery.trace_id},
    )
    return _finish(db, delivery, MessageOutcome.PARKED, reason)


def _still_ours(delivery: Delivery) -> tuple[Any, ...]:
    return (
        OpsMessage.id == delivery.message_id,
        OpsMessage.acked_at.is_(None),
        OpsMessage.claimed_by == delivery.claimed_by,
        OpsMessage.attempt == delivery.attempt,
    )


def release_claim(db: Database, delivery: Delivery, *, delay_s: float = 0.0) -> bool:
    """Hand an unfinished claim back (a clean stop, or work that must wait for someone else):
    visible again after ``delay_s``, and this delivery does not count towards the cap. False if
    the claim was no longer ours."""
    with db.transaction() as session:
        done = cast(
            CursorResult[Any],
            session.execute(
                update(OpsMessage)
                .where(*_still_ours(delivery))
                .values(visible_at=utcnow() + timedelta(seconds=delay_s), claimed_by=None, attempt=delivery.attempt - 1)
            ),
        ).rowcount
    return bool(done)


def expire_claims(db: Database, message_type: str, reason: str) -> list[int]:
    """Make claimed, unacked messages of ``message_type`` visible now — for a caller that knows
    their claimer is dead (e.g. the release lease it held went stale). Their ids."""
    now = utcnow()
    with db.transaction() as session:
        rows = list(
            session.scalars(
                select(OpsMessage).where(
                    OpsMessage.message_type == message_type,
                    OpsMessage.acked_at.is_(None),
                    OpsMessage.visible_at > now,
                )
            )
        )
        for row in rows:
            row.visible_at = now
    for row in rows:
        log.warning("claim expired early", extra={"message_id": row.id, "claimed_by": row.claimed_by, "reason": reason})
    return [row.id for row in rows]


def extend(db: Database, delivery: Delivery, visibility_timeout_s: float) -> bool:
    """Keep a long-running claim: push its visibility out (only while we still hold it)."""
    with db.transaction() as session:
        changed = cast(
            CursorResult[Any],
            session.execute(
                update(OpsMessage)
                .where(*_still_ours(delivery))
                .values(visible_at=utcnow() + timedelta(seconds=visibility_timeout_s))
            ),
        ).rowcount
    return bool(changed)


def receive(
    db: Database,
    consumer: str,
    *,
    visibility_timeout_s: float,
    message_types: tuple[str, ...] | None = None,
    max_deliveries: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> tuple[Delivery, TrainingRequest | RollbackRequest] | None:
    """Claim the next *valid* control message; invalid ones are refused on the way."""
    while True:
        delivery = claim(
            db,
            consumer,
            visibility_timeout_s=visibility_timeout_s,
            message_types=message_types,
            max_deliveries=max_deliveries,
            now=now,
        )
        if delivery is None:
            return None
        try:
            return delivery, parse_control_message(delivery.payload, delivery.attempt)
        except MessageRefused as refused:
            refuse(db, delivery, refused.reason)
