"""Stage 50 split into shards any live worker may claim (opslib.control.shards,
opslib.lifecycle.sharded_build): shared work, takeover of a dead worker's shard, nothing embedded
twice, and a taken-over worker records nothing."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import corpus_ready, ready_run

from opslib.control.leases import holding_release
from opslib.control.runs import get_run
from opslib.control.shards import claim_shard, plan_shards, shard_progress, shard_table
from opslib.corpus.indexing import indexed_chunk_ids, missing_from_index, servable_chunk_ids
from opslib.db.models import ReindexShard, utcnow
from opslib.execution.worker import Worker, WorkerReport
from opslib.infra.workspace import Workspace
from opslib.lifecycle.reindex import open_candidate, reindex_candidate
from opslib.lifecycle.sharded_build import work_shards


@pytest.fixture
def sharded(ws: Workspace, tiny_candidate_dir: Path) -> tuple[Workspace, int]:
    small = Workspace(ws.settings.model_copy(update={"reindex_shard_size": 8, "reindex_batch_size": 4}))
    corpus_ready(small)
    return small, ready_run(small, tiny_candidate_dir)


def _open(ws: Workspace, run_id: int) -> tuple[str, str]:
    with holding_release(ws.db, ws.settings, "test: open the candidate") as lease:
        open_candidate(ws, run_id, actor="t", fence=lease)
    run = get_run(ws.db, run_id)
    assert run.candidate_index_name and run.candidate_model_version
    ws.embeddings.load(run.candidate_model_version)
    return run.candidate_index_name, run.candidate_model_version


def test_a_dead_workers_shard_is_taken_over_and_nothing_is_embedded_twice(sharded) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = sharded
    index_name, version = _open(ws, run_id)
    ids = servable_chunk_ids(ws, by_length=True)
    assert plan_shards(ws.db, index_name, version, ids, 8) == (len(ids) + 7) // 8
    assert plan_shards(ws.db, index_name, version, ids[:3], 8) == (len(ids) + 7) // 8  # the plan is kept

    dead = claim_shard(ws.db, index_name, "dead-worker", stale_after_s=60)  # claims shard 0, then dies
    assert dead is not None and dead.shard_no == 0
    helper = work_shards(ws, index_name, "worker-b")  # takes every other shard, not the live-held one
    assert 0 not in helper.shards and helper.shards
    from opslib.ops.monitor import workspace_status

    shown = workspace_status(ws)["reindex_shards"]  # `opsbench status` shows the build's progress
    assert (shown["index_name"], shown["done"], shown["total"]) == (
        index_name,
        len(helper.shards),
        len(helper.shards) + 1,
    )
    with ws.db.transaction() as session:  # the dead worker's heartbeat is long gone
        row = session.get(ReindexShard, dead.shard_id)
        row.heartbeat_at = utcnow() - timedelta(minutes=5)

    report = reindex_candidate(ws, run_id)  # the driver takes over shard 0 and finishes
    table = {s["shard"]: s for s in shard_table(ws.db, index_name)}
    assert table[0]["done by"].endswith(":50_reindex_candidate") and table[0]["claims"] == 2
    assert all(table[n]["done by"] == "worker-b" for n in helper.shards)
    assert sum(s["embedded"] + s["reused"] for s in table.values()) == len(ids)  # each chunk once
    assert report.chunks == len(ids) and report.embedded == table[0]["embedded"]
    assert missing_from_index(ws, index_name) == [] and len(indexed_chunk_ids(ws, index_name)) == len(ids)
    assert shard_progress(ws.db, index_name, stale_after_s=60).finished


def test_a_taken_over_shard_worker_records_nothing(sharded) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = sharded
    index_name, version = _open(ws, run_id)
    plan_shards(ws.db, index_name, version, servable_chunk_ids(ws, by_length=True), 8)
    slow = claim_shard(ws.db, index_name, "paused-worker", stale_after_s=60)
    assert slow is not None
    later = utcnow() + timedelta(minutes=5)
    taker = claim_shard(ws.db, index_name, "worker-b", stale_after_s=60, now=later)
    assert taker is not None and (taker.shard_no, taker.token) == (slow.shard_no, slow.token + 1)

    from opslib.control.shards import complete_shard, shard_still_ours
    from opslib.corpus.indexing import index_chunks
    from opslib.infra.embedding import Purpose

    report = index_chunks(
        ws,
        slow.chunk_ids,
        index_name=index_name,
        model_version=version,
        purpose=Purpose.REINDEX,
        guard=shard_still_ours(slow),
    )
    assert report.stopped and report.refused == len(slow.chunk_ids)  # the paused worker wakes: refused
    assert not complete_shard(ws.db, slow, embedded=1, reused=0, seconds=1.0)
    assert indexed_chunk_ids(ws, index_name) == set()


def test_a_second_worker_shares_the_build_while_stage_50_runs(sharded, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import opslib.lifecycle.reindex as reindex_module
    import opslib.lifecycle.sharded_build as build_module

    ws, run_id = sharded
    planned, b_claimed = threading.Event(), threading.Event()
    plan, claim = reindex_module.plan_shards, build_module.claim_shard

    def plan_then_wait_for_b(*args, **kwargs):  # type: ignore[no-untyped-def]
        count = plan(*args, **kwargs)
        planned.set()
        assert b_claimed.wait(30)  # the driver starts only once the other worker holds a shard
        return count

    def claim_and_tell(db, index_name, holder, **kwargs):  # type: ignore[no-untyped-def]
        got = claim(db, index_name, holder, **kwargs)
        if holder == "worker-b" and got is not None:
            b_claimed.set()
        return got

    monkeypatch.setattr(reindex_module, "plan_shards", plan_then_wait_for_b)
    monkeypatch.setattr(build_module, "claim_shard", claim_and_tell)
    helper = WorkerReport()

    def second_worker() -> None:
        assert planned.wait(30)
        Worker(ws, name="worker-b").help_reindex(helper)

    thread = threading.Thread(target=second_worker)
    thread.start()
    report = reindex_candidate(ws, run_id)
    thread.join(60)
    done_by = {s["done by"] for s in report.shards}
    assert "worker-b" in done_by and any(d.endswith(":50_reindex_candidate") for d in done_by), report.shards
    assert report.shards_here < len(report.shards) and helper.shards
    assert missing_from_index(ws, get_run(ws.db, run_id).candidate_index_name or "") == []
