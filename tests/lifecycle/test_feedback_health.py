import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from event_strategies import accepted_times, any_times, event_lines, intake_accepts
from helpers import feedback_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opslib.infra.storage import ObjectStore
from opslib.lifecycle.feedback.events import (
    ERROR_PREFIX,
    RAW_PREFIX,
    check_stored_event,
    event_line,
    feedback_event_id,
    ingest_feedback,
    log_key,
    make_event,
)
from opslib.lifecycle.feedback.health import FeedbackHealth, HealthThresholds, feedback_health, health_verdict

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


def _every_figure(health: FeedbackHealth) -> None:
    """What ``10_feedback_health`` shows, computed."""
    health.duplicate_rate, health.volume_by_day(), health.rating_mix_by_model()
    health.like_rate_by_day(), health.rejects_by_reason()


def test_an_event_from_year_one_in_the_raw_logs_does_not_stop_feedback_health(tmp_path: Path) -> None:
    """Issue 15: ``created_at`` 0001-01-01T00:00:00+14:00 was accepted, and then
    ``10_feedback_health`` failed with OverflowError for as long as its file was in the window
    (raw logs are immutable). Such a line is skipped and counted; odd but readable ones are shown."""
    store = ObjectStore(str(tmp_path))
    lines = [
        feedback_event(created_at="0001-01-01T00:00:00+14:00"),  # no UTC instant
        feedback_event(req_id="r2", created_at="0001-01-01T00:00:00-14:00", query_text="  "),
        feedback_event(req_id="r3", query_text="a\u0000b", topk_ids=[], used_ids=[]),
        feedback_event(req_id="r4"),
    ]
    for data in lines:
        data["event_id"] = feedback_event_id(data["user_id"], data["req_id"], data["rating"])
    store.put_bytes(
        log_key(RAW_PREFIX, NOW - timedelta(hours=2)), b"".join(json.dumps(e).encode() + b"\n" for e in lines)
    )
    health = feedback_health(store, window_days=7, now=NOW)
    assert health.total == 3 and health.unreadable_lines == 1
    assert "0001-01-01" in health.volume_by_day().index
    _every_figure(health)


PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@PROPERTY
@given(st.lists(event_lines(accepted_times(datetime.now(UTC))), max_size=8))
def test_feedback_health_runs_on_whatever_ingestion_accepts(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    store = ObjectStore(str(tmp_path_factory.mktemp("fh")))
    report = ingest_feedback(store, lines)
    assert report.accepted == sum(intake_accepts(line) for line in lines)
    health = feedback_health(store, window_days=1, now=datetime.now(UTC) + timedelta(seconds=1))
    assert (health.total, health.unreadable_lines, len(health.rejects)) == (report.accepted, 0, report.rejected)
    _every_figure(health)


def _readable(line: bytes) -> bool:
    try:
        check_stored_event(json.loads(line))
    except ValueError:
        return False
    return True


@PROPERTY
@given(st.lists(event_lines(any_times()), max_size=8))
def test_feedback_health_runs_on_anything_an_older_raw_log_may_hold(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    """Lines written straight to raw_logs/ (as intake wrote them before its rules): any timestamp,
    any text, empty id lists."""
    store = ObjectStore(str(tmp_path_factory.mktemp("fh")))
    store.put_bytes(log_key(RAW_PREFIX, NOW - timedelta(hours=1)), b"".join(line + b"\n" for line in lines))
    health = feedback_health(store, window_days=1, now=NOW)
    readable = sum(_readable(line) for line in lines)
    assert (health.total, health.unreadable_lines) == (readable, len(lines) - readable)
    _every_figure(health)


def _health(events: int, *, duplicates: int = 0, rejects: int = 0, unreadable: int = 0) -> FeedbackHealth:
    ids = [f"e{i}" for i in range(events - duplicates)] + ["e0"] * duplicates
    return FeedbackHealth(
        window_start=NOW - timedelta(days=7),
        window_end=NOW,
        events=pd.DataFrame({"event_id": ids}),
        rejects=pd.DataFrame({"reason": ["not JSON"] * rejects}),
        raw_files=1,
        error_files=1 if rejects else 0,
        unreadable_lines=unreadable,
    )


@pytest.mark.parametrize(
    ("health", "verdict", "reasons"),
    [
        (_health(100), "OK", []),
        # At the thresholds, not above them: still OK (5 rejects of 100 lines, 5 repeats of 100 events).
        (_health(95, rejects=5), "OK", []),
        (_health(100, duplicates=5), "OK", []),
        (_health(0), "WARN", ["0 events in the window (fewer than 1)"]),
        (_health(94, rejects=6), "WARN", ["rejected share 6.0% above 5.0% (see rejected lines by reason)"]),
        (_health(100, unreadable=1), "WARN", ["1 unreadable raw-log lines (more than 0)"]),
        (_health(100, duplicates=6), "WARN", ["duplicate rate 6.0% above 5.0%"]),
        (
            _health(0, rejects=3),
            "WARN",
            [
                "0 events in the window (fewer than 1)",
                "rejected share 100.0% above 5.0% (see rejected lines by reason)",
            ],
        ),
    ],
)
def test_the_health_verdict_warns_past_each_threshold(health: FeedbackHealth, verdict: str, reasons: list[str]) -> None:
    result = health_verdict(health)
    assert (result.verdict, result.reasons) == (verdict, reasons)
    outputs = result.outputs()
    assert outputs["health_verdict"] == verdict and outputs["health_reasons"] == reasons
    assert outputs["events"] == health.total and outputs["rejected_lines"] == len(health.rejects)
    json.dumps(outputs, allow_nan=False)  # recordable on the execution
    assert result.sentence.endswith("within every threshold") if verdict == "OK" else reasons[-1] in result.sentence


def test_health_thresholds_are_configurable_and_checked() -> None:
    strict = HealthThresholds(min_events=200, max_duplicate_rate=0.0)
    assert health_verdict(_health(100, duplicates=1), strict).reasons == [
        "100 events in the window (fewer than 200)",
        "duplicate rate 1.0% above 0.0%",
    ]
    with pytest.raises(ValueError, match=r"max_rejected_share 1\.5: must be a share between 0 and 1"):
        HealthThresholds(max_rejected_share=1.5)
    with pytest.raises(ValueError, match="min_events -1: must be >= 0"):
        HealthThresholds(min_events=-1)


def test_the_warn_rule_reads_as_one_line_from_the_thresholds() -> None:
    from opslib.lifecycle.corpus_fit import FitThresholds
    from opslib.lifecycle.feedback.health import HealthThresholds

    line = HealthThresholds(min_events=3, max_rejected_share=0.1, fit=FitThresholds(max_unk_rate=0.02)).summary()
    assert line.startswith("events < 3, rejected share > 10%, unreadable lines > 0, duplicate rate > 5%")
    assert line.endswith("truncated chunks > 10%, [UNK] rate > 2%")
