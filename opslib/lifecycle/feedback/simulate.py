"""Traffic simulator: simulated users search through the serving path and leave feedback.

Only the corpus's *traffic* queries are sent (reserved queries never are). For each request the
answer cites (``used``) the relevant chunks it was shown — up to ``MAX_USED`` — or, when it was
shown none, the top results it would have leaned on; the user LIKEs an answer that used a
relevant chunk and DISLIKEs one that did not, and flips that judgment with probability
``noise``. Deterministic for a seed (given the same index contents): the same queries, users,
answers and ratings; only the serving path's ``req_id`` (hence ``event_id``) is new per request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from tqdm.auto import tqdm

from opslib.corpus.loader import read_queries
from opslib.corpus.search import SearchHit, search
from opslib.errors import Invalid
from opslib.infra.logs import current_trace_id, get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import (
    FeedbackEvent,
    FeedbackIngestReport,
    ingest_feedback,
    make_event,
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


def choose_used(hits: list[SearchHit], expected: set[str]) -> list[str]:
    relevant = [h.ref for h in hits if h.ref in expected]
    if relevant:
        return relevant[:MAX_USED]
    return [h.ref for h in hits[:MAX_USED]]


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
) -> SimulationReport:
    """Send ``requests`` searches and ingest the resulting feedback into ``raw_logs/``.

    ``start``/``spread`` place the events' ``created_at`` evenly over a time span (default: now).
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
    events: list[FeedbackEvent] = []
    hits_with_relevant = 0
    for i in tqdm(range(requests), desc="simulate traffic", unit="req", disable=not progress):
        query = queries[rng.randrange(len(queries))]
        user = f"user-{rng.randrange(users):03d}"
        expected = set(query.expected_results)
        response = search(
            ws,
            query.query_text,
            project_id=query.project_id,
            user_id=user,
            choose_used=partial(choose_used, expected=expected),
        )
        relevant_shown = any(ref in expected for ref in response.used_ids)
        hits_with_relevant += relevant_shown
        liked = relevant_shown != (rng.random() < noise)
        rating = "LIKE" if liked else "DISLIKE"
        report.likes += liked
        report.dislikes += not liked
        events.append(
            make_event(
                user_id=user,
                project_id=query.project_id,
                req_id=response.req_id,
                query_text=query.query_text,
                rating=rating,
                topk_ids=response.refs,
                used_ids=response.used_ids,
                active_model_version=response.active_model_version,
                active_index_name=response.active_index_name,
                created_at=begin + step * i,
                trace_id=current_trace_id(),
            )
        )
    report.requests = requests
    report.hit_rate = hits_with_relevant / requests
    report.ingest = ingest_feedback(ws.objects, events, batch_size=ws.settings.feedback_batch_size)
    log.info(
        "traffic simulated", extra={"requests": requests, "likes": report.likes, "hit_rate": round(report.hit_rate, 3)}
    )
    return report


def reserved_query_ids(ws: Workspace, corpus: str) -> Sequence[str]:
    return [q.query_id for q in read_queries(ws, corpus, "reserved")]
