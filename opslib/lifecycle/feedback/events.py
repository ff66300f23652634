"""Feedback events and their ingestion into the append-only raw log.

Valid events go to ``raw_logs/<UTC timestamp>-<uuid>.jsonl`` (one new file per batch), invalid
lines go unchanged to ``error_logs/<UTC timestamp>-<uuid>.jsonl`` with their reasons beside them
in ``…reasons.jsonl``. Each batch file is published atomically, so for any input
lines in = lines in raw_logs + lines in error_logs; a re-run after a crash may duplicate, never lose.

Two levels of checking, one a superset of the other:

- ``check_event`` is **intake** (``ingest_feedback`` and the HTTP endpoint's ``accept_feedback``):
  the contract plus what keeps a later stage from choking — ``created_at`` within
  [``feedback_epoch``, arrival + ``feedback_max_future_s``], no blank text field (``query_text``
  included), non-empty id lists without blank ids, no control character (C0, DEL, C1; a query may hold tab and line breaks) in any string.
- ``check_stored_event`` is what a **reader** of ``raw_logs/`` (feedback health, the dataset
  builder) requires of a line: the contract as it always was, and a ``created_at`` that has a UTC
  instant. Raw logs are immutable and may hold lines written before the intake rules existed, so a
  reader skips (and counts) a line it cannot read and tolerates everything else.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.storage import ObjectStore
from opslib.settings import Settings

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


@dataclass(frozen=True)
class IntakeLimits:
    """The sane range of ``created_at`` at intake: not before ``epoch``, not more than
    ``max_future`` after the event arrives (``OPS_FEEDBACK_EPOCH``, ``OPS_FEEDBACK_MAX_FUTURE_S``)."""

    epoch: datetime
    max_future: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeLimits:
        return cls(settings.feedback_epoch.astimezone(UTC), timedelta(seconds=settings.feedback_max_future_s))


DEFAULT_LIMITS = IntakeLimits(
    Settings.model_fields["feedback_epoch"].default,
    timedelta(seconds=Settings.model_fields["feedback_max_future_s"].default),
)

# C0 (U+0000–U+001F, NUL included), DEL (U+007F) and C1 (U+0080–U+009F). A query is what a user
# typed or pasted: tab and line breaks are whitespace there (search accepts them, so its feedback
# must be accepted too); in ids and versions they are refused like any other control character.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_WHITESPACE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
FREE_TEXT_FIELDS = frozenset({"query_text"})


def text_problem(value: object, *, free_text: bool = False) -> str | None:
    """Why ``value`` cannot be a text field of an event at intake, or None (``free_text``: tab,
    LF and CR allowed)."""
    if type(value) is not str or not value:
        return "must be a non-empty string"
    bad = (_CONTROL_BUT_WHITESPACE if free_text else _CONTROL).search(value)
    if bad is not None:
        return f"holds control character U+{ord(bad.group()):04X} at position {bad.start()}"
    if not value.strip():
        return "empty after trimming whitespace"
    return None


def ids_problem(value: object) -> str | None:
    """Why ``value`` cannot be an id list of an event at intake, or None."""
    if type(value) is not list:
        return "must be a list of non-empty strings"
    if not value:
        return "must hold at least one id"
    for i, item in enumerate(value):
        problem = text_problem(item)
        if problem is not None:
            return f"id {i} {problem}"
    return None


def check_text(name: str, value: object) -> None:
    """``InvalidEvent`` (``"<name>: why"``) unless ``value`` may be a text field at intake; the
    HTTP intake checks the client's fields with it before anything is looked up."""
    problem = text_problem(value, free_text=name in FREE_TEXT_FIELDS)
    if problem is not None:
        raise InvalidEvent(f"{name}: {problem}")


def check_ids(name: str, value: object) -> None:
    """``InvalidEvent`` (``"<name>: why"``) unless ``value`` may be an id list at intake."""
    problem = ids_problem(value)
    if problem is not None:
        raise InvalidEvent(f"{name}: {problem}")


def check_stored_event(data: dict[str, Any]) -> datetime:
    """What a reader of ``raw_logs/`` requires of an event: the feedback-event contract (exact
    fields, non-empty strings, a known rating, lists of non-empty strings, an aware ISO
    ``created_at``, the UUIDv5 ``event_id``, ``used_ids`` ⊆ ``topk_ids``) and a ``created_at``
    that has a UTC instant. Returns that instant; raises ``InvalidEvent`` naming the first bad field."""
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
    try:  # 0001-01-01T00:00:00+14:00 is a valid timestamp whose UTC instant is in year 0
        created = created.astimezone(UTC)
    except OverflowError:
        raise InvalidEvent(f"created_at: {data['created_at']} has no UTC instant (out of range)") from None
    if not _is_event_id(data["event_id"], data["user_id"], data["req_id"], data["rating"]):
        expected = feedback_event_id(data["user_id"], data["req_id"], data["rating"])
        raise InvalidEvent(f"event_id: must be the UUIDv5 of feedback:{{user_id}}:{{req_id}}:{{rating}} ({expected})")
    stray = [u for u in data["used_ids"] if u not in data["topk_ids"]]
    if stray:
        raise InvalidEvent(f"used_ids: {stray} are not in topk_ids")
    return created


def check_event(data: dict[str, Any], *, now: datetime | None = None, limits: IntakeLimits = DEFAULT_LIMITS) -> None:
    """Intake: raise ``InvalidEvent`` naming the first field of ``data`` that breaks the
    feedback-event contract (``check_stored_event``) or an intake rule — ``created_at`` before
    ``limits.epoch`` or more than ``limits.max_future`` after ``now`` (default: the clock), a
    blank text field, an empty id list or a blank id, a control character in any string."""
    created = check_stored_event(data)
    for name in _TEXT_FIELDS:
        check_text(name, data[name])
    for name in _LIST_FIELDS:
        check_ids(name, data[name])
    if created < limits.epoch:
        raise InvalidEvent(f"created_at: {data['created_at']} is before the system epoch {limits.epoch.isoformat()}")
    latest = (now or datetime.now(UTC)) + limits.max_future
    if created > latest:
        raise InvalidEvent(
            f"created_at: {data['created_at']} is more than {limits.max_future} in the future "
            f"(latest accepted {latest.astimezone(UTC).isoformat()})"
        )


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
    def from_dict(
        cls, data: dict[str, Any], *, now: datetime | None = None, limits: IntakeLimits = DEFAULT_LIMITS
    ) -> FeedbackEvent:
        """The event, or ``InvalidEvent`` naming the first bad field and why (intake rules: ``check_event``)."""
        check_event(data, now=now, limits=limits)
        return cls(**{**data, "topk_ids": tuple(data["topk_ids"]), "used_ids": tuple(data["used_ids"])})

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in FIELDS}
        data["topk_ids"], data["used_ids"] = list(self.topk_ids), list(self.used_ids)
        return data

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at).astimezone(UTC)


def parse_event_dict(
    line: bytes, *, limits: IntakeLimits | None = None, now: datetime | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """(validated event as a dict, None) or (None, reason). Never raises.

    Without ``limits`` the line is read as a reader of ``raw_logs/`` reads it
    (``check_stored_event``); with them it is checked as intake checks it (``check_event``)."""
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
        if limits is None:
            check_stored_event(data)
        else:
            check_event(data, now=now, limits=limits)
    except InvalidEvent as exc:
        return None, str(exc)
    return data, None


def parse_event_line(
    line: bytes, *, limits: IntakeLimits | None = None, now: datetime | None = None
) -> tuple[FeedbackEvent | None, str | None]:
    """(event, None) for a valid line, (None, reason) otherwise (``limits``: as ``parse_event_dict``).
    Never raises."""
    data, reason = parse_event_dict(line, limits=limits, now=now)
    if data is None:
        return None, reason
    return FeedbackEvent(**{**data, "topk_ids": tuple(data["topk_ids"]), "used_ids": tuple(data["used_ids"])}), None


def make_event_dict(
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
) -> dict[str, Any]:
    """The contract's fields of an event, unchecked (``make_event`` checks them)."""
    return {
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
    now: datetime | None = None,
    limits: IntakeLimits = DEFAULT_LIMITS,
) -> FeedbackEvent:
    """The event, checked as intake checks it (``InvalidEvent`` otherwise)."""
    data = make_event_dict(
        user_id=user_id,
        project_id=project_id,
        req_id=req_id,
        query_text=query_text,
        rating=rating,
        topk_ids=topk_ids,
        used_ids=used_ids,
        active_model_version=active_model_version,
        active_index_name=active_index_name,
        created_at=created_at,
        trace_id=trace_id,
    )
    return FeedbackEvent.from_dict(data, now=now, limits=limits)


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
    store: ObjectStore,
    source: Iterable[bytes | str | FeedbackEvent],
    *,
    batch_size: int = 500,
    limits: IntakeLimits = DEFAULT_LIMITS,
) -> FeedbackIngestReport:
    """Validate (``check_event``, with ``limits`` — ``IntakeLimits.from_settings`` of the
    workspace's settings) and append feedback lines (or events) in batches of ``batch_size``
    lines; refused lines go unchanged to ``error_logs/`` with their reasons."""
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
        event, reason = parse_event_dict(line, limits=limits, now=datetime.now(UTC))
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
    """Every readable event (``check_stored_event``) in the raw log files of [since, until) as
    (file key, event), oldest file first; unreadable lines are skipped."""
    for key in log_files(store, RAW_PREFIX, since, until):
        for line in store.iter_lines(key):
            event, _ = parse_event_line(line.rstrip(b"\n"))
            if event is not None:
                yield key, event
