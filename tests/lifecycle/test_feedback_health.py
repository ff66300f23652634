from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opslib.infra.storage import ObjectStore
from opslib.lifecycle.feedback.events import (
    ERROR_PREFIX,
    RAW_PREFIX,
    event_line,
    feedback_event_id,
    ingest_feedback,
    log_key,
    make_event,
)
from opslib.lifecycle.feedback.health import feedback_health

NOW = datetime.now(UTC) + timedelta(hours=1)  # ingestion below writes files at the real now


def _event(req: str, rating: str, model: str, day: int):  # type: ignore[no-untyped-def]
    return make_event(
        user_id="u",
        project_id="p",
        req_id=req,
        query_text="q",
        rating=rating,
        topk_ids=["c1", "c2"],
        used_ids=["c1"],
        active_model_version=model,
        active_index_name=f"idx-{model}",
        created_at=NOW - timedelta(days=day),
        trace_id="t",
    )


def test_volume_mix_duplicates_and_rejects(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    events = [
        _event("a", "LIKE", "m1", 2),
        _event("b", "DISLIKE", "m1", 2),
        _event("c", "LIKE", "m2", 1),
        _event("d", "LIKE", "m2", 1),
        _event("d", "LIKE", "m2", 1),
    ]  # one duplicate
    store.put_bytes(log_key(RAW_PREFIX, NOW - timedelta(days=1)), b"".join(event_line(e) for e in events))
    store.put_bytes(log_key(RAW_PREFIX, NOW - timedelta(days=30)), event_line(_event("old", "LIKE", "m0", 30)))
    ingest_feedback(store, [b"not json", b'{"schema_version": 2}'])  # two rejects, through ingestion
    error_key = log_key(ERROR_PREFIX, NOW - timedelta(hours=1))
    store.put_bytes(
        error_key.removesuffix(".jsonl") + ".reasons.jsonl",
        b'{"line": 1, "reason": "user_id: missing field"}\n{"line": 2, "reason": "not JSON: x"}\n',
    )
    store.put_bytes(error_key, b"a\nb\n")

    health = feedback_health(store, window_days=7, now=NOW)
    assert health.total == 5 and health.raw_files == 1
    assert health.duplicate_rate == pytest.approx(1 / 5)
    mix = health.rating_mix_by_model()
    assert mix.loc["m1"].tolist() == [2, 1, 1, 0.5] and mix.loc["m2"].tolist() == [3, 3, 0, 1.0]
    assert "m0" not in mix.index  # its file is outside the window
    by_day = health.like_rate_by_day()
    day1, day2 = (NOW - timedelta(days=1)).date().isoformat(), (NOW - timedelta(days=2)).date().isoformat()
    assert by_day.loc[day2, "m1"] == 0.5 and by_day.loc[day1, "m2"] == 1.0
    assert health.volume_by_day().loc[day2].tolist() == [1, 1]
    assert health.rejects_by_reason()["lines"].to_dict() == {
        "not JSON": 2,
        "user_id": 1,
        "unsupported schema_version 2 (only 1)": 1,
    }


def test_empty_window(tmp_path: Path) -> None:
    health = feedback_health(ObjectStore(str(tmp_path)), window_days=3, now=NOW)
    assert health.total == 0 and health.duplicate_rate == 0.0
    assert health.rating_mix_by_model().empty and health.like_rate_by_day().empty
    with pytest.raises(ValueError, match="window_days"):
        feedback_health(ObjectStore(str(tmp_path)), window_days=0)


def test_event_ids_in_the_fixture_are_real() -> None:
    assert _event("a", "LIKE", "m1", 1).event_id == feedback_event_id("u", "a", "LIKE")
