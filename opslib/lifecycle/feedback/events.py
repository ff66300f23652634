"""Feedback events and their ingestion into the append-only raw log.

Valid events go to ``raw_logs/<UTC timestamp>-<uuid>.jsonl`` (one new file per batch), invalid
lines go unchanged to ``error_logs/<UTC timestamp>-<uuid>.jsonl`` with their reasons beside them
in ``…reasons.jsonl``. Each batch file is published atomically, so for any input
lines in = lines in raw_logs + lines in error_logs; a re-run after a crash may duplicate, never lose.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.storage import ObjectStore

log = get_logger(__name__)

# One fixed namespace for every event id (the feedback-event contract).
FEEDBACK_NAMESPACE = uuid.UUID("0c6b3c57-5e0f-4d55-9a1e-6b1f6f0e2a11")
RAW_PREFIX = "raw_logs"
ERROR_PREFIX = "error_logs"
MAX_LINE_BYTES = 1 << 20


_NAMESPACE_BYTES = FEEDBACK_NAMESPACE.bytes
_VERSION_MASK = ~(0xF000 << 64) & ~(0xC000 << 48) & ((1 << 128) - 1)
_VERSION_BITS = (0x5000 << 64) | (0x8000 << 48)


_EVENT_ID_BASE = hashlib.sha1(_NAMESPACE_BYTES + b"feedback:")


def _event_id_int(user_id: str, req_id: str, rating: str) -> int:
    digest = _EVENT_ID_BASE.copy()
    digest.update(f"{user_id}:{req_id}:{rating}".encode())
    return (int.from_bytes(digest.digest()[:16], "big") & _VERSION_MASK) | _VERSION_BITS


def feedback_event_id(user_id: str, req_id: str, rating: str) -> str:
    """UUIDv5 of ``feedback:{user_id}:{req_id}:{rating}`` (RFC 4122 §4.3), equal to
    ``uuid.uuid5`` but computed directly: dataset builds check millions of these."""
    h = f"{_event_id_int(user_id, req_id, rating):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _is_event_id(event_id: str, user_id: str, req_id: str, rating: str) -> bool:
    # Compare as integers (no formatting on the hot path), then insist on the canonical form.
    try:
        value = int(event_id.replace("-", ""), 16)
    except ValueError:
        return False
    return (
        value == _event_id_int(user_id, req_id, rating)
        and len(event_id) == 36
        and event_id == event_id.lower()
        and event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-"
    )


_TEXT_FIELDS = (
    "event_id",
    "user_id",
    "project_id",
    "req_id",
    "query_text",
    "active_model_version",
    "active_index_name",
    "response_snapshot_ref",
    "created_at",
    "trace_id",
)
_LIST_FIELDS = ("topk_ids", "used_ids")
FIELDS = ("schema_version", *_TEXT_FIELDS[:5], "rating", *_LIST_FIELDS, *_TEXT_FIELDS[5:])
_FIELD_SET = frozenset(FIELDS)


RATINGS = ("LIKE", "DISLIKE")


class InvalidEvent(Invalid, ValueError):
    pass


def check_event(data: dict[str, Any]) -> None:
    """Raise ``InvalidEvent`` naming the first field of ``data`` that breaks the feedback-event contract."""
    if data.get("schema_version") != 1 or type(data.get("schema_version")) is not int:
        raise InvalidEvent(f"unsupported schema_version {data.get('schema_version')!r} (only 1)")
    if data.keys() != _FIELD_SET:
        missing = [f for f in FIELDS if f not in data]
        if missing:
            raise InvalidEvent(f"{missing[0]}: missing field")
        raise InvalidEvent(f"{sorted(set(data) - _FIELD_SET)[0]}: unknown field")
    for name in _TEXT_FIELDS:
        value = data[name]
        if type(value) is not str or not value:
            raise InvalidEvent(f"{name}: must be a non-empty string")
    if data["rating"] not in RATINGS:
        raise InvalidEvent(f"rating: must be LIKE or DISLIKE, got {data['rating']!r}")
    for name in _LIST_FIELDS:
        value = data[name]
        if type(value) is not list or not all(type(v) is str and v for v in value):
            raise InvalidEvent(f"{name}: must be a list of non-empty strings")
    try:
        created = datetime.fromisoformat(data["created_at"])
    except ValueError:
        raise InvalidEvent("created_at: must be an ISO-8601 timestamp") from None
    if created.tzinfo is None:
        raise InvalidEvent("created_at: must carry a UTC offset")
    if not _is_event_id(data["event_id"], data["user_id"], data["req_id"], data["rating"]):
        expected = feedback_event_id(data["user_id"], data["req_id"], data["rating"])
        raise InvalidEvent(f"event_id: must be the UUIDv5 of feedback:{{user_id}}:{{req_id}}:{{rating}} ({expected})")
    stray = [u for u in data["used_ids"] if u not in data["topk_ids"]]
    if stray:
        raise InvalidEvent(f"used_ids: {stray} are not in topk_ids")


@dataclass(slots=True)  # not frozen: frozen construction costs more than the checks
class FeedbackEvent:
    """One feedback event, exactly the fields of the feedback-event contract (validated on construction)."""

    schema_version: int
    event_id: str
    user_id: str
    project_id: str
    req_id: str
    query_text: str
    rating: str
    topk_ids: tuple[str, ...]
    used_ids: tuple[str, ...]
    active_model_version: str
    active_index_name: str
    response_snapshot_ref: str
    created_at: str
    trace_id: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedbackEvent:
        """The event, or ``InvalidEvent`` naming the first bad field and why."""
        check_event(data)
        return cls(**{**data, "topk_ids": tuple(data["topk_ids"]), "used_ids": tuple(data["used_ids"])})

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in FIELDS}
        data["topk_ids"], data["used_ids"] = list(self.topk_ids), list(self.used_ids)
        return data

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at).astimezone(UTC)


def parse_event_dict(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(validated event as a dict, None) or (None, reason). Never raises."""
    if not line.strip():
        return None, "empty line"
    if len(line) > MAX_LINE_BYTES:
        return None, f"line too long: {len(line)} bytes > {MAX_LINE_BYTES}"
    try:
        data = orjson.loads(line)  # also refuses invalid UTF-8
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return None, f"not UTF-8: {bad.reason} at byte {bad.start}"
        return None, f"not JSON: {exc.msg}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    try:
        check_event(data)
    except InvalidEvent as exc:
        return None, str(exc)
    return data, None


def parse_event_line(line: bytes) -> tuple[FeedbackEvent | None, str | None]:
    """(event, None) for a valid line, (None, reason) otherwise. Never raises."""
    data, reason = parse_event_dict(line)
    if data is None:
        return None, reason
    return FeedbackEvent(**{**data, "topk_ids": tuple(data["topk_ids"]), "used_ids": tuple(data["used_ids"])}), None


def make_event(
    *,
    user_id: str,
    project_id: str,
    req_id: str,
    query_text: str,
    rating: str,
    topk_ids: list[str],
    used_ids: list[str],
    active_model_version: str,
    active_index_name: str,
    created_at: datetime,
    trace_id: str,
) -> FeedbackEvent:
    return FeedbackEvent.from_dict(
        {
            "schema_version": 1,
            "event_id": feedback_event_id(user_id, req_id, rating),
            "user_id": user_id,
            "project_id": project_id,
            "req_id": req_id,
            "query_text": query_text,
            "rating": rating,
            "topk_ids": list(topk_ids),
            "used_ids": list(used_ids),
            "active_model_version": active_model_version,
            "active_index_name": active_index_name,
            "response_snapshot_ref": req_id,
            "created_at": created_at.astimezone(UTC).isoformat(),
            "trace_id": trace_id,
        }
    )


def event_line(event: FeedbackEvent) -> bytes:
    return orjson.dumps(event.to_dict(), option=orjson.OPT_SORT_KEYS) + b"\n"


@dataclass
class FeedbackIngestReport:
    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    raw_files: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)


_STAMP = "%Y%m%dT%H%M%S%fZ"


def log_key(prefix: str, at: datetime | None = None) -> str:
    """``<prefix>/<UTC timestamp>-<uuid>.jsonl`` for a new log file written at ``at`` (now)."""
    stamp = (at or datetime.now(UTC)).astimezone(UTC).strftime(_STAMP)
    return f"{prefix}/{stamp}-{uuid.uuid4().hex}.jsonl"


def batch_timestamp(key: str) -> datetime:
    """The UTC timestamp a raw/error log file is named by (``<prefix>/<stamp>-<uuid>.jsonl``)."""
    name = key.rsplit("/", 1)[-1]
    try:
        return datetime.strptime(name.split("-", 1)[0], _STAMP).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"key {key!r}: not named <UTC timestamp>-<uuid>.jsonl") from None


def log_files(
    store: ObjectStore, prefix: str, since: datetime | None = None, until: datetime | None = None
) -> list[str]:
    """Log files under ``prefix`` whose file timestamp is in [since, until), oldest first."""
    keys = [k for k in store.list(prefix) if k.endswith(".jsonl") and not k.endswith(".reasons.jsonl")]
    return [
        k
        for k in keys
        if (since is None or batch_timestamp(k) >= since) and (until is None or batch_timestamp(k) < until)
    ]


def _split_lines(item: bytes | str) -> Iterator[bytes]:
    """The lines of one input item, without their ``\n``; a whitespace-only line is still a line."""
    data = item.encode("utf-8") if isinstance(item, str) else item
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    yield from parts


def ingest_feedback(
    store: ObjectStore, source: Iterable[bytes | str | FeedbackEvent], *, batch_size: int = 500
) -> FeedbackIngestReport:
    """Validate and append feedback lines (or events) in batches of ``batch_size`` lines."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be >= 1")
    report = FeedbackIngestReport()
    good: list[bytes] = []
    bad: list[bytes] = []
    reasons: list[dict[str, Any]] = []

    def flush() -> None:
        if good:
            key = log_key(RAW_PREFIX)
            store.put_bytes(key, b"".join(line + b"\n" for line in good))
            report.raw_files.append(key)
        if bad:
            key = log_key(ERROR_PREFIX)
            # Reasons first: an error file is never published without its reasons beside it.
            store.put_bytes(
                key.removesuffix(".jsonl") + ".reasons.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in reasons)
            )
            store.put_bytes(key, b"".join(line + b"\n" for line in bad))
            report.error_files.append(key)
        good.clear()
        bad.clear()
        reasons.clear()

    def lines() -> Iterator[bytes]:
        for item in source:
            if isinstance(item, FeedbackEvent):
                yield event_line(item).rstrip(b"\n")
            else:
                yield from _split_lines(item)

    for line in lines():
        report.lines += 1
        event, reason = parse_event_line(line)
        if event is not None:
            good.append(line)
            report.accepted += 1
        else:
            bad.append(line)
            reasons.append({"line": len(bad), "reason": reason})
            report.rejected += 1
            label = (reason or "").split(":")[0]
            report.reasons[label] = report.reasons.get(label, 0) + 1
        if len(good) + len(bad) >= batch_size:
            flush()
    flush()
    log.info(
        "feedback ingested",
        extra={"accepted": report.accepted, "rejected": report.rejected, "raw_files": len(report.raw_files)},
    )
    return report


def read_raw_events(
    store: ObjectStore, since: datetime | None = None, until: datetime | None = None
) -> Iterator[tuple[str, FeedbackEvent]]:
    """Every event in the raw log files of [since, until) as (file key, event), oldest file first."""
    for key in log_files(store, RAW_PREFIX, since, until):
        for line in store.iter_lines(key):
            event, _ = parse_event_line(line.rstrip(b"\n"))
            if event is not None:
                yield key, event
