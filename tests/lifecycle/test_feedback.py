import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import feedback_event, feedback_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opslib.infra.storage import ObjectStore
from opslib.lifecycle.feedback.events import (
    ERROR_PREFIX,
    FEEDBACK_NAMESPACE,
    RAW_PREFIX,
    batch_timestamp,
    feedback_event_id,
    ingest_feedback,
    log_files,
    parse_event_line,
    read_raw_events,
)


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
