"""Feedback intake: checked against the stored snapshot, durable in the outbox, flushed in batches."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import corpus_ready

from opslib.corpus.search import search
from opslib.db.models import FeedbackOutbox
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import RAW_PREFIX
from opslib.lifecycle.feedback.intake import (
    FeedbackIn,
    FeedbackRejected,
    SnapshotNotFound,
    accept_feedback,
    flush_outbox,
    outbox_backlog,
)


def _served(ws: Workspace, n: int) -> list[str]:
    return [
        search(ws, f"how do I go about sorting lists {i}", project_id="mini-alpha", user_id="u").req_id
        for i in range(n)
    ]


def test_feedback_takes_model_index_and_shown_ids_from_the_snapshot(ws: Workspace) -> None:
    corpus_ready(ws)
    response = search(ws, "how do I go about sorting lists", project_id="mini-alpha", user_id="u", trace_id="t-1")
    accepted = accept_feedback(ws, FeedbackIn(response.req_id, "u", "DISLIKE", [response.refs[1]]), trace_id="t-2")
    event = accepted.event
    assert not accepted.duplicate and event.rating == "DISLIKE" and event.used_ids == (response.refs[1],)
    assert event.topk_ids == tuple(response.refs) and event.active_model_version == response.active_model_version
    assert event.response_snapshot_ref == response.req_id and event.trace_id == "t-1"  # the search's trace
    assert accept_feedback(ws, FeedbackIn(response.req_id, "u", "DISLIKE", [response.refs[1]])).duplicate
    with pytest.raises(SnapshotNotFound, match="req_id"):
        accept_feedback(ws, FeedbackIn("missing", "u", "LIKE", []))
    for bad, field in [
        (FeedbackIn(response.req_id, "", "LIKE", []), "user_id"),
        (FeedbackIn(response.req_id, "u", "LOVE", []), "rating"),
        (FeedbackIn(response.req_id, "u", "LIKE", [""]), "used_ids"),
        (FeedbackIn(response.req_id, "other", "LIKE", []), "user_id"),
    ]:
        with pytest.raises(FeedbackRejected, match=f"^{field}: "):
            accept_feedback(ws, bad)
    assert outbox_backlog(ws)[0] == 1  # refusals stored nothing


def test_the_outbox_flushes_by_count_by_age_and_when_forced(ws: Workspace) -> None:
    corpus_ready(ws)
    for req_id in _served(ws, 3):
        accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", []))
    hour = timedelta(hours=1)
    assert flush_outbox(ws, batch_events=5, max_age=hour).flushed == 0  # neither full nor old
    assert ws.objects.list(RAW_PREFIX) == []
    report = flush_outbox(ws, batch_events=3, max_age=hour)  # full
    assert report.flushed == 3 and report.pending == 0 and len(report.raw_files) == 1
    assert len(list(ws.objects.iter_lines(report.raw_files[0]))) == 3
    (req_id,) = _served(ws, 1)
    accept_feedback(ws, FeedbackIn(req_id, "u", "LIKE", []))
    assert flush_outbox(ws, batch_events=5, max_age=timedelta(0)).flushed == 1  # old enough
    accept_feedback(ws, FeedbackIn(req_id, "u", "DISLIKE", []))
    assert flush_outbox(ws, batch_events=5, max_age=hour, force=True).flushed == 1  # shutdown
    with ws.db.read() as session:
        assert session.query(FeedbackOutbox).count() == 0
    assert len(ws.objects.list(RAW_PREFIX)) == 3
