"""A client of a running endpoint (httpx): what ``opsbench simulate-traffic --url`` and the demo
send their traffic through, and what the serving benchmark measures with."""

from __future__ import annotations

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
