"""A client of a running endpoint (httpx): what ``opsbench simulate-traffic --url`` and the demo
send their traffic through, and what the serving benchmark measures with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from opslib.errors import OpsError
from opslib.infra.logs import current_trace_id
from opslib.lifecycle.feedback.events import FeedbackIngestReport
from opslib.lifecycle.feedback.simulate import Choose


class EndpointError(OpsError):
    """The endpoint refused a request or could not be reached (status and its message)."""


class EndpointClient:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Loopback and in-cluster addresses: never through a proxy from the environment.
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, trust_env=False)
        self.url = url

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(path, json=body, headers={"X-Request-ID": current_trace_id()})
        except httpx.HTTPError as error:
            raise EndpointError(f"{self.url}{path}: {error}") from error
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise EndpointError(f"{self.url}{path}: {response.status_code} {message}")
        data: dict[str, Any] = response.json()
        return data

    def search(self, query: str, project_id: str, user_id: str, top_k: int = 5) -> dict[str, Any]:
        return self._post("/v1/search", {"query": query, "project_id": project_id, "user_id": user_id, "top_k": top_k})

    def feedback(self, req_id: str, user_id: str, rating: str, used_ids: list[str]) -> dict[str, Any]:
        return self._post(
            "/v1/feedback", {"req_id": req_id, "user_id": user_id, "rating": rating, "used_ids": used_ids}
        )

    def ready(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("/readyz").json()
        return data


class EndpointChannel:
    """Simulated traffic over HTTP: search, then feedback checked by the endpoint against its
    snapshot; the endpoint writes the events (``raw_logs/`` after its next flush)."""

    def __init__(self, client: EndpointClient) -> None:
        self.client = client
        self.accepted = 0
        self._last: tuple[str, list[str]] | None = None

    def search(self, query_text: str, project_id: str, user_id: str, choose: Choose) -> tuple[list[str], list[str]]:
        response = self.client.search(query_text, project_id, user_id)
        refs = [c["ref"] for c in response["chunks"]]
        used = choose(refs)
        self._last = (response["req_id"], used)
        return refs, used

    def feedback(self, query_text: str, project_id: str, user_id: str, rating: str, created_at: datetime) -> None:
        assert self._last is not None, "feedback before a search"
        req_id, used = self._last
        self.client.feedback(req_id, user_id, rating, used)
        self.accepted += 1

    def close(self) -> FeedbackIngestReport:
        report = FeedbackIngestReport()
        report.lines = report.accepted = self.accepted  # acknowledged; the endpoint writes raw_logs/
        return report


@dataclass(frozen=True)
class EndpointTraffic:
    """What one endpoint's ``/metrics`` says about its traffic since it started."""

    api_requests: int  # /v1/* requests answered
    searches: int
    search_p95_s: float | None  # from the latency histogram's buckets (upper bound of the p95 bucket)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q``, from cumulative (le, count) pairs."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    target = q * ordered[-1][1]
    for bound, count in ordered:
        if count >= target:
            return bound
    return ordered[-1][0]


def scrape_traffic(address: str, timeout: float = 2.0) -> EndpointTraffic:
    """Read an endpoint's request counters and search latency from its ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = httpx.get(f"{address.rstrip('/')}/metrics", timeout=timeout, trust_env=False)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise EndpointError(f"{address}/metrics: {error}") from error
    api = searches = 0
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name == "biblio_http_requests_total" and route.startswith("/v1/"):
                api += int(sample.value)
                searches += int(sample.value) if route == "/v1/search" else 0
            elif sample.name == "biblio_http_request_duration_seconds_bucket" and route == "/v1/search":
                buckets.append((float(sample.labels["le"]), sample.value))
    return EndpointTraffic(api, searches, histogram_quantile(buckets, 0.95))
