"""Hypothesis strategies for feedback events (issue 15: intake that cannot poison).

``event_lines(created)`` draws raw-log lines — JSON objects with every contract field and a
correct ``event_id`` — whose values range from sound to hostile: any Unicode but surrogates
(control characters, odd spaces, combining marks), blank or empty text, empty id lists, ids that
are chunks of ``test_dataset.corpus()`` or made up, timestamps from ``created``. Intake keeps some
of them out; the stages must run on whatever it lets in (``accepted_times``), and on whatever a
raw log may hold from before intake had its rules (``any_times``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import strategies as st

from opslib.lifecycle.feedback.events import DEFAULT_LIMITS, InvalidEvent, check_event, feedback_event_id

CHUNKS = [f"p1-c{i}" for i in range(12)] + [f"p2-c{i}" for i in range(4)]
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)  # "" and controls included
# No control character (category Cc: C0, DEL, C1), not blank: what intake takes.
SOUND_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=10).filter(str.strip)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def accepted_times(now: datetime) -> st.SearchStrategy[str]:
    """``created_at`` values intake accepts at ``now`` (default limits), at any UTC offset."""
    latest = now + DEFAULT_LIMITS.max_future
    instants = st.one_of(
        st.sampled_from([DEFAULT_LIMITS.epoch, latest, now]),
        st.datetimes(
            min_value=DEFAULT_LIMITS.epoch.replace(tzinfo=None),
            max_value=latest.astimezone(UTC).replace(tzinfo=None),
            timezones=st.just(UTC),
        ),
    )
    return st.tuples(instants, OFFSETS).map(lambda pair: pair[0].astimezone(pair[1]).isoformat())


def any_times() -> st.SearchStrategy[str]:
    """Any aware ISO timestamp Python can write, year 1 to 9999 at any offset (some have no UTC instant)."""
    edges = st.sampled_from(
        ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59-14:00", "1970-01-01T00:00:00Z"]
    )
    return st.one_of(edges, st.datetimes(timezones=OFFSETS).map(datetime.isoformat))


@st.composite
def event_lines(draw: st.DrawFn, created: st.SearchStrategy[str]) -> bytes:
    # Half the events are hostile: any field may then be blank, empty or hold control characters.
    hostile = draw(st.booleans())
    text = st.one_of(SOUND_TEXT, ANY_TEXT) if hostile else SOUND_TEXT

    def _some(*usual: str) -> str:
        return draw(st.one_of(st.sampled_from(usual), text))

    user = _some("u1", "u2")
    req = _some("r1", "r2", "r3")
    rating = draw(st.sampled_from(["LIKE", "LIKE", "DISLIKE"]))
    topk = draw(st.lists(st.one_of(st.sampled_from(CHUNKS), text), min_size=0 if hostile else 1, max_size=5))
    used = draw(st.lists(st.sampled_from(topk), min_size=0 if hostile else 1, max_size=3)) if topk else []
    event = {
        "schema_version": 1,
        "event_id": feedback_event_id(user, req, rating),
        "user_id": user,
        "project_id": _some("p1", "p2"),
        "req_id": req,
        "query_text": _some("how to sort", "  How TO sort ", "비밀번호 바꾸기"),
        "rating": rating,
        "topk_ids": topk,
        "used_ids": used,
        "active_model_version": _some("m1", "m2"),
        "active_index_name": "idx-m1",
        "response_snapshot_ref": req,
        "created_at": draw(created),
        "trace_id": _some("t1"),
    }
    return orjson.dumps(event)  # raw UTF-8: U+0085 or U+2028 inside a line must not split it


def intake_accepts(line: bytes, now: datetime | None = None) -> bool:
    try:
        check_event(orjson.loads(line), now=now)
    except InvalidEvent:
        return False
    return True
