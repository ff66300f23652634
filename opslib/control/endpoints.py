"""Serving endpoints as they report themselves: the ``serving_endpoints`` rows.

Each ``opsbench serve`` replica upserts its row on start, every heartbeat (what it has loaded,
what it serves, whether it is ready) and on a clean stop. An endpoint is *live* while its heartbeat
is younger than ``settings.endpoint_stale_after_s`` and it has not stopped; a killed replica simply
ages out. The release stages ask ``lacking`` before they switch: a cutover waits (bounded) until
every live endpoint has loaded the candidate, so a switch never lands on a replica that cannot
serve it. With no endpoint registered nothing waits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from opslib.db.engine import Database
from opslib.db.models import ServingEndpoint, utcnow


@dataclass(frozen=True)
class EndpointReport:
    endpoint_id: str
    address: str
    loaded_versions: list[str]
    serving_model_version: str | None
    serving_index_name: str | None
    ready: bool
    ready_reason: str | None


def report_endpoint(db: Database, report: EndpointReport) -> None:
    """Upsert the endpoint's row with a fresh heartbeat (a restarted replica reuses its id)."""
    now = utcnow()
    with db.transaction() as session:
        row = session.get(ServingEndpoint, report.endpoint_id)
        if row is None:
            row = ServingEndpoint(endpoint_id=report.endpoint_id, started_at=now)
            session.add(row)
        elif row.stopped_at is not None:
            row.started_at, row.stopped_at = now, None
        row.address = report.address
        row.loaded_versions = sorted(report.loaded_versions)
        row.serving_model_version = report.serving_model_version
        row.serving_index_name = report.serving_index_name
        row.ready, row.ready_reason = report.ready, report.ready_reason
        row.heartbeat_at = now


def stop_endpoint(db: Database, endpoint_id: str) -> None:
    with db.transaction() as session:
        row = session.get(ServingEndpoint, endpoint_id)
        if row is not None:
            row.stopped_at = utcnow()
            row.ready = False
            row.ready_reason = "stopped"


def live_endpoints(session: Session, stale_after_s: float) -> Sequence[ServingEndpoint]:
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    return session.scalars(
        select(ServingEndpoint)
        .where(ServingEndpoint.stopped_at.is_(None), ServingEndpoint.heartbeat_at >= cutoff)
        .order_by(ServingEndpoint.endpoint_id)
    ).all()


def lacking(db: Database, model_version: str, stale_after_s: float) -> list[str]:
    """Live endpoints that have not loaded ``model_version`` (empty: every one has, or none is live)."""
    with db.read() as session:
        return [
            e.endpoint_id
            for e in live_endpoints(session, stale_after_s)
            if model_version not in (e.loaded_versions or [])
        ]


def wait_until_loaded(
    db: Database, model_version: str, *, stale_after_s: float, timeout_s: float, poll_s: float = 0.5
) -> list[str]:
    """Poll until every live endpoint has loaded ``model_version`` or ``timeout_s`` passed;
    returns the endpoints still lacking it (empty on success)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = lacking(db, model_version, stale_after_s)
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
