"""Feedback intake: checked against the stored snapshot, durable in the outbox, flushed in batches."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from helpers import corpus_ready, feedback_event
from sqlalchemy import update

from opslib.corpus.search import search
from opslib.db.models import FeedbackOutbox, SearchResponseSnapshot, utcnow
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import ERROR_PREFIX, RAW_PREFIX, feedback_event_id, log_files
from opslib.lifecycle.feedback.intake import (
    FeedbackIn,
    FeedbackRejected,
    SnapshotNotFound,
    accept_feedback,
    flush_outbox,
    outbox_backlog,
)


def _served(ws: Workspace, n: int) -> list[tuple[str, list[str]]]:
    """(req_id, [its first shown id]) of ``n`` new searches."""
    found = [search(ws, f"how do I go about sorting lists {i}", project_id="mini-alpha", user_id="u") for i in range(n)]
    return [(r.req_id, r.refs[:1]) for r in found]


def test_feedback_takes_model_index_and_shown_ids_from_the_snapshot(ws: Workspace) -> None:
    corpus_ready(ws)
    response = search(ws, "how do I go about sorting lists", project_id="mini-alpha", user_id="u", trace_id="t-1")
    accepted = accept_feedback(ws, FeedbackIn(response.req_id, "u", "DISLIKE", [response.refs[1]]), trace_id="t-2")
    event = accepted.event
    assert not accepted.duplicate and event.rating == "DISLIKE" and event.used_ids == (response.refs[1],)
    assert event.topk_ids == tuple(response.refs) and event.active_model_version == response.active_model_version
    assert event.response_snapshot_ref == response.req_id and event.trace_id == "t-1"  # the search's trace
    assert accept_feedback(ws, FeedbackIn(response.req_id, "u", "DISLIKE", [response.refs[1]])).duplicate
    shown = response.refs[:1]
    with pytest.raises(SnapshotNotFound, match="req_id"):
        accept_feedback(ws, FeedbackIn("missing", "u", "LIKE", shown))
    for bad, field in [
        (FeedbackIn(response.req_id, "", "LIKE", shown), "user_id"),
        (FeedbackIn(response.req_id, "u", "LOVE", shown), "rating"),
        (FeedbackIn(response.req_id, "u", "LIKE", [""]), "used_ids"),
        (FeedbackIn(response.req_id, "other", "LIKE", shown), "user_id"),
    ]:
        with pytest.raises(FeedbackRejected, match=f"^{field}: "):
            accept_feedback(ws, bad)
    assert outbox_backlog(ws)[0] == 1  # refusals stored nothing


def test_the_outbox_flushes_by_count_by_age_and_when_forced(ws: Workspace) -> None:
    corpus_ready(ws)
    for req_id, used in _served(ws, 3):
        accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", used))
    hour = timedelta(hours=1)
    assert flush_outbox(ws, batch_events=5, max_age=hour).flushed == 0  # neither full nor old
    assert ws.objects.list(RAW_PREFIX) == []
    report = flush_outbox(ws, batch_events=3, max_age=hour)  # full
    assert report.flushed == 3 and report.pending == 0 and len(report.raw_files) == 1
    assert len(list(ws.objects.iter_lines(report.raw_files[0]))) == 3
    ((req_id, used),) = _served(ws, 1)
    accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", used))
    assert flush_outbox(ws, batch_events=5, max_age=timedelta(0)).flushed == 1  # old enough
    accept_feedback(ws, FeedbackIn(req_id, "u", "DISLIKE", used))
    assert flush_outbox(ws, batch_events=5, max_age=hour, force=True).flushed == 1  # shutdown
    with ws.db.read() as session:
        assert session.query(FeedbackOutbox).count() == 0
    assert len(ws.objects.list(RAW_PREFIX)) == 3


# Intake that cannot poison (issue 15): the endpoint checks with the same pieces as ingestion ---
CLIENT_FIELDS = [
    ({"used_ids": []}, "used_ids", "at least one id"),  # was accepted
    ({"used_ids": [" "]}, "used_ids", "id 0 empty after trimming"),
    ({"used_ids": ["c\x00"]}, "used_ids", "id 0 holds control character U+0000"),
    ({"user_id": "u\x00"}, "user_id", "U+0000"),  # before any look-up: PostgreSQL refuses a NUL
    ({"req_id": "r\x1b"}, "req_id", "U+001B"),
    ({"req_id": " "}, "req_id", "empty after trimming"),
    ({"project_id": "mini-alpha\x85"}, "project_id", "U+0085"),
]


def test_the_clients_fields_are_checked_by_the_intake_rules(ws: Workspace) -> None:
    corpus_ready(ws)
    ((req_id, used),) = _served(ws, 1)
    for change, field, words in CLIENT_FIELDS:
        given = {"req_id": req_id, "user_id": "u", "rating": "LIKE", "used_ids": used, **change}
        with pytest.raises(FeedbackRejected, match=f"^{field}: .*{re.escape(words)}"):
            accept_feedback(ws, FeedbackIn(**given))
    assert outbox_backlog(ws)[0] == 0


def test_a_served_query_intake_cannot_take_is_refused_not_acknowledged(ws: Workspace) -> None:
    """The event's query comes from the snapshot; one ingestion would refuse is never acknowledged."""
    corpus_ready(ws)
    queries = [("   ", "empty after trimming"), ("sort\x1blists", "U+001B")]
    if ws.db.engine.dialect.name != "postgresql":  # PostgreSQL cannot store a NUL: no such snapshot there
        queries.append(("a\x00b", "U+0000"))
    for (req_id, used), (query, words) in zip(_served(ws, len(queries)), queries, strict=True):
        with ws.db.transaction() as session:
            session.execute(
                update(SearchResponseSnapshot).where(SearchResponseSnapshot.req_id == req_id).values(query_text=query)
            )
        with pytest.raises(FeedbackRejected, match=f"^query_text: .*{re.escape(words)}"):
            accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", used))
    assert outbox_backlog(ws)[0] == 0


def test_a_query_with_tabs_and_line_breaks_keeps_its_feedback(ws: Workspace) -> None:
    """What a user pastes may hold tabs and line breaks: search serves it, so its feedback counts."""
    corpus_ready(ws)
    ((req_id, used),) = _served(ws, 1)
    with ws.db.transaction() as session:
        session.execute(
            update(SearchResponseSnapshot)
            .where(SearchResponseSnapshot.req_id == req_id)
            .values(query_text="sort\tlists\r\nin place")
        )
    accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", used))
    assert outbox_backlog(ws)[0] == 1


def test_the_intake_time_limits_come_from_the_settings(ws: Workspace) -> None:
    corpus_ready(ws)
    ((req_id, used),) = _served(ws, 1)
    later_epoch = Workspace(ws.settings.model_copy(update={"feedback_epoch": utcnow() + timedelta(hours=1)}))
    with pytest.raises(FeedbackRejected, match=r"^created_at: .* before the system epoch"):
        accept_feedback(later_epoch, FeedbackIn(req_id, "u", "LIKE", used))
    assert not accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", used)).duplicate


def test_a_poison_row_in_the_outbox_goes_to_error_logs_and_does_not_block_the_flush(ws: Workspace) -> None:
    """An outbox row intake would refuse now (stored before its rules, or before the epoch was
    moved) is flushed to error_logs/ with its reason; it must not fail every flush."""
    corpus_ready(ws)
    ((req_id, used),) = _served(ws, 1)
    accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", used))
    poison = feedback_event(req_id="old", query_text="   ", event_id=feedback_event_id("u1", "old", "LIKE"))
    with ws.db.transaction() as session:
        session.add(FeedbackOutbox(event_id=poison["event_id"], event=poison, received_at=utcnow()))
    report = flush_outbox(ws, force=True)
    assert (report.flushed, report.pending, len(report.raw_files), len(report.error_files)) == (2, 0, 1, 1)
    (error_key,) = log_files(ws.objects, ERROR_PREFIX)
    assert json.loads(ws.objects.get_bytes(error_key)) == poison
    reasons = ws.objects.get_text(error_key.removesuffix(".jsonl") + ".reasons.jsonl")
    assert json.loads(reasons)["reason"] == "query_text: empty after trimming whitespace"


def test_the_http_route_answers_422_naming_the_field(ws: Workspace) -> None:
    """``POST /v1/feedback`` refuses what intake refuses, with the field as ``param``."""
    from fastapi.testclient import TestClient

    from opslib.service.app import create_app

    corpus_ready(ws)
    app = create_app(ws, endpoint_id="test:0", address="http://testserver", allow_anonymous=True)
    with TestClient(app) as client:
        found = client.post(
            "/v1/search", json={"project_id": "mini-alpha", "user_id": "u", "query": "how do I go about sorting lists"}
        ).json()
        feedback = {"req_id": found["req_id"], "user_id": "u", "rating": "LIKE"}
        for body, param, words in [
            (feedback, "used_ids", "at least one id"),  # used_ids left out: []
            ({**feedback, "used_ids": []}, "used_ids", "at least one id"),
            ({**feedback, "used_ids": [found["chunks"][0]["ref"], "\u0000"]}, "used_ids", "U+0000"),
            ({**feedback, "user_id": "u\u0000", "used_ids": ["x"]}, "user_id", "U+0000"),
            ({**feedback, "project_id": " ", "used_ids": ["x"]}, "project_id", "empty after trimming"),
        ]:
            answer = client.post("/v1/feedback", json=body)
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["param"] == param and words in error["message"], error
        with ws.db.transaction() as session:
            session.execute(
                update(SearchResponseSnapshot)
                .where(SearchResponseSnapshot.req_id == found["req_id"])
                .values(query_text=" \t ")
            )
        answer = client.post("/v1/feedback", json={**feedback, "used_ids": [found["chunks"][0]["ref"]]})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "query_text", answer.text
    assert outbox_backlog(ws)[0] == 0
