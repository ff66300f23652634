"""Traffic simulator: simulated users search through the serving path and leave feedback.

Only the corpus's *traffic* queries are sent (reserved queries never are). For each request the
answer cites (``used``) the relevant chunks it was shown — up to ``MAX_USED`` — or, when it was
shown none, the top results it would have leaned on; the user LIKEs an answer that used a
relevant chunk and DISLIKEs one that did not, and flips that judgment with probability
``noise``. Deterministic for a seed (given the same index contents): the same queries, users,
answers and ratings; only the serving path's ``req_id`` (hence ``event_id``) is new per request.
Each request is its own trace: its search, snapshot and feedback event share one ``trace_id``.

Requests go through a ``TrafficChannel``: in this process by default (``search()``; the events
ingested in batches at the end), or over HTTP to a running endpoint
(``opslib.service.client.EndpointChannel``), which checks each feedback against its stored
snapshot and writes the events itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import orjson
from tqdm.auto import tqdm

from opslib.corpus.loader import read_queries
from opslib.corpus.search import SearchHit, SearchResponse, search
from opslib.errors import Invalid
from opslib.infra.logs import get_logger, trace
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import (
    FeedbackIngestReport,
    IntakeLimits,
    ingest_feedback,
    make_event_dict,
)

log = get_logger(__name__)
MAX_USED = 2


class SimulationError(Invalid, ValueError):
    pass


@dataclass
class SimulationReport:
    requests: int = 0
    likes: int = 0
    dislikes: int = 0
    hit_rate: float = 0.0  # share of requests whose top-5 held a relevant chunk
    ingest: FeedbackIngestReport = field(default_factory=FeedbackIngestReport)


def choose_used(hits: Sequence[SearchHit] | Sequence[str], expected: set[str]) -> list[str]:
    refs = [h if isinstance(h, str) else h.ref for h in hits]
    relevant = [ref for ref in refs if ref in expected]
    if relevant:
        return relevant[:MAX_USED]
    return refs[:MAX_USED]


class Choose(Protocol):
    def __call__(self, refs: list[str]) -> list[str]: ...


class TrafficChannel(Protocol):
    """Where simulated requests go. ``search`` returns the shown refs and the ones the answer used
    (``choose`` picks them); ``feedback`` rates that response; ``close`` says what was written."""

    def search(self, query_text: str, project_id: str, user_id: str, choose: Choose) -> tuple[list[str], list[str]]: ...

    def feedback(self, query_text: str, project_id: str, user_id: str, rating: str, created_at: datetime) -> None: ...

    def close(self) -> FeedbackIngestReport: ...


class InProcessChannel:
    """The serving path in this process; the events are ingested into ``raw_logs/`` in batches."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.lines: list[bytes] = []  # checked by ingestion at close: a refused one goes to error_logs/
        self._last: SearchResponse | None = None

    def search(self, query_text: str, project_id: str, user_id: str, choose: Choose) -> tuple[list[str], list[str]]:
        self._last = search(
            self.ws,
            query_text,
            project_id=project_id,
            user_id=user_id,
            choose_used=lambda hits: choose([h.ref for h in hits]),
        )
        return self._last.refs, self._last.used_ids

    def feedback(self, query_text: str, project_id: str, user_id: str, rating: str, created_at: datetime) -> None:
        response = self._last
        assert response is not None, "feedback before a search"
        self.lines.append(
            orjson.dumps(
                make_event_dict(
                    user_id=user_id,
                    project_id=project_id,
                    req_id=response.req_id,
                    query_text=query_text,
                    rating=rating,
                    topk_ids=response.refs,
                    used_ids=response.used_ids,
                    active_model_version=response.active_model_version,
                    active_index_name=response.active_index_name,
                    created_at=created_at,
                    trace_id=response.trace_id or "",
                ),
                option=orjson.OPT_SORT_KEYS,
            )
        )

    def close(self) -> FeedbackIngestReport:
        return ingest_feedback(
            self.ws.objects,
            self.lines,
            batch_size=self.ws.settings.feedback_batch_size,
            limits=IntakeLimits.from_settings(self.ws.settings),
        )


def simulate_traffic(
    ws: Workspace,
    corpus: str,
    *,
    requests: int,
    seed: int = 0,
    noise: float = 0.1,
    users: int = 25,
    start: datetime | None = None,
    spread: timedelta = timedelta(0),
    progress: bool = False,
    channel: TrafficChannel | None = None,
) -> SimulationReport:
    """Send ``requests`` searches and their feedback (``channel``: in this process by default).

    ``start``/``spread`` place the events' ``created_at`` evenly over a time span (default: now;
    over HTTP the endpoint stamps the time it received the feedback).
    """
    if requests < 1:
        raise SimulationError(f"requests {requests}: must be >= 1")
    if not 0.0 <= noise <= 1.0:
        raise SimulationError(f"noise {noise}: must be in [0, 1]")
    if users < 1:
        raise SimulationError(f"users {users}: must be >= 1")
    queries = list(read_queries(ws, corpus, "traffic"))
    if not queries:
        raise SimulationError(f"corpus {corpus!r}: has no traffic queries")
    rng = random.Random(seed)
    begin = start or datetime.now(UTC)
    step = spread / max(requests - 1, 1)
    report = SimulationReport()
    channel = channel or InProcessChannel(ws)
    hits_with_relevant = 0
    for i in tqdm(range(requests), desc="simulate traffic", unit="req", disable=not progress):
        query = queries[rng.randrange(len(queries))]
        user = f"user-{rng.randrange(users):03d}"
        expected = set(query.expected_results)
        with trace():  # one trace per request: its search, snapshot and feedback event
            _shown, used = channel.search(
                query.query_text, query.project_id, user, lambda refs, expected=expected: choose_used(refs, expected)
            )
            relevant_shown = any(ref in expected for ref in used)
            hits_with_relevant += relevant_shown
            liked = relevant_shown != (rng.random() < noise)
            report.likes += liked
            report.dislikes += not liked
            channel.feedback(query.query_text, query.project_id, user, "LIKE" if liked else "DISLIKE", begin + step * i)
    report.requests = requests
    report.hit_rate = hits_with_relevant / requests
    report.ingest = channel.close()
    log.info(
        "traffic simulated", extra={"requests": requests, "likes": report.likes, "hit_rate": round(report.hit_rate, 3)}
    )
    return report


def reserved_query_ids(ws: Workspace, corpus: str) -> Sequence[str]:
    return [q.query_id for q in read_queries(ws, corpus, "reserved")]
