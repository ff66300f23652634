import threading
from datetime import timedelta

import pytest

from opslib.control.messages import (
    MessageRefused,
    RollbackRequest,
    TrainingRequest,
    new_rollback_request,
    new_training_request,
    parse_control_message,
    to_payload,
)
from opslib.control.queue import (
    QueueError,
    ack,
    claim,
    extend,
    publish,
    receive,
    refuse,
    release_claim,
)
from opslib.db.migrate import upgrade
from opslib.db.models import MessageOutcome, OpsMessage, utcnow
from opslib.infra.workspace import Workspace


@pytest.fixture
def db(empty_ws: Workspace):  # type: ignore[no-untyped-def]
    upgrade(empty_ws.db)
    return empty_ws.db


def _row(db, message_id: int) -> OpsMessage:  # type: ignore[no-untyped-def]
    with db.read() as session:
        row = session.get(OpsMessage, message_id)
        assert row is not None
        return row


def test_publish_claim_ack(db) -> None:  # type: ignore[no-untyped-def]
    message = new_training_request(trace_id="trace-1")
    mid = publish(db, message)
    delivery = claim(db, "worker-a", visibility_timeout_s=30)
    assert delivery is not None
    assert (delivery.message_id, delivery.message_type, delivery.attempt, delivery.trace_id) == (
        mid,
        "TRAINING_REQUEST",
        1,
        "trace-1",
    )
    assert claim(db, "worker-b", visibility_timeout_s=30) is None  # invisible while claimed
    assert ack(db, delivery)
    assert not ack(db, delivery)  # a second ack changes nothing
    row = _row(db, mid)
    assert row.acked_at is not None and row.outcome is MessageOutcome.DONE
    assert claim(db, "worker-b", visibility_timeout_s=30, now=utcnow() + timedelta(hours=1)) is None


def test_redelivery_after_visibility_timeout_counts_attempts(db) -> None:  # type: ignore[no-untyped-def]
    mid = publish(db, new_training_request())
    first = claim(db, "worker-a", visibility_timeout_s=10)
    assert first is not None and first.attempt == 1
    assert claim(db, "worker-b", visibility_timeout_s=10, now=utcnow() + timedelta(seconds=5)) is None
    second = claim(db, "worker-b", visibility_timeout_s=10, now=utcnow() + timedelta(seconds=11))
    assert second is not None and (second.message_id, second.attempt, second.claimed_by) == (mid, 2, "worker-b")
    assert not extend(db, first, 60)  # worker-a no longer holds it
    assert extend(db, second, 60)


def test_messages_are_delivered_oldest_first(db) -> None:  # type: ignore[no-untyped-def]
    ids = [publish(db, new_training_request()) for _ in range(3)]
    got = [claim(db, "w", visibility_timeout_s=30) for _ in range(3)]
    assert [d.message_id for d in got if d] == ids


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            {
                "message_type": "TRAINING_REQUEST",
                "payload_version": "v2",
                "trace_id": "t",
                "issued_at": "2026-12-01T00:00:00+00:00",
            },
            "payload_version: unsupported 'v2'",
        ),
        (
            {"message_type": "TRAINING_REQUEST", "trace_id": "t", "issued_at": "2026-12-01T00:00:00+00:00"},
            "payload_version: unsupported None",
        ),
        (
            {
                "message_type": "ROLLBACK_REQUEST",
                "payload_version": "v1",
                "trace_id": "t",
                "issued_at": "2026-12-01T00:00:00+00:00",
            },
            "expected_active_model_version: missing field",
        ),
        (
            {"message_type": "TRAINING_REQUEST", "payload_version": "v1", "issued_at": "2026-12-01T00:00:00+00:00"},
            "trace_id: missing field",
        ),
        (
            {
                "message_type": "TRAINING_REQUEST",
                "payload_version": "v1",
                "trace_id": "t",
                "issued_at": "2026-12-01T00:00:00",
            },
            "issued_at",
        ),
        ({"message_type": "DELETE_EVERYTHING", "payload_version": "v1"}, "message_type: unsupported"),
        (
            {
                "message_type": "TRAINING_REQUEST",
                "payload_version": "v1",
                "trace_id": "t",
                "issued_at": "2026-12-01T00:00:00+00:00",
                "dataset_version": "x",
            },
            "dataset_version: unknown field",
        ),
    ],
)
def test_invalid_messages_are_refused_with_a_recorded_reason(db, payload: dict, reason: str) -> None:  # type: ignore[no-untyped-def]
    bad = publish(db, payload)
    good = publish(db, new_training_request())
    received = receive(db, "worker", visibility_timeout_s=30)
    assert received is not None
    delivery, message = received
    assert delivery.message_id == good and isinstance(message, TrainingRequest)
    row = _row(db, bad)
    assert row.outcome is MessageOutcome.REFUSED and row.acked_at is not None
    assert reason in (row.outcome_reason or "")
    assert claim(db, "worker", visibility_timeout_s=30, now=utcnow() + timedelta(days=1)) is not None  # only `good`


def test_refused_messages_are_never_redelivered(db) -> None:  # type: ignore[no-untyped-def]
    publish(db, {"message_type": "TRAINING_REQUEST", "payload_version": "v9"})
    assert receive(db, "w", visibility_timeout_s=1) is None
    assert receive(db, "w", visibility_timeout_s=1, now=utcnow() + timedelta(days=1)) is None


def test_rollback_request_round_trip() -> None:
    message = new_rollback_request("model-a", trace_id="t-9", reason="regression")
    parsed = parse_control_message(to_payload(message), attempt=3)
    assert isinstance(parsed, RollbackRequest)
    assert (parsed.expected_active_model_version, parsed.attempt, parsed.trace_id) == ("model-a", 3, "t-9")
    with pytest.raises(MessageRefused, match="not a JSON object"):
        parse_control_message(["x"])


def test_claim_arguments_are_checked(db) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QueueError, match="visibility_timeout_s"):
        claim(db, "w", visibility_timeout_s=0)
    with pytest.raises(QueueError, match="consumer"):
        claim(db, "", visibility_timeout_s=5)


def test_concurrent_claimers_never_share_a_message(db) -> None:  # type: ignore[no-untyped-def]
    ids = {publish(db, new_training_request()) for _ in range(40)}
    seen: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (delivery := claim(db, name, visibility_timeout_s=300)) is not None:
            with lock:
                seen.append(delivery.message_id)
            ack(db, delivery)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(ids)  # each exactly once


def test_refuse_records_reason(db) -> None:  # type: ignore[no-untyped-def]
    publish(db, new_training_request())
    delivery = claim(db, "w", visibility_timeout_s=5)
    assert delivery is not None
    assert refuse(db, delivery, "no eligible dataset")
    row = _row(db, delivery.message_id)
    assert (row.outcome, row.outcome_reason) == (MessageOutcome.REFUSED, "no eligible dataset")


def test_a_message_past_its_delivery_cap_is_parked_with_the_reason(db) -> None:  # type: ignore[no-untyped-def]
    poison = publish(db, {"message_type": "MYSTERY", "payload_version": "v1"})
    caps = {"TRAINING_REQUEST": 5, "*": 2}
    for attempt in (1, 2):  # claimed and never acked (the consumer crashes on it every time)
        later = utcnow() + timedelta(minutes=attempt)
        delivery = claim(db, f"worker-{attempt}", visibility_timeout_s=30, max_deliveries=caps, now=later)
        assert delivery is not None and delivery.attempt == attempt
    good = publish(db, new_training_request(trace_id="behind-the-poison"), session=None)
    with db.transaction() as session:  # queued behind the poison
        session.get(OpsMessage, good).visible_at = utcnow() + timedelta(minutes=4)
    delivery = claim(db, "worker-3", visibility_timeout_s=30, max_deliveries=caps, now=utcnow() + timedelta(minutes=5))
    assert delivery is not None and delivery.message_id == good  # the poison was parked on the way
    row = _row(db, poison)
    assert row.outcome is MessageOutcome.PARKED and row.acked_at is not None
    assert row.outcome_reason == "delivered 2 times without an ack (cap 2); last claimed by worker-2"
    assert ack(db, delivery)
    assert (
        claim(db, "worker-4", visibility_timeout_s=30, max_deliveries=caps, now=utcnow() + timedelta(hours=1)) is None
    )


def test_a_claim_released_on_a_clean_stop_is_visible_at_once_and_not_counted(db) -> None:  # type: ignore[no-untyped-def]
    mid = publish(db, new_training_request(trace_id="t"))
    first = claim(db, "worker-a", visibility_timeout_s=300)
    assert first is not None and release_claim(db, first)
    second = claim(db, "worker-b", visibility_timeout_s=300)
    assert second is not None and (second.message_id, second.attempt) == (mid, 1)
    assert not release_claim(db, first)  # no longer a's to give back
    assert extend(db, second, 300) and not extend(db, first, 300)
