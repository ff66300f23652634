"""The HTTP application of a serving endpoint (FastAPI; run by ``opsbench serve`` on uvicorn).

Routes (docs/serving.md has the reference; the server publishes its OpenAPI at ``/openapi.json``):

* ``POST /v1/search`` — the serving path (keyword + vector → RRF → SOT gate), snapshot stored;
* ``POST /v1/feedback`` — checked against the stored snapshot, durable before ``202``;
* ``POST /v1/embeddings`` — OpenAI-compatible request and response;
* ``GET /healthz`` (alive), ``GET /readyz`` (active model loaded, active index complete),
  ``GET /metrics`` (Prometheus text format).

``/v1/*`` needs a bearer token with the route's scope (401 without one, 403 without the scope).
Every refusal is JSON in OpenAI's error shape, naming the field and the reason:
``{"error": {"message": "<field>: <reason>", "type": …, "param": "<field>", "code": <status>}}``.
Handlers read and check the body on the event loop, then run the work (database, encoding) in the
thread pool; query encodes go through the micro-batching encoder.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from opslib.control.release import current_release
from opslib.corpus.search import MAX_QUERY_CHARS, MAX_TOP_K, TOP_K, SearchError, search
from opslib.db.models import ModelVersion, Video
from opslib.errors import OpsError
from opslib.infra.embedding import EmbeddingRefused, Purpose
from opslib.infra.logs import get_logger, new_trace_id, trace
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.intake import (
    FeedbackIn,
    FeedbackRejected,
    SnapshotExpired,
    SnapshotNotFound,
    accept_feedback,
)
from opslib.service.auth import authenticate
from opslib.service.encoder import BatchingEncoder
from opslib.service.follower import Follower, readiness
from opslib.service.metrics import ServiceMetrics
from opslib.settings import ServeScope

log = get_logger(__name__)
MAX_EMBEDDING_INPUTS = 256
PROJECT_MEMORY_S = 60.0
_TRACEPARENT_HEX = set("0123456789abcdef")


class ApiError(OpsError):
    """A refusal with its HTTP status, the field it concerns and why (answered, never raised
    past the application)."""

    def __init__(self, status: int, param: str | None, reason: str, kind: str = "invalid_request_error") -> None:
        super().__init__(f"{param}: {reason}" if param else reason)
        self.status, self.param, self.reason, self.kind = status, param, reason, kind


# Request and response bodies ----------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchIn(_Body):
    project_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    query: str = Field(min_length=1)
    top_k: int = Field(default=TOP_K, ge=1, le=MAX_TOP_K)


class ChunkOut(BaseModel):
    ref: str
    video_id: str
    start_ms: int
    end_ms: int
    text: str
    score: float


class SearchOut(BaseModel):
    req_id: str
    chunks: list[ChunkOut]
    active_model_version: str
    active_index_name: str
    trace_id: str


class FeedbackBody(_Body):
    req_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=128)
    rating: Literal["LIKE", "DISLIKE"]
    used_ids: list[str] = Field(default_factory=list, max_length=MAX_TOP_K)
    project_id: str | None = Field(default=None, min_length=1, max_length=128)


class FeedbackOut(BaseModel):
    event_id: str
    duplicate: bool
    trace_id: str


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # OpenAI clients send fields we do not use (user)

    input: str | list[str]
    model: str | None = Field(default=None, min_length=1, max_length=128)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


# The application ---------------------------------------------------------------------------
@dataclass
class ServiceState:
    ws: Workspace
    metrics: ServiceMetrics
    encoder: BatchingEncoder
    follower: Follower
    endpoint_id: str


Model = TypeVar("Model", bound=BaseModel)


def _parse(model: type[Model], raw: bytes) -> Model:
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(422, "body", f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(422, field, first["msg"]) from None


def trace_from(request: Request) -> str:
    """The request's trace id: from a W3C ``traceparent`` (its trace-id part), else
    ``X-Request-ID``, else a new one."""
    parent = request.headers.get("traceparent", "")
    parts = parent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and set(parts[1]) <= _TRACEPARENT_HEX and parts[1] != "0" * 32:
        return parts[1]
    request_id = request.headers.get("x-request-id", "").strip()
    if request_id and len(request_id) <= 64 and request_id.isprintable():
        return request_id
    return new_trace_id()


def create_app(ws: Workspace, *, endpoint_id: str, address: str, allow_anonymous: bool = False) -> FastAPI:
    """The application for one replica. ``allow_anonymous`` skips the token check (loopback demos
    and tests only: ``opsbench serve`` refuses it on any other interface)."""
    tokens = list(ws.settings.serve_tokens)
    max_body = ws.settings.serve_max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = ServiceMetrics(ws)
        encoder = BatchingEncoder(
            ws.embeddings,
            workers=ws.settings.serve_encode_workers,
            wait_s=ws.settings.serve_batch_wait_ms / 1000,
            observe=metrics.encode_batch.observe,
        )
        follower = Follower(ws, endpoint_id, address)
        await run_in_threadpool(follower.start)  # loads the active model: ready before the first request
        app.state.service = ServiceState(ws, metrics, encoder, follower, endpoint_id)
        log.info("endpoint started", extra={"endpoint_id": endpoint_id, "address": address})
        try:
            yield
        finally:
            await run_in_threadpool(follower.stop)  # flushes pending feedback, marks the row stopped
            encoder.close()
            log.info("endpoint stopped", extra={"endpoint_id": endpoint_id})

    # No /docs or /redoc: their pages load scripts from a CDN, and nothing may download at run time.
    app = FastAPI(
        title="Biblio managed embedding endpoint",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    projects_seen: dict[str, float] = {}  # project id → when it was last found to exist

    def known_project(ws: Workspace, project_id: str) -> bool:
        """Whether any video is in the project; a found project is remembered for a minute (a
        project that is gone meanwhile answers empty results, as search does, not 404)."""
        now = time.monotonic()
        if now - projects_seen.get(project_id, float("-inf")) < PROJECT_MEMORY_S:
            return True
        with ws.db.read() as session:
            found = session.scalar(select(Video.id).where(Video.project_id == project_id).limit(1)) is not None
        if found:
            projects_seen[project_id] = now
        return found

    def state(request: Request) -> ServiceState:
        service: ServiceState = request.app.state.service
        return service

    def require(request: Request, scope: ServeScope) -> None:
        if allow_anonymous:
            return
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "authorization", "a bearer token is required", "authentication_error")
        token = authenticate(tokens, presented.strip())
        if token is None:
            raise ApiError(401, "authorization", "the bearer token is not valid", "authentication_error")
        if scope not in token.scopes:
            raise ApiError(403, "authorization", f"token {token.name!r} lacks the {scope!r} scope", "permission_error")

    async def body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, "body", f"{declared} bytes, at most {max_body}")
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > max_body:
                raise ApiError(413, "body", f"more than {max_body} bytes")
        return raw

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        trace_id = trace_from(request)
        started = time.perf_counter()
        with trace(trace_id):
            request.state.trace_id = trace_id
            try:
                response = await call_next(request)
            except ApiError as error:
                response = error_response(error)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            seconds = time.perf_counter() - started
            service: ServiceState | None = getattr(request.app.state, "service", None)
            if service is not None:
                service.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
                service.metrics.latency.labels(path, request.method).observe(seconds)
            response.headers["X-Request-ID"] = trace_id
            if path.startswith("/v1/"):
                log.info(
                    "request",
                    extra={
                        "route": path,
                        "method": request.method,
                        "status": response.status_code,
                        "ms": round(seconds * 1000, 2),
                    },
                )
            return response

    def error_response(error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(
            {"error": {"message": str(error), "type": error.kind, "param": error.param, "code": error.status}},
            status_code=error.status,
            headers=headers,
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    # Routes --------------------------------------------------------------------------------
    @app.post("/v1/search", response_model=SearchOut, responses={401: {}, 403: {}, 404: {}, 413: {}, 422: {}})
    async def search_route(request: Request) -> SearchOut:
        require(request, "search")
        query = _parse(SearchIn, await body(request))
        if len(query.query) > MAX_QUERY_CHARS:
            raise ApiError(413, "query", f"{len(query.query)} characters, at most {MAX_QUERY_CHARS}")
        service = state(request)
        trace_id: str = request.state.trace_id

        def run() -> Any:
            if not known_project(service.ws, query.project_id):
                raise ApiError(404, "project_id", f"no project {query.project_id!r}", "not_found_error")
            with trace(trace_id), service.encoder.expecting():
                return search(
                    service.ws,
                    query.query,
                    project_id=query.project_id,
                    user_id=query.user_id,
                    top_k=query.top_k,
                    encode=service.encoder.encode,
                    trace_id=trace_id,
                )

        try:
            response = await run_in_threadpool(run)
        except SearchError as error:
            field, _, reason = str(error).partition(": ")
            raise ApiError(422, field if reason else None, reason or str(error)) from None
        for step, seconds in response.seconds.items():
            service.metrics.search_steps.labels(step).observe(seconds)
        service.metrics.served(response.active_model_version, response.active_index_name)
        return SearchOut(
            req_id=response.req_id,
            chunks=[
                ChunkOut(
                    ref=c.ref, video_id=c.video_id, start_ms=c.start_ms, end_ms=c.end_ms, text=c.text, score=c.score
                )
                for c in response.chunks
            ],
            active_model_version=response.active_model_version,
            active_index_name=response.active_index_name,
            trace_id=trace_id,
        )

    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackOut,
        responses={401: {}, 403: {}, 404: {}, 410: {}, 413: {}, 422: {}},
    )
    async def feedback_route(request: Request) -> FeedbackOut:
        require(request, "feedback")
        feedback = _parse(FeedbackBody, await body(request))
        service = state(request)
        trace_id: str = request.state.trace_id
        given = FeedbackIn(feedback.req_id, feedback.user_id, feedback.rating, feedback.used_ids, feedback.project_id)
        try:
            accepted = await run_in_threadpool(accept_feedback, service.ws, given, trace_id=trace_id)
        except SnapshotNotFound as error:
            raise ApiError(404, "req_id", str(error).removeprefix("req_id: "), "not_found_error") from None
        except SnapshotExpired as error:
            raise ApiError(410, "req_id", str(error).removeprefix("req_id: ")) from None
        except FeedbackRejected as error:
            field, _, reason = str(error).partition(": ")
            raise ApiError(422, field, reason) from None
        if not accepted.duplicate:
            service.metrics.feedback.labels(accepted.event.rating, accepted.event.active_model_version).inc()
        return FeedbackOut(event_id=accepted.event.event_id, duplicate=accepted.duplicate, trace_id=trace_id)

    @app.post("/v1/embeddings", responses={401: {}, 403: {}, 404: {}, 413: {}, 422: {}})
    async def embeddings_route(request: Request) -> dict[str, Any]:
        require(request, "embeddings")
        asked = _parse(EmbeddingsIn, await body(request))
        texts = [asked.input] if isinstance(asked.input, str) else list(asked.input)
        if not texts:
            raise ApiError(422, "input", "must not be empty")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ApiError(413, "input", f"{len(texts)} texts, at most {MAX_EMBEDDING_INPUTS} per request")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ApiError(422, f"input.{i}", "must not be empty")
            if len(text) > MAX_QUERY_CHARS * 4:
                raise ApiError(413, f"input.{i}", f"{len(text)} characters, at most {MAX_QUERY_CHARS * 4}")
        service = state(request)

        def run() -> tuple[str, np.ndarray]:
            ws = service.ws
            with ws.db.read() as session:
                release = current_release(session)
                active = release.active_model_version if release is not None else None
                known = asked.model is None or session.get(ModelVersion, asked.model) is not None
            if asked.model is None or asked.model == active:
                if active is None:
                    raise ApiError(503, None, "no model serves yet (no ModelRelease)", "service_unavailable")
                try:
                    return active, ws.embeddings.embed(texts, active, Purpose.SEARCH)
                except EmbeddingRefused:  # the release switched between the read and the encode
                    raise ApiError(503, None, "the serving model changed during the request; retry") from None
            if not known:
                raise ApiError(404, "model", f"{asked.model!r} is not a registered model version", "not_found_error")
            # Any registered version when named explicitly (e.g. to compare a candidate): the
            # evaluation purpose, which the Metadata DB allows for every registered version.
            return asked.model, ws.embeddings.embed(texts, asked.model, Purpose.EVALUATION)

        model_version, vectors = await run_in_threadpool(run)
        if asked.dimensions is not None and asked.dimensions != vectors.shape[1]:
            raise ApiError(
                422, "dimensions", f"{model_version} embeds in {vectors.shape[1]} dimensions, not {asked.dimensions}"
            )
        tokens = sum(len(t.split()) for t in texts)  # an estimate: clients read it for accounting only

        def encoded(vector: np.ndarray) -> list[float] | str:
            if asked.encoding_format == "base64":
                return base64.b64encode(vector.astype("<f4").tobytes()).decode()
            return [float(x) for x in vector]

        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "model": model_version,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        return {"status": "alive", "endpoint_id": state(request).endpoint_id}

    @app.get("/readyz", responses={503: {}})
    async def readyz(request: Request) -> JSONResponse:
        service = state(request)
        ready = await run_in_threadpool(readiness, service.ws)
        service.metrics.ready.set(1 if ready.ready else 0)
        return JSONResponse(
            {
                "ready": ready.ready,
                "reason": ready.reason,
                "model_version": ready.model_version,
                "index_name": ready.index_name,
                "endpoint_id": service.endpoint_id,
            },
            status_code=200 if ready.ready else 503,
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        registry = state(request).metrics.registry
        return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    return app
