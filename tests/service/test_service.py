"""The serving endpoint as a real process: ``opsbench serve`` on a free loopback port, a real HTTP
client (httpx), a real Chroma server shared with the test process, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from helpers import dataset_row, mini_corpus_spec, ready_run
from sqlalchemy import update

from opslib.control.messages import new_rollback_request
from opslib.control.release import current_release
from opslib.corpus.loader import load_corpus
from opslib.db.models import FeedbackOutbox, SearchResponseSnapshot, ServingEndpoint, utcnow
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import cutover
from opslib.lifecycle.feedback.events import RAW_PREFIX
from opslib.lifecycle.reindex import reindex_candidate
from opslib.lifecycle.rollback import roll_back
from opslib.ops.bootstrap import init_workspace
from opslib.service.auth import new_token
from opslib.service.server import ServerProcess, ready_workers, spawn_server
from opslib.settings import Settings

pytestmark = pytest.mark.slow
PROJECT = "mini-alpha"


@dataclass
class Server:
    process: ServerProcess
    token: str
    search_only: str

    @property
    def url(self) -> str:
        return self.process.url

    def client(self, token: str | None = "default") -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'default' else token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.stop(sig)


def start_server(settings: Settings, log: Path, token: str, search_only: str, processes: int | None = None) -> Server:
    return Server(spawn_server(settings, log, processes=processes), token, search_only)


@pytest.fixture
def prepared(
    tmp_path: Path, db_url: str, tiny_model_dir: Path, chroma_server: tuple[str, int]
) -> tuple[Workspace, str, str]:
    """A workspace with the mini corpus, ready to serve, and two tokens (all scopes, search only)."""
    token, entry = new_token("tests", ["search", "feedback", "embeddings"])
    narrow, narrow_entry = new_token("search-only", ["search"])
    host, port = chroma_server
    settings = Settings(
        workspace=tmp_path / "ws",
        runs_dir=tmp_path / "runs",
        db_url=db_url,
        base_model_path=tiny_model_dir,
        base_model_version=f"tiny-{uuid.uuid4().hex[:8]}",  # collections on the shared server must not collide
        chroma_host=host,
        chroma_port=port,
        log_level="INFO",
        serve_tokens=[entry, narrow_entry],
        endpoint_heartbeat_s=0.3,
        endpoint_stale_after_s=3.0,
        endpoint_wait_s=30.0,
        serve_follow_interval_s=0.2,
        feedback_flush_age_s=0.5,
    )
    ws = Workspace(settings)
    init_workspace(ws)
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    return ws, token, narrow


@pytest.fixture
def served(prepared: tuple[Workspace, str, str], tmp_path: Path) -> Iterator[tuple[Workspace, Server]]:
    ws, token, narrow = prepared
    server = start_server(ws.settings, tmp_path / "serve.log", token, narrow)
    try:
        yield ws, server
    finally:
        server.stop()


def _search(
    client: httpx.Client,
    query: str = "how do I go about sorting lists",
    headers: dict[str, str] | None = None,
    **extra: object,
) -> httpx.Response:
    body = {"project_id": PROJECT, "user_id": "u1", "query": query, **extra}
    return client.post("/v1/search", json=body, headers=headers)


def _raw_events(ws: Workspace) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for key in ws.objects.list(RAW_PREFIX) for line in ws.objects.iter_lines(key)]


def _until(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_routes_answer_and_refuse_with_the_field_and_the_reason(served) -> None:  # type: ignore[no-untyped-def]
    ws, server = served
    with server.client() as client:
        assert client.get("/healthz").json()["status"] == "alive"
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["model_version"] == ws.settings.base_model_version

        # search: the serving path, the snapshot stored with the request's trace
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        found = client.post(
            "/v1/search",
            json={"project_id": PROJECT, "user_id": "u1", "query": "how do I go about sorting lists", "top_k": 3},
            headers={"traceparent": traceparent},
        )
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" == found.headers["x-request-id"]
        assert len(body["chunks"]) == 3 and body["active_model_version"] == ws.settings.base_model_version
        assert {"ref", "video_id", "start_ms", "end_ms", "text", "score"} == set(body["chunks"][0])
        with ws.db.read() as session:
            snapshot = session.get(SearchResponseSnapshot, body["req_id"])
            assert snapshot is not None and snapshot.trace_id == body["trace_id"]
            assert snapshot.topk_ids == [c["ref"] for c in body["chunks"]]
        assert _search(client, headers={"X-Request-ID": "req-42"}).json()["trace_id"] == "req-42"

        # feedback: checked against the snapshot, 202, the event carries the search's trace
        used = [body["chunks"][0]["ref"]]
        feedback = {"req_id": body["req_id"], "user_id": "u1", "rating": "LIKE", "used_ids": used}
        accepted = client.post("/v1/feedback", json=feedback)
        assert accepted.status_code == 202 and accepted.json()["duplicate"] is False
        again = client.post("/v1/feedback", json=feedback)
        assert again.status_code == 202 and again.json() == {**accepted.json(), "duplicate": True, "trace_id": ANY}
        _until(lambda: any(e["req_id"] == body["req_id"] for e in _raw_events(ws)))  # flushed by age
        (event,) = [e for e in _raw_events(ws) if e["req_id"] == body["req_id"]]
        assert event["event_id"] == accepted.json()["event_id"] and event["trace_id"] == body["trace_id"]
        assert event["active_model_version"] == body["active_model_version"] and event["used_ids"] == used

        def refused(response: httpx.Response, status: int, param: str, words: str) -> None:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["param"] == param and words in error["message"], error

        refused(client.post("/v1/feedback", json={**feedback, "user_id": "u2"}), 422, "user_id", "another user")
        refused(client.post("/v1/feedback", json={**feedback, "used_ids": ["nope"]}), 422, "used_ids", "not in")
        refused(client.post("/v1/feedback", json={**feedback, "req_id": "unknown"}), 404, "req_id", "no search")
        refused(client.post("/v1/feedback", json={**feedback, "rating": "MEH"}), 422, "rating", "LIKE")
        refused(client.post("/v1/feedback", json={**feedback, "project_id": "mini-beta"}), 422, "project_id", "another")
        with ws.db.transaction() as session:
            session.execute(
                update(SearchResponseSnapshot)
                .where(SearchResponseSnapshot.req_id == body["req_id"])
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        refused(client.post("/v1/feedback", json={**feedback, "rating": "DISLIKE"}), 410, "req_id", "expired")
        refused(_search(client, project_id="nowhere"), 404, "project_id", "no project")
        refused(_search(client, top_k=21), 422, "top_k", "less than or equal to 20")
        refused(_search(client, top_k="5"), 422, "top_k", "integer")
        refused(_search(client, query="x" * 2001), 413, "query", "at most 2000")
        refused(_search(client, extra_field=1), 422, "extra_field", "Extra inputs")
        refused(client.post("/v1/search", content=b"{not json"), 422, "body", "not valid JSON")
        big = b'{"query": "' + b"x" * (ws.settings.serve_max_body_bytes + 10) + b'"}'
        refused(client.post("/v1/search", content=big), 413, "body", "at most")

        # embeddings: OpenAI-compatible, float and base64 alike
        one = client.post("/v1/embeddings", json={"input": "sorting lists"}).json()
        assert one["object"] == "list" and one["model"] == ws.settings.base_model_version
        vector = np.array(one["data"][0]["embedding"], dtype=np.float32)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
        both = client.post(
            "/v1/embeddings", json={"input": ["sorting lists", "reading files"], "encoding_format": "base64"}
        )
        decoded = np.frombuffer(base64.b64decode(both.json()["data"][0]["embedding"]), dtype="<f4")
        assert np.allclose(decoded, vector, atol=1e-6) and both.json()["data"][1]["index"] == 1
        refused(client.post("/v1/embeddings", json={"input": "x", "model": "nope"}), 404, "model", "not a registered")
        refused(client.post("/v1/embeddings", json={"input": []}), 422, "input", "must not be empty")
        refused(client.post("/v1/embeddings", json={"input": ["ok", " "]}), 422, "input.1", "must not be empty")

    # tokens: none, a wrong one, one without the route's scope
    with server.client(None) as anonymous:
        missing = _search(anonymous)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    with server.client("bst_not-a-token") as wrong:
        assert _search(wrong).status_code == 401
    with server.client(server.search_only) as narrow:
        assert _search(narrow).status_code == 200
        refused(narrow.post("/v1/feedback", json=feedback), 403, "authorization", "'feedback' scope")


ANY = type("_Any", (), {"__eq__": lambda self, other: True})()


def test_metrics_are_named_and_move(served) -> None:  # type: ignore[no-untyped-def]
    _, server = served
    with server.client() as client:
        before = client.get("/metrics").text
        assert _search(client).status_code == 200
        after = client.get("/metrics").text
    for name in (
        "biblio_http_requests_total",
        "biblio_http_request_duration_seconds_bucket",
        'biblio_search_step_seconds_count{step="embed"}',
        'biblio_search_step_seconds_count{step="keyword"}',
        "biblio_active_info",
        'biblio_release_status{status="STABLE"} 1.0',
        "biblio_runs",
        "biblio_queue_backlog",
        "biblio_index_missing_chunks 0.0",
        "biblio_feedback_outbox_pending",
        "biblio_live_endpoints 1.0",
        "biblio_encode_batch_size_count",
    ):
        assert name in after, name

    def searches(text: str) -> float:
        line = [
            x for x in text.splitlines() if x.startswith('biblio_http_requests_total{method="POST",route="/v1/search"')
        ]
        return float(line[0].split()[-1]) if line else 0.0

    assert searches(after) == searches(before) + 1


def test_an_acknowledged_event_survives_kill_9(served) -> None:  # type: ignore[no-untyped-def]
    ws, server = served
    # Slow flushing: the kill comes before any batch is due.
    slow = ws.settings.model_copy(update={"feedback_flush_age_s": 3600.0, "feedback_batch_size": 1000})
    server.stop()
    server = start_server(slow, server.process.log_path, server.token, server.search_only)
    try:
        with server.client() as client:
            body = _search(client).json()
            ack = client.post(
                "/v1/feedback",
                json={
                    "req_id": body["req_id"],
                    "user_id": "u1",
                    "rating": "LIKE",
                    "used_ids": [body["chunks"][0]["ref"]],
                },
            )
            assert ack.status_code == 202
        server.stop(signal.SIGKILL)  # right after the 202
        with ws.db.read() as session:
            assert session.get(FeedbackOutbox, ack.json()["event_id"]) is not None  # durable before the reply
        assert not any(e["req_id"] == body["req_id"] for e in _raw_events(ws))
        server = start_server(slow, server.process.log_path, server.token, server.search_only)  # a restart flushes it
        _until(lambda: any(e["req_id"] == body["req_id"] for e in _raw_events(ws)))
        with ws.db.read() as session:
            assert session.get(FeedbackOutbox, ack.json()["event_id"]) is None
    finally:
        server.stop()


def test_readyz_turns_503_when_the_active_collection_is_dropped(served) -> None:  # type: ignore[no-untyped-def]
    ws, server = served
    with ws.db.read() as session:
        index = current_release(session).active_index_name  # type: ignore[union-attr]
    ws.vectors.drop(index)
    with server.client(None) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503 and index in answer.json()["reason"], answer.text


def test_cutover_and_rollback_while_serving(served, tiny_candidate_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The running server answers with the new model right after the switch, and with the old one
    right after the rollback — no restart; the cutover waited until the endpoint had the candidate."""
    ws, server = served
    dataset_row(ws, f"20261201-{uuid.uuid4().hex[:12]}")  # candidate names (and indexes) unique per test
    run_id = ready_run(ws, tiny_candidate_dir)
    base = ws.settings.base_model_version
    with server.client() as client:
        assert _search(client).json()["active_model_version"] == base
        reindex_candidate(ws, run_id)
        candidate = current_release_of(ws).candidate_model_version
        report = cutover(ws, run_id)  # waits (bounded) for every live endpoint to load the candidate
        assert report.release_after and report.release_after["active_model_version"] == candidate
        with ws.db.read() as session:
            (endpoint,) = session.query(ServingEndpoint).all()
            assert candidate in endpoint.loaded_versions
        served_by = _search(client).json()
        assert served_by["active_model_version"] == candidate and served_by["active_index_name"] == f"idx-{candidate}"

        request = new_rollback_request(candidate, trace_id=f"rb-{uuid.uuid4().hex[:6]}", reason="test")
        rolled = roll_back(ws, request)
        assert rolled.outcome == "rolled back" and rolled.endpoints_lagging == []
        assert _search(client).json()["active_model_version"] == base


def current_release_of(ws: Workspace):  # type: ignore[no-untyped-def]
    with ws.db.read() as session:
        return current_release(session)


def test_simulated_traffic_over_http_reaches_raw_logs_one_trace_per_request(served) -> None:  # type: ignore[no-untyped-def]
    from opslib.lifecycle.feedback.simulate import simulate_traffic
    from opslib.service.client import EndpointChannel, EndpointClient

    ws, server = served
    client = EndpointClient(server.url, server.token)
    try:
        report = simulate_traffic(ws, "mini", requests=12, seed=3, noise=0.0, channel=EndpointChannel(client))
    finally:
        client.close()
    assert report.requests == 12 and report.ingest.accepted == 12
    _until(lambda: len(_raw_events(ws)) == 12)
    events = _raw_events(ws)
    assert len({e["trace_id"] for e in events}) == 12  # a trace per request
    with ws.db.read() as session:
        for event in events:
            snapshot = session.get(SearchResponseSnapshot, event["req_id"])
            assert snapshot is not None and snapshot.trace_id == event["trace_id"]
    assert sum(e["rating"] == "LIKE" for e in events) == report.likes


# Worker processes: `opsbench serve --processes 2` ------------------------------------------------
@pytest.fixture
def served_by_two(prepared: tuple[Workspace, str, str], tmp_path: Path) -> Iterator[tuple[Workspace, Server]]:
    ws, token, narrow = prepared
    server = start_server(ws.settings, tmp_path / "serve.log", token, narrow, processes=2)
    try:
        yield ws, server
    finally:
        server.stop()


def _workers(server: Server) -> list[int]:
    return sorted(child.pid for child in psutil.Process(server.process.proc.pid).children())


def _endpoint_rows(ws: Workspace, address: str) -> dict[str, tuple[bool, bool]]:
    """endpoint id → (ready, stopped) of the rows advertising ``address``."""
    with ws.db.read() as session:
        rows = session.query(ServingEndpoint).where(ServingEndpoint.address == address).all()
        return {row.endpoint_id: (row.ready, row.stopped_at is not None) for row in rows}


def test_two_worker_processes_serve_one_address_and_a_killed_one_comes_back(served_by_two) -> None:  # type: ignore[no-untyped-def]
    ws, server = served_by_two
    rows = _endpoint_rows(ws, server.url)
    first, second = sorted(rows)
    assert first.endswith("/0") and second.endswith("/1") and first[:-2] == second[:-2], rows  # one replica each
    assert rows[first] == rows[second] == (True, False)
    workers = _workers(server)
    assert len(workers) == 2
    with server.client() as client:
        assert _search(client).status_code == 200

    os.kill(workers[0], signal.SIGKILL)
    killed_at = time.monotonic()
    with server.client() as client:  # a new connection: only a live worker accepts it
        for _ in range(3):
            assert _search(client).status_code == 200
    _until(lambda: len(_workers(server)) == 2 and workers[0] not in _workers(server))
    # Both reported ready since the kill: the restarted worker is serving again, under its id.
    _until(lambda: ready_workers(ws.settings, server.url, time.monotonic() - killed_at) == 2)
    assert sorted(_endpoint_rows(ws, server.url)) == [first, second]
    assert "worker died unexpectedly: restarting it" in server.process.log_path.read_text()
    with server.client() as client:
        assert _search(client).status_code == 200


def test_sigterm_stops_the_supervisor_and_its_workers_cleanly(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws, token, narrow = prepared
    slow = ws.settings.model_copy(update={"feedback_flush_age_s": 3600.0, "feedback_batch_size": 1000})
    server = start_server(slow, tmp_path / "serve.log", token, narrow, processes=2)
    try:
        workers = _workers(server)
        assert len(workers) == 2
        with server.client() as client:
            body = _search(client).json()
            feedback = {
                "req_id": body["req_id"],
                "user_id": "u1",
                "rating": "LIKE",
                "used_ids": [body["chunks"][0]["ref"]],
            }
            assert client.post("/v1/feedback", json=feedback).status_code == 202
        assert not any(e["req_id"] == body["req_id"] for e in _raw_events(ws))  # pending: flushing is slow
        assert server.process.stop(signal.SIGTERM) == 0
    finally:
        server.stop(signal.SIGKILL)
    assert not [pid for pid in workers if psutil.pid_exists(pid)]  # no orphan left
    assert set(_endpoint_rows(ws, server.url).values()) == {(False, True)}  # both rows marked stopped
    assert any(e["req_id"] == body["req_id"] for e in _raw_events(ws))  # the clean stop flushed it


@pytest.mark.sqlite_only(
    reason="its point is the supervisor giving up, not the database; workers on PostgreSQL: the two tests above"
)
def test_the_supervisor_gives_up_when_workers_die_as_they_start(prepared) -> None:  # type: ignore[no-untyped-def]
    ws, _, _ = prepared
    shutil.rmtree(Path(ws.settings.resolved_model_store_url) / ws.settings.base_model_version)  # cannot load
    env = {**os.environ, **ws.settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "opslib.ops.cli", "serve", "--port", "0", "--processes", "2"]
    done = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert done.returncode == 1 and done.stdout.startswith(b"serving on "), done
    error = done.stderr.decode(errors="replace").splitlines()[-1]
    assert error.startswith("error: worker ") and "3 times in a row" in error and "giving up" in error, error
