import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import feedback_event, feedback_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opslib.infra.storage import ObjectStore
from opslib.lifecycle.feedback.events import (
    DEFAULT_LIMITS,
    ERROR_PREFIX,
    FEEDBACK_NAMESPACE,
    RAW_PREFIX,
    IntakeLimits,
    InvalidEvent,
    batch_timestamp,
    check_event,
    check_stored_event,
    feedback_event_id,
    ingest_feedback,
    log_files,
    log_key,
    parse_event_line,
    read_raw_events,
)
from opslib.settings import Settings


def test_event_id_is_uuid5_of_the_contract_string() -> None:
    expected = uuid.uuid5(FEEDBACK_NAMESPACE, "feedback:u1:r1:LIKE")
    assert feedback_event_id("u1", "r1", "LIKE") == str(expected) == feedback_event()["event_id"]
    assert feedback_event_id("u1", "r1", "DISLIKE") != feedback_event_id("u1", "r1", "LIKE")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema_version": 2}, "unsupported schema_version 2"),
        ({"rating": "MEH"}, "rating"),
        ({"event_id": str(uuid.uuid4())}, "event_id: must be the UUIDv5"),
        ({"used_ids": ["c9"]}, "not in topk_ids"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2026-11-30T00:00:00"}, "UTC offset"),
        ({"topk_ids": "c1"}, "topk_ids"),
        ({"extra": 1}, "extra"),
    ],
)
def test_invalid_events_name_their_reason(change: dict, reason: str) -> None:
    event, why = parse_event_line(feedback_line(feedback_event(**change)))
    assert event is None and reason in (why or "")


@pytest.mark.parametrize(
    "field", ["user_id", "req_id", "query_text", "trace_id", "active_index_name", "response_snapshot_ref", "topk_ids"]
)
def test_missing_fields_are_rejected(field: str) -> None:
    data = feedback_event()
    del data[field]
    event, why = parse_event_line(feedback_line(data))
    assert event is None and why == f"{field}: missing field"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"   ", "empty line"),
        (b"x" * (1 << 20 + 1), "line too long"),
    ],
)
def test_malformed_lines(line: bytes, reason: str) -> None:
    assert parse_event_line(line) == (None, parse_event_line(line)[1]) and reason in parse_event_line(line)[1]


def test_ingest_splits_valid_and_invalid_and_keeps_invalid_unchanged(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    bad = b'{"schema_version": 1, "nonsense": \xff}'
    lines = [
        feedback_line(feedback_event()),
        bad,
        feedback_line(feedback_event(req_id="r2", event_id=feedback_event_id("u1", "r2", "LIKE"))),
    ]
    report = ingest_feedback(store, [b"\n".join(lines) + b"\n"], batch_size=10)
    assert (report.lines, report.accepted, report.rejected) == (3, 2, 1)
    raw = log_files(store, RAW_PREFIX)
    errors = log_files(store, ERROR_PREFIX)
    assert len(raw) == 1 and len(errors) == 1
    assert store.get_bytes(errors[0]) == bad + b"\n"
    reasons = [json.loads(x) for x in store.get_text(errors[0].removesuffix(".jsonl") + ".reasons.jsonl").splitlines()]
    assert reasons == [{"line": 1, "reason": "not UTF-8: invalid start byte at byte 34"}]
    assert [e.req_id for _, e in read_raw_events(store)] == ["r1", "r2"]


def test_batches_become_separate_files_named_by_utc_timestamp(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    events = [
        feedback_line(feedback_event(req_id=f"r{i}", event_id=feedback_event_id("u1", f"r{i}", "LIKE")))
        for i in range(7)
    ]
    before = datetime.now(UTC)
    report = ingest_feedback(store, events, batch_size=3)
    assert len(report.raw_files) == 3
    for key in report.raw_files:
        assert key.startswith("raw_logs/") and key.endswith(".jsonl")
        assert before <= batch_timestamp(key) <= datetime.now(UTC)
    assert sum(len(store.get_bytes(k).splitlines()) for k in report.raw_files) == 7
    with pytest.raises(ValueError, match="batch_size"):
        ingest_feedback(store, events, batch_size=0)


def test_duplicates_are_stored(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    line = feedback_line(feedback_event())
    assert ingest_feedback(store, [line, line]).accepted == 2


def test_crash_mid_batch_loses_nothing_already_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObjectStore(str(tmp_path))
    lines = [
        feedback_line(feedback_event(req_id=f"r{i}", event_id=feedback_event_id("u1", f"r{i}", "LIKE")))
        for i in range(10)
    ]

    def stream():  # type: ignore[no-untyped-def]
        for i, line in enumerate(lines):
            if i == 7:
                raise KeyboardInterrupt("killed")
            yield line

    with pytest.raises(KeyboardInterrupt):
        ingest_feedback(store, stream(), batch_size=3)
    published = sum(len(store.get_bytes(k).splitlines()) for k in log_files(store, RAW_PREFIX))
    assert published == 6  # two whole batches; the third never appeared half-written
    ingest_feedback(store, lines, batch_size=3)  # the re-run duplicates, never loses
    ids = [e.req_id for _, e in read_raw_events(store)]
    assert set(ids) == {f"r{i}" for i in range(10)} and len(ids) == 16


VALID = json.dumps(feedback_event()).encode()
LINES = st.one_of(
    st.binary(max_size=200),  # arbitrary bytes, mostly not UTF-8
    st.sampled_from([b"{}", b'{"schema_version": 1}', b"[]", b"null", b"   ", b"\xff\xfe\x00"]),
    st.just(VALID),  # a valid event (duplicates when drawn twice)
    st.integers(min_value=0, max_value=len(VALID) - 1).map(lambda n: VALID[:n]),  # truncated
    st.just(b'{"pad": "' + b"x" * (1 << 20) + b'"}'),  # oversized
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(st.lists(LINES, max_size=30), st.integers(min_value=1, max_value=7))
def test_lines_in_equal_lines_out(tmp_path_factory: pytest.TempPathFactory, raw_lines: list[bytes], batch: int) -> None:
    store = ObjectStore(str(tmp_path_factory.mktemp("fb")))
    lines = [line.replace(b"\n", b" ") for line in raw_lines]
    report = ingest_feedback(store, [b"".join(line + b"\n" for line in lines)], batch_size=batch)
    raw = [line for k in log_files(store, RAW_PREFIX) for line in store.get_bytes(k).split(b"\n")[:-1]]
    errors = [line for k in log_files(store, ERROR_PREFIX) for line in store.get_bytes(k).split(b"\n")[:-1]]
    assert report.lines == len(lines) == len(raw) + len(errors)
    assert report.accepted == len(raw) == lines.count(VALID)  # every valid copy kept, duplicates too
    assert sorted(raw + errors) == sorted(lines)  # nothing lost, nothing changed
    reasons = sum(
        len(store.get_text(k.removesuffix(".jsonl") + ".reasons.jsonl").splitlines())
        for k in log_files(store, ERROR_PREFIX)
    )
    assert reasons == len(errors)  # every rejected line has its reason beside it


def test_cli_reads_standard_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    from opslib.ops.cli import main

    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPS_LOG_LEVEL", "WARNING")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(VALID + b"\n" + VALID + b"\n{oops\n")))
    assert main(["ingest-feedback", "-", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 lines: 2 accepted into 1 raw log file(s), 1 rejected into 1 error log file(s)" in out
    assert main(["ingest-feedback", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


# Intake that cannot poison (issue 15) ------------------------------------------------------
def poison(**overrides: object) -> dict:  # type: ignore[type-arg]
    """The fixture event with ``overrides`` and its ``event_id`` made right again: only the
    overridden field is wrong."""
    data = feedback_event(**overrides)
    data["event_id"] = feedback_event_id(data["user_id"], data["req_id"], data["rating"])
    return data


def _reasons(store: ObjectStore) -> list[str]:
    return [
        json.loads(line)["reason"]
        for key in log_files(store, ERROR_PREFIX)
        for line in store.get_text(key.removesuffix(".jsonl") + ".reasons.jsonl").splitlines()
    ]


SOON = datetime.now(UTC) + timedelta(hours=23)
LATE = datetime.now(UTC) + timedelta(days=2)
POISON = [
    # timestamps outside the sane range; the first one blocked health and datasets for 30 days
    ({"created_at": "0001-01-01T00:00:00+14:00"}, "created_at", "no UTC instant"),
    ({"created_at": "9999-12-31T23:59:59-14:00"}, "created_at", "no UTC instant"),
    ({"created_at": "0001-01-01T00:00:00+00:00"}, "created_at", "before the system epoch"),
    ({"created_at": "2019-12-31T23:59:59.999999+00:00"}, "created_at", "before the system epoch"),
    ({"created_at": LATE.isoformat()}, "created_at", "in the future"),
    # blank after trimming
    ({"query_text": "   "}, "query_text", "empty after trimming"),
    ({"query_text": "\u3000"}, "query_text", "empty after trimming"),  # ideographic space
    ({"project_id": " "}, "project_id", "empty after trimming"),
    # control characters: C0 (NUL, ESC; tab and newline outside a query), DEL, C1 — escaped in the JSON line
    ({"query_text": "how to\u0000sort"}, "query_text", "U+0000"),
    ({"query_text": "how to\u001bsort"}, "query_text", "U+001B"),
    ({"user_id": "u\t1"}, "user_id", "U+0009"),
    ({"req_id": "r\n"}, "req_id", "U+000A"),
    ({"user_id": "u\u001b[31m"}, "user_id", "U+001B"),
    ({"req_id": "r\u007f"}, "req_id", "U+007F"),
    ({"trace_id": "t\u0085"}, "trace_id", "U+0085"),
    ({"active_model_version": "m\u009f"}, "active_model_version", "U+009F"),
    # id lists: empty, or holding a blank or control-character id
    ({"topk_ids": [], "used_ids": []}, "topk_ids", "at least one id"),
    ({"used_ids": []}, "used_ids", "at least one id"),
    ({"topk_ids": ["c1", " "]}, "topk_ids", "id 1 empty after trimming"),
    ({"topk_ids": ["c1", "c2\u0000"], "used_ids": ["c2\u0000"]}, "topk_ids", "id 1 holds control character U+0000"),
]


@pytest.mark.parametrize(("overrides", "field", "words"), POISON)
def test_ingestion_refuses_events_that_would_poison_later_stages(
    tmp_path: Path, overrides: dict, field: str, words: str
) -> None:
    """Each was accepted before (issue 15): now refused to error_logs/, unchanged, with its reason."""
    store = ObjectStore(str(tmp_path))
    line = feedback_line(poison(**overrides))  # json.dumps: a NUL travels as the escape \u0000
    assert b"\x00" not in line
    report = ingest_feedback(store, [line, feedback_line(feedback_event())])
    assert (report.accepted, report.rejected) == (1, 1)
    (error_key,) = log_files(store, ERROR_PREFIX)
    assert store.get_bytes(error_key) == line + b"\n"
    (reason,) = _reasons(store)
    assert reason.startswith(f"{field}: ") and words in reason, reason
    assert report.reasons == {field: 1}
    with pytest.raises(InvalidEvent, match=f"^{field}: "):
        check_event(poison(**overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"created_at": SOON.isoformat()},  # within the day of clock skew allowed
        {"created_at": "2020-01-01T00:00:00+00:00"},  # the epoch itself
        {"created_at": "2020-01-01T09:00:00+09:00"},  # the same instant, another offset
        {"query_text": "  padded, but words  "},
        {"query_text": "비밀번호를 어떻게 바꾸나요? ✓ — ok"},
        {"topk_ids": ["c1", "c1"], "used_ids": ["c1", "c1"]},  # repeats are the builder's to fold
    ],
)
def test_ingestion_still_accepts_sound_events_near_the_limits(tmp_path: Path, overrides: dict) -> None:
    store = ObjectStore(str(tmp_path))
    assert ingest_feedback(store, [feedback_line(poison(**overrides))]).accepted == 1


def test_the_limits_are_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_FEEDBACK_EPOCH", "2010-01-01T00:00:00Z")
    monkeypatch.setenv("OPS_FEEDBACK_MAX_FUTURE_S", str(3 * 86400))
    settings = Settings(workspace=tmp_path / "ws")
    limits = IntakeLimits.from_settings(settings)
    assert limits == IntakeLimits(datetime(2010, 1, 1, tzinfo=UTC), timedelta(days=3))
    assert Settings(workspace=tmp_path / "ws").as_env()["OPS_FEEDBACK_EPOCH"].startswith("2010-01-01")
    monkeypatch.delenv("OPS_FEEDBACK_EPOCH")
    monkeypatch.delenv("OPS_FEEDBACK_MAX_FUTURE_S")
    assert IntakeLimits.from_settings(Settings(workspace=tmp_path / "ws")) == DEFAULT_LIMITS
    assert IntakeLimits(datetime(2020, 1, 1, tzinfo=UTC), timedelta(days=1)) == DEFAULT_LIMITS
    lines = [
        feedback_line(poison(created_at="2015-06-01T00:00:00+00:00")),
        feedback_line(poison(req_id="r2", created_at=LATE.isoformat())),
    ]
    store = ObjectStore(str(tmp_path / "objects"))
    assert ingest_feedback(store, lines).accepted == 0  # by default: before the epoch, too far ahead
    assert ingest_feedback(store, lines, limits=limits).accepted == 2
    with pytest.raises(ValueError, match="UTC offset"):
        Settings(workspace=tmp_path / "ws", feedback_epoch="2020-01-01T00:00:00")
    with pytest.raises(ValueError, match="feedback_max_future_s"):
        Settings(workspace=tmp_path / "ws", feedback_max_future_s=-1)


def test_the_future_is_measured_from_arrival(tmp_path: Path) -> None:
    arrival = datetime(2026, 6, 1, tzinfo=UTC)
    ahead = poison(created_at=(arrival + timedelta(hours=23)).isoformat())
    check_event(ahead, now=arrival)
    with pytest.raises(InvalidEvent, match=r"created_at: .* more than 1 day, 0:00:00 in the future"):
        check_event(ahead, now=arrival - timedelta(hours=2))


def test_readers_skip_unreadable_lines_and_tolerate_everything_else(tmp_path: Path) -> None:
    """Raw logs are immutable: lines intake accepted before its rules existed stay. A reader skips
    a line it cannot read (a created_at with no UTC instant) and takes the rest as they are."""
    store = ObjectStore(str(tmp_path))
    lines = [
        poison(req_id="year-0", created_at="0001-01-01T00:00:00+14:00"),  # no UTC instant: skipped
        poison(req_id="year-1", created_at="0001-01-01T00:00:00-14:00"),  # odd, but readable
        poison(req_id="blank", query_text=" \t "),
        poison(req_id="nul", query_text="a\u0000b"),
        poison(req_id="no-ids", topk_ids=[], used_ids=[]),
    ]
    store.put_bytes(log_key(RAW_PREFIX), b"".join(feedback_line(e) + b"\n" for e in lines))
    events = [e for _, e in read_raw_events(store)]
    assert [e.req_id for e in events] == ["year-1", "blank", "nul", "no-ids"]
    assert events[0].created == datetime(1, 1, 1, 14, tzinfo=UTC)
    for data in lines[1:]:
        check_stored_event(data)  # a reader's check …
        with pytest.raises(InvalidEvent):
            check_event(data)  # … is wider than intake's
