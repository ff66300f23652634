"""Registered serving endpoints and the release stages' wait for them (no server process here:
the rows are what the stages read; tests/service runs real servers)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from helpers import corpus_ready, ready_run
from sqlalchemy import update

from opslib.control.endpoints import EndpointReport, lacking, report_endpoint, stop_endpoint, wait_until_loaded
from opslib.control.messages import new_rollback_request
from opslib.control.release import current_release
from opslib.db.models import ServingEndpoint, utcnow
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import CutoverRefused, cutover
from opslib.lifecycle.reindex import reindex_candidate
from opslib.lifecycle.rollback import roll_back


def _endpoint(ws: Workspace, endpoint_id: str, loaded: list[str]) -> None:
    report_endpoint(ws.db, EndpointReport(endpoint_id, f"http://{endpoint_id}", loaded, loaded[0], "idx", True, None))


def _age(ws: Workspace, endpoint_id: str, seconds: float) -> None:
    with ws.db.transaction() as session:
        session.execute(
            update(ServingEndpoint)
            .where(ServingEndpoint.endpoint_id == endpoint_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_only_live_endpoints_count(ws: Workspace) -> None:
    stale = ws.settings.endpoint_stale_after_s
    assert lacking(ws.db, "m2", stale) == []  # none registered: nothing to wait for
    _endpoint(ws, "a:1", ["m1"])
    _endpoint(ws, "b:1", ["m1", "m2"])
    _endpoint(ws, "c:1", ["m1"])
    assert lacking(ws.db, "m2", stale) == ["a:1", "c:1"]
    _age(ws, "a:1", stale + 1)  # killed: its heartbeat aged out
    stop_endpoint(ws.db, "c:1")  # stopped cleanly
    assert lacking(ws.db, "m2", stale) == []
    _endpoint(ws, "c:1", ["m1"])  # restarted under the same id: live again
    with ws.db.read() as session:
        row = session.get(ServingEndpoint, "c:1")
        assert row is not None and row.stopped_at is None and row.ready
    assert wait_until_loaded(ws.db, "m2", stale_after_s=stale, timeout_s=0.3, poll_s=0.1) == ["c:1"]


@pytest.fixture
def short_wait(settings, tiny_candidate_dir: Path) -> tuple[Workspace, int]:  # type: ignore[no-untyped-def]
    from opslib.ops.bootstrap import init_workspace

    ws = Workspace(settings.model_copy(update={"endpoint_wait_s": 0.3}))
    init_workspace(ws)
    corpus_ready(ws)
    return ws, ready_run(ws, tiny_candidate_dir)


def test_a_cutover_waits_for_live_endpoints_and_refuses_without_them(short_wait) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = short_wait
    reindex_candidate(ws, run_id)
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None
        base, candidate = release.active_model_version, release.candidate_model_version
    assert candidate
    _endpoint(ws, "lagging:8000", [base])
    with pytest.raises(CutoverRefused, match=r"serving endpoints \['lagging:8000'\] have not loaded the candidate"):
        cutover(ws, run_id)
    with ws.db.read() as session:
        assert current_release(session).active_model_version == base  # type: ignore[union-attr]
    _endpoint(ws, "lagging:8000", [base, candidate])  # it preloaded the candidate
    report = cutover(ws, run_id)
    assert report.release_after and report.release_after["active_model_version"] == candidate

    # A rollback does not give up on a lagging endpoint (a bad model is serving): it switches and says so.
    _endpoint(ws, "lagging:8000", [candidate])
    rolled = roll_back(ws, new_rollback_request(candidate, trace_id="rb-lag", reason="test"))
    assert rolled.outcome == "rolled back" and rolled.endpoints_lagging == ["lagging:8000"]
    with ws.db.read() as session:
        assert current_release(session).active_model_version == base  # type: ignore[union-attr]
