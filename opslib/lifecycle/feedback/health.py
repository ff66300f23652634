"""Feedback-health figures for ``10_feedback_health``: volume, rejects, rating mix per model.

It reads ``raw_logs/`` as every reader does (``check_stored_event``): a line it cannot read — one
written before intake refused such lines, e.g. a ``created_at`` with no UTC instant — is counted in
``unreadable_lines`` and skipped, never fatal; anything readable is tolerated (any year, any text).

The stage's verdict (``health_verdict``) is OK, or WARN when any of ``HealthThresholds`` is
crossed (documented in docs/reviewer-guide.md § The feedback-health report): the window holds no
event, too large a share of the lines received were rejected at ingestion, a raw-log line no
reader can use, or too many duplicate deliveries — or the serving model does not fit the corpus
it serves (``FitThresholds``: it truncates too many chunks at its max sequence length, or reads
too many ``[UNK]``; opslib.lifecycle.corpus_fit). A WARN blocks nothing — the dataset stage has
its own eligibility rules — it tells the reviewer where to look.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from opslib.control.outcomes import Verdict
from opslib.db.models import utcnow
from opslib.infra.storage import ObjectStore
from opslib.lifecycle.corpus_fit import FIT_THRESHOLDS, FitThresholds, ModelFit, fit_warnings
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
    def rejected_share(self) -> float:
        """Rejected lines over every line received in the window (events, rejects, unreadable)."""
        received = self.total + len(self.rejects) + self.unreadable_lines
        return len(self.rejects) / received if received else 0.0

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


@dataclass(frozen=True)
class HealthThresholds:
    """When the feedback log earns a WARN (any one crossed is enough)."""

    # Fewer events than this in the window: traffic or feedback delivery has stopped.
    min_events: int = 1
    # Rejected lines over all lines received: a client sending malformed feedback.
    max_rejected_share: float = 0.05
    # Raw-log lines no reader can use (intake refuses such lines now: any one is an anomaly).
    max_unreadable_lines: int = 0
    # Repeated event ids over events: delivery is at-least-once, so some repeats are normal
    # (readers deduplicate), but this many means a client retrying in a loop.
    max_duplicate_rate: float = 0.05
    # The serving model's fit to the corpus (truncated share, [UNK] rate).
    fit: FitThresholds = FIT_THRESHOLDS

    def __post_init__(self) -> None:
        for name in ("max_rejected_share", "max_duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value}: must be a share between 0 and 1")
        for name in ("min_events", "max_unreadable_lines"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be >= 0")

    def summary(self) -> str:
        """The WARN rule in one line, as the 10 report shows it."""
        return (
            f"events < {self.min_events}, rejected share > {self.max_rejected_share:.0%}, "
            f"unreadable lines > {self.max_unreadable_lines}, duplicate rate > {self.max_duplicate_rate:.0%}, "
            f"truncated chunks > {self.fit.max_truncated_share:.0%}, [UNK] rate > {self.fit.max_unk_rate:.0%}"
        )


THRESHOLDS = HealthThresholds()


@dataclass(frozen=True)
class HealthVerdict:
    verdict: Verdict  # OK or WARN
    reasons: list[str] = field(default_factory=list)  # one per threshold crossed
    numbers: dict[str, int | float] = field(default_factory=dict)
    fit: ModelFit | None = None  # the serving model's fit (None: not measured — no corpus yet)

    @property
    def sentence(self) -> str:
        """The banner's text: what was seen, and why WARN."""
        n = self.numbers
        seen = (
            f"{n['events']} events, {n['rejected_lines']} rejected lines ({n['rejected_share']:.1%} of lines), "
            f"{n['unreadable_lines']} unreadable, duplicate rate {n['duplicate_rate']:.1%}"
        )
        if self.fit is not None:
            seen += (
                f"; serving model {self.fit.model_version} truncates {n['fit_truncated_share']:.1%} of "
                f"sampled chunks, [UNK] {n['fit_unk_rate']:.1%} of chunk tokens"
            )
        return f"{seen} — " + "; ".join(self.reasons) if self.reasons else f"{seen}: within every threshold"

    def outputs(self) -> dict[str, object]:
        """What the stage records on its execution (the run index shows it); with the serving
        model's whole fit record, so it is read back rather than measured again."""
        fit = {"model_fit": self.fit.as_record()} if self.fit is not None else {}
        return {"health_verdict": self.verdict.value, "health_reasons": list(self.reasons), **self.numbers, **fit}


def health_verdict(
    health: FeedbackHealth, thresholds: HealthThresholds = THRESHOLDS, fit: ModelFit | None = None
) -> HealthVerdict:
    """OK, or WARN naming every threshold the window — or the serving model's ``fit`` — crosses."""
    numbers: dict[str, int | float] = {
        "events": health.total,
        "rejected_lines": len(health.rejects),
        "rejected_share": round(health.rejected_share, 4),
        "unreadable_lines": health.unreadable_lines,
        "duplicate_rate": round(health.duplicate_rate, 4),
    }
    reasons = []
    if health.total < thresholds.min_events:
        reasons.append(f"{health.total} events in the window (fewer than {thresholds.min_events})")
    # Counts against share × total (not share against share): exactly at a threshold is not above it.
    received = health.total + len(health.rejects) + health.unreadable_lines
    if len(health.rejects) > thresholds.max_rejected_share * received:
        reasons.append(
            f"rejected share {health.rejected_share:.1%} above {thresholds.max_rejected_share:.1%} "
            "(see rejected lines by reason)"
        )
    if health.unreadable_lines > thresholds.max_unreadable_lines:
        reasons.append(
            f"{health.unreadable_lines} unreadable raw-log lines (more than {thresholds.max_unreadable_lines})"
        )
    repeats = health.total - (health.events["event_id"].nunique() if health.total else 0)
    if repeats > thresholds.max_duplicate_rate * health.total:
        reasons.append(f"duplicate rate {health.duplicate_rate:.1%} above {thresholds.max_duplicate_rate:.1%}")
    if fit is not None:
        numbers["fit_truncated_share"] = round(fit.chunks.truncated_share, 4)
        numbers["fit_unk_rate"] = round(fit.chunks.unk_rate, 4)
        numbers["fit_query_unk_rate"] = round(fit.queries.unk_rate, 4)
        reasons.extend(fit_warnings(fit, thresholds.fit))
    return HealthVerdict(Verdict.WARN if reasons else Verdict.OK, reasons, numbers, fit)
