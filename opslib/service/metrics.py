"""Prometheus metrics of a serving endpoint (``GET /metrics``) and the lifecycle's batch figures.

Request metrics are counted in the process; batch figures (release, runs, queue, stages, index
freshness, feedback outbox, live endpoints) are read from the Metadata DB on each scrape by
``BatchCollector`` — every replica reports the same figures, so alert rules aggregate them with
``max``. ``write_textfile`` writes the batch figures alone, atomically, for node_exporter's textfile
collector (cron-only setups without a running endpoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.service.figures import batch_figures

log = get_logger(__name__)
PREFIX = "biblio"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class BatchCollector(Collector):
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        try:
            f = batch_figures(self.ws)
        except Exception:  # a scrape must not fail the endpoint; the gap in the series is the signal
            log.exception("batch figures unavailable")
            up = GaugeMetricFamily(f"{PREFIX}_batch_figures_up", "1 if the Metadata DB answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily(f"{PREFIX}_batch_figures_up", "1 if the Metadata DB answered this scrape")
        up.add_metric([], 1)
        yield up
        active = InfoMetricFamily(f"{PREFIX}_active", "the serving combination per the release row")
        active.add_metric([], {"model_version": f.active_model_version or "", "index_name": f.active_index_name or ""})
        yield active
        status = GaugeMetricFamily(f"{PREFIX}_release_status", "1 for the release row's status", labels=["status"])
        for name in ("STABLE", "CANDIDATE_REINDEXING", "ROLLBACK_PREPARING"):
            status.add_metric([name], 1 if f.release_status == name else 0)
        yield status
        runs = GaugeMetricFamily(f"{PREFIX}_runs", "ML pipeline runs by status", labels=["status"])
        for name, count in f.runs_by_status.items():
            runs.add_metric([name], count)
        yield runs
        backlog = GaugeMetricFamily(f"{PREFIX}_queue_backlog", "control messages not yet acknowledged")
        backlog.add_metric([], f.queue_backlog)
        yield backlog
        oldest = GaugeMetricFamily(f"{PREFIX}_queue_oldest_age_seconds", "age of the oldest unacknowledged message")
        oldest.add_metric([], f.queue_oldest_age_s or 0.0)
        yield oldest
        success = GaugeMetricFamily(
            f"{PREFIX}_stage_last_success_timestamp_seconds", "when each stage last succeeded", labels=["stage"]
        )
        duration = GaugeMetricFamily(
            f"{PREFIX}_stage_last_duration_seconds", "the latest finished execution's duration", labels=["stage"]
        )
        for stage, figures in sorted(f.stages.items()):
            if figures.last_success_at is not None:
                success.add_metric([stage], figures.last_success_at.timestamp())
            if figures.last_duration_s is not None:
                duration.add_metric([stage], figures.last_duration_s)
        yield success
        yield duration
        missing = GaugeMetricFamily(
            f"{PREFIX}_index_missing_chunks", "READY chunks missing from the active index (index freshness)"
        )
        missing.add_metric([], f.index_missing_chunks)
        yield missing
        outbox = GaugeMetricFamily(f"{PREFIX}_feedback_outbox_pending", "acknowledged feedback not yet in raw_logs/")
        outbox.add_metric([], f.feedback_outbox_pending)
        yield outbox
        outbox_age = GaugeMetricFamily(
            f"{PREFIX}_feedback_outbox_oldest_age_seconds", "age of the oldest feedback not yet in raw_logs/"
        )
        outbox_age.add_metric([], f.feedback_outbox_oldest_age_s or 0.0)
        yield outbox_age
        endpoints = GaugeMetricFamily(f"{PREFIX}_live_endpoints", "serving endpoints with a fresh heartbeat")
        endpoints.add_metric([], f.live_endpoints)
        yield endpoints


class ServiceMetrics:
    """The registry one endpoint process exposes."""

    def __init__(self, ws: Workspace) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.search_steps = Histogram(
            f"{PREFIX}_search_step_seconds",
            "time spent per step of a search (keyword, embed, vector, fuse, gate, store)",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.feedback = Counter(
            f"{PREFIX}_feedback_events",
            "accepted feedback events by rating and the model version that served the response",
            ["rating", "model_version"],
            registry=self.registry,
        )
        self.encode_batch = Histogram(
            f"{PREFIX}_encode_batch_size",
            "queries per encode call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.serving = Gauge(
            f"{PREFIX}_endpoint_serving",
            "1 for the model and index this endpoint last served with",
            ["model_version", "index_name"],
            registry=self.registry,
        )
        self.ready = Gauge(f"{PREFIX}_endpoint_ready", "1 if /readyz answers 200", registry=self.registry)
        self.registry.register(BatchCollector(ws))

    def served(self, model_version: str, index_name: str) -> None:
        self.serving.clear()
        self.serving.labels(model_version, index_name).set(1)


def batch_registry(ws: Workspace) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(BatchCollector(ws))
    return registry


def write_textfile(ws: Workspace, path: Path) -> None:
    """The batch figures in the text format, written atomically (temporary file + rename)."""
    write_to_textfile(str(path), batch_registry(ws))
