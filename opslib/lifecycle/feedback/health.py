"""Feedback-health figures for ``10_feedback_health``: volume, rejects, rating mix per model.

It reads ``raw_logs/`` as every reader does (``check_stored_event``): a line it cannot read — one
written before intake refused such lines, e.g. a ``created_at`` with no UTC instant — is counted in
``unreadable_lines`` and skipped, never fatal; anything readable is tolerated (any year, any text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from opslib.db.models import utcnow
from opslib.infra.storage import ObjectStore
from opslib.lifecycle.feedback.events import (
    ERROR_PREFIX,
    RAW_PREFIX,
    log_files,
    parse_event_line,
)


@dataclass
class FeedbackHealth:
    window_start: datetime
    window_end: datetime
    events: pd.DataFrame  # one row per raw event in the window
    rejects: pd.DataFrame  # one row per rejected line in the window (reason)
    raw_files: int
    error_files: int
    unreadable_lines: int = 0  # raw-log lines in the window no reader can use (skipped)

    @property
    def total(self) -> int:
        return len(self.events)

    @property
    def duplicate_rate(self) -> float:
        if self.events.empty:
            return 0.0
        return 1.0 - self.events["event_id"].nunique() / len(self.events)

    def volume_by_day(self) -> pd.DataFrame:
        if self.events.empty:
            return pd.DataFrame(columns=["LIKE", "DISLIKE"])
        table = self.events.pivot_table(index="day", columns="rating", values="event_id", aggfunc="count", fill_value=0)
        return table.reindex(columns=["LIKE", "DISLIKE"], fill_value=0)

    def rating_mix_by_model(self) -> pd.DataFrame:
        """Per active model version: events, likes, dislikes and like rate."""
        if self.events.empty:
            return pd.DataFrame(columns=["events", "LIKE", "DISLIKE", "like_rate"])
        table = self.events.pivot_table(
            index="active_model_version", columns="rating", values="event_id", aggfunc="count", fill_value=0
        )
        table = table.reindex(columns=["LIKE", "DISLIKE"], fill_value=0)
        table.insert(0, "events", table["LIKE"] + table["DISLIKE"])
        table["like_rate"] = (table["LIKE"] / table["events"]).round(3)
        return table

    def like_rate_by_day(self) -> pd.DataFrame:
        """Like rate per day (rows) and active model version (columns)."""
        if self.events.empty:
            return pd.DataFrame()
        liked = self.events.assign(liked=self.events["rating"].eq("LIKE").astype(float))
        return liked.pivot_table(index="day", columns="active_model_version", values="liked", aggfunc="mean").round(3)

    def rejects_by_reason(self) -> pd.DataFrame:
        if self.rejects.empty:
            return pd.DataFrame(columns=["lines"])
        return self.rejects.groupby("reason").size().to_frame("lines").sort_values("lines", ascending=False)


def feedback_health(store: ObjectStore, window_days: int, now: datetime | None = None) -> FeedbackHealth:
    if window_days < 1:
        raise ValueError(f"window_days {window_days}: must be >= 1")
    end = now or utcnow()
    start = end - timedelta(days=window_days)
    rows = []
    unreadable = 0
    raw_keys = log_files(store, RAW_PREFIX, start, end + timedelta(microseconds=1))
    for key in raw_keys:
        for line in store.iter_lines(key):
            e, _reason = parse_event_line(line.rstrip(b"\n"))
            if e is None:
                unreadable += 1
                continue
            created = e.created
            rows.append(
                {
                    "file": key,
                    "event_id": e.event_id,
                    "rating": e.rating,
                    "active_model_version": e.active_model_version,
                    "project_id": e.project_id,
                    "created_at": created,
                    "day": created.date().isoformat(),
                }
            )
    rejects = []
    error_keys = log_files(store, ERROR_PREFIX, start, end + timedelta(microseconds=1))
    for key in error_keys:
        reasons_key = key.removesuffix(".jsonl") + ".reasons.jsonl"
        for line in store.iter_lines(reasons_key):
            reason = json.loads(line)["reason"]
            rejects.append({"file": key, "reason": reason.split(":")[0] if ":" in reason else reason})
    return FeedbackHealth(
        window_start=start,
        window_end=end,
        events=pd.DataFrame(
            rows, columns=["file", "event_id", "rating", "active_model_version", "project_id", "created_at", "day"]
        ),
        rejects=pd.DataFrame(rejects, columns=["file", "reason"]),
        raw_files=len(raw_keys),
        error_files=len(error_keys),
        unreadable_lines=unreadable,
    )
