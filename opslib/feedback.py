"""Feedback events (DESIGN §4) and their ingestion into the append-only raw log.

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
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opslib.logs import get_logger
from opslib.storage import ObjectStore

log = get_logger(__name__)

# One fixed namespace for every event id (DESIGN §4).
FEEDBACK_NAMESPACE = uuid.UUID("0c6b3c57-5e0f-4d55-9a1e-6b1f6f0e2a11")
RAW_PREFIX = "raw_logs"
ERROR_PREFIX = "error_logs"
MAX_LINE_BYTES = 1 << 20


_NAMESPACE_BYTES = FEEDBACK_NAMESPACE.bytes


def feedback_event_id(user_id: str, req_id: str, rating: str) -> str:
    """UUIDv5 of ``feedback:{user_id}:{req_id}:{rating}`` — computed directly (RFC 4122 §4.3),
    equal to ``uuid.uuid5`` but about ten times faster; dataset builds check millions of these."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"feedback:{user_id}:{req_id}:{rating}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal[1]
    event_id: str
    user_id: str = Field(min_length=1)
    project_id: str = Field(min_length=1)
    req_id: str = Field(min_length=1)
    query_text: str = Field(min_length=1)
    rating: Literal["LIKE", "DISLIKE"]
    topk_ids: list[str]
    used_ids: list[str]
    active_model_version: str = Field(min_length=1)
    active_index_name: str = Field(min_length=1)
    response_snapshot_ref: str = Field(min_length=1)
    created_at: str
    trace_id: str = Field(min_length=1)

    @field_validator("created_at")
    @classmethod
    def _aware_iso(cls, value: str) -> str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO-8601 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError("must carry a UTC offset")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackEvent:
        expected = feedback_event_id(self.user_id, self.req_id, self.rating)
        if self.event_id != expected:
            raise ValueError(f"event_id must be the UUIDv5 of feedback:{{user_id}}:{{req_id}}:{{rating}} ({expected})")
        stray = [u for u in self.used_ids if u not in self.topk_ids]
        if stray:
            raise ValueError(f"used_ids {stray} are not in topk_ids")
        return self

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at).astimezone(timezone.utc)


def parse_event_line(line: bytes) -> tuple[FeedbackEvent | None, str | None]:
    """(event, None) for a valid line, (None, reason) otherwise. Never raises."""
    if not line.strip():
        return None, "empty line"
    if len(line) > MAX_LINE_BYTES:
        return None, f"line too long: {len(line)} bytes > {MAX_LINE_BYTES}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: {exc.reason} at byte {exc.start}"
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    if data.get("schema_version") != 1:
        return None, f"unsupported schema_version {data.get('schema_version')!r} (only 1)"
    try:
        return FeedbackEvent.model_validate(data), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        reason = "missing field" if first["type"] == "missing" else first["msg"]
        return None, f"{where}: {reason}"


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
    return FeedbackEvent(
        schema_version=1,
        event_id=feedback_event_id(user_id, req_id, rating),
        user_id=user_id, project_id=project_id, req_id=req_id, query_text=query_text,
        rating=rating, topk_ids=list(topk_ids), used_ids=list(used_ids),  # type: ignore[arg-type]
        active_model_version=active_model_version, active_index_name=active_index_name,
        response_snapshot_ref=req_id, created_at=created_at.astimezone(timezone.utc).isoformat(),
        trace_id=trace_id,
    )


def event_line(event: FeedbackEvent) -> bytes:
    return json.dumps(event.model_dump(), ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"


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
    stamp = (at or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime(_STAMP)
    return f"{prefix}/{stamp}-{uuid.uuid4().hex}.jsonl"


def batch_timestamp(key: str) -> datetime:
    """The UTC timestamp a raw/error log file is named by (``<prefix>/<stamp>-<uuid>.jsonl``)."""
    name = key.rsplit("/", 1)[-1]
    try:
        return datetime.strptime(name.split("-", 1)[0], _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"key {key!r}: not named <UTC timestamp>-<uuid>.jsonl") from None


def log_files(store: ObjectStore, prefix: str, since: datetime | None = None,
              until: datetime | None = None) -> list[str]:
    """Log files under ``prefix`` whose file timestamp is in [since, until), oldest first."""
    keys = [k for k in store.list(prefix) if k.endswith(".jsonl") and not k.endswith(".reasons.jsonl")]
    return [
        k for k in keys
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
            store.put_bytes(key.removesuffix(".jsonl") + ".reasons.jsonl",
                            b"".join(json.dumps(r).encode() + b"\n" for r in reasons))
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
    log.info("feedback ingested", extra={"accepted": report.accepted, "rejected": report.rejected,
                                          "raw_files": len(report.raw_files)})
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
