"""What keeps a serving endpoint in step with the Metadata DB, in one background thread:

* **follow the release row** — every ``serve_follow_interval_s`` it reads the row and loads (with
  its smoke encode) every model that serves or may serve next: the active one, the candidate while
  the release is CANDIDATE_REINDEXING, the rollback target while it is ROLLBACK_PREPARING. Search
  reads the release row per request, so it answers with the new combination as soon as the switch
  commits — and since the cutover waits until every live endpoint reports the candidate loaded,
  the new model is already in memory then: no request waits on a load or mixes two models;
* **follow the chunks** — the keyword index applies the chunk change log (built from every chunk
  at start, before the server takes requests), so a search has little or nothing left to apply;
* **report the endpoint** — every ``endpoint_heartbeat_s`` its ``serving_endpoints`` row: loaded
  versions, what it serves, readiness;
* **flush feedback** — acknowledged feedback goes from the outbox to ``raw_logs/`` once a batch is
  due (``feedback_batch_size`` events or ``feedback_flush_age_s`` old), and all of it on stop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from opslib.control.endpoints import EndpointReport, report_endpoint, stop_endpoint
from opslib.control.release import current_release
from opslib.db.models import ModelRelease, ReleaseStatus, VectorIndexEntry
from opslib.infra.keyword_index import keyword_index_for
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.intake import flush_outbox

log = get_logger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    model_version: str | None = None
    index_name: str | None = None


def readiness(ws: Workspace) -> Readiness:
    """Ready iff the active model is loaded here (smoke encode passed) and the active index exists
    holding as many vectors as the Metadata DB records for it."""
    with ws.db.read() as session:
        release = current_release(session)
        if release is None:
            return Readiness(False, "no ModelRelease yet: bootstrap the workspace (`opsbench init`)")
        model, index = release.active_model_version, release.active_index_name
        entries = int(
            session.scalar(
                select(func.count()).select_from(VectorIndexEntry).where(VectorIndexEntry.index_name == index)
            )
            or 0
        )
    if not ws.embeddings.is_ready(model):
        return Readiness(False, f"the active model {model} is not loaded here yet", model, index)
    if not ws.vectors.exists(index):
        return Readiness(False, f"the active index {index} does not exist in the vector store", model, index)
    count = ws.vectors.count(index)
    if count != entries:
        return Readiness(
            False, f"the active index {index} holds {count} vectors; the Metadata DB records {entries}", model, index
        )
    return Readiness(True, "ready", model, index)


def models_to_hold(release: ModelRelease) -> list[str]:
    """The versions an endpoint keeps loaded: what serves, and what may serve next."""
    wanted = [release.active_model_version]
    if release.release_status is ReleaseStatus.CANDIDATE_REINDEXING and release.candidate_model_version:
        wanted.append(release.candidate_model_version)
    if release.release_status is ReleaseStatus.ROLLBACK_PREPARING and release.rollback_snapshot_active_model_version:
        wanted.append(release.rollback_snapshot_active_model_version)
    return list(dict.fromkeys(wanted))


class Follower:
    def __init__(self, ws: Workspace, endpoint_id: str, address: str) -> None:
        self.ws = ws
        self.endpoint_id = endpoint_id
        self.address = address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="release-follower", daemon=True)
        self.last_error: str | None = None

    def start(self) -> None:
        self.follow_once()  # the active model loaded before the server takes requests
        self.report_once()
        flush_outbox(self.ws, force=True)  # what a killed replica acknowledged and never wrote
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            flush_outbox(self.ws, force=True)
        finally:
            stop_endpoint(self.ws.db, self.endpoint_id)

    def follow_once(self) -> None:
        with self.ws.db.read() as session:
            release = current_release(session)
            wanted = models_to_hold(release) if release is not None else []
            keyword_index_for(session).refresh(session)
        for model_version in wanted:
            if not self.ws.embeddings.is_ready(model_version):
                started = time.perf_counter()
                self.ws.embeddings.load(model_version)
                log.info(
                    "model preloaded",
                    extra={"model_version": model_version, "seconds": round(time.perf_counter() - started, 3)},
                )

    def report_once(self) -> Readiness:
        state = readiness(self.ws)
        loaded = [m.model_version for m in self.ws.embeddings.status() if m.ready]
        report_endpoint(
            self.ws.db,
            EndpointReport(
                self.endpoint_id,
                self.address,
                loaded,
                state.model_version,
                state.index_name,
                state.ready,
                None if state.ready else state.reason,
            ),
        )
        return state

    def _loop(self) -> None:
        settings = self.ws.settings
        next_report = time.monotonic() + settings.endpoint_heartbeat_s
        while not self._stop.wait(settings.serve_follow_interval_s):
            try:
                self.follow_once()
                if time.monotonic() >= next_report:
                    self.report_once()
                    flush_outbox(self.ws)
                    next_report = time.monotonic() + settings.endpoint_heartbeat_s
                self.last_error = None
            except Exception as error:  # keep following: a DB blip must not stop the endpoint for good
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("release follower tick failed")
