"""The whole lifecycle on the scale-out stack (issue 15): PostgreSQL, ``chroma run``, an S3 server
holding the object and model stores; two ``opsbench worker`` processes, one ``opsbench schedule``
and one ``opsbench serve``, each its own process. Traffic goes over HTTP, the scheduler builds the
dataset (20) and queues training, the workers train (30), evaluate (40), reindex in shards (50)
and cut over (60), an operator's rollback request is run (70) — every stage through its notebook.

``test_chaos_run`` is the same under fire: a seeded, bounded series of kill -9s of a random worker
or the scheduler (each with its notebook kernel) at random moments, each restarted at once, while
users keep searching and giving feedback. Afterwards every invariant holds; it prints the figures.
It runs in CI as its own step (``make chaos``), not in ``make test``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, _reset_postgres
from s3_server import S3Bucket
from scale_out import (
    FAST_TIMINGS,
    ScaleOutStack,
    Traffic,
    audit,
    completed_rollbacks,
    cut_over_runs,
    drive_loops,
    release_row,
    settle,
    stage_in_flight,
    traffic_queries,
    wait_for,
)
from sqlalchemy import select
from tiny_model import build_blind_model

from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.loader import load_corpus
from opslib.db.engine import forget_database
from opslib.db.models import ExecutionStatus, MLPipelineRun, ReindexShard, RunStatus, StageExecution, utcnow
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import records_from_corpus, register_evaluation_set
from opslib.lifecycle.feedback.intake import flush_outbox
from opslib.lifecycle.feedback.simulate import simulate_traffic
from opslib.ops.bootstrap import init_workspace
from opslib.service.client import EndpointChannel
from opslib.settings import Settings

CORPUS = "stdlib"
CHAOS_KILLS = 20
CHAOS_SEED = 15
# Kills per (loop, stage in flight): spent, the stage is left to finish, so the kills spread over
# every stage of the loop (20 … 70, and the moments between stages) instead of all landing in the
# first long one.
KILLS_PER_STAGE = 4
KILL_EVERY_S = (1.0, 5.0)  # the next kill comes a uniformly random time after the last one
CHAOS_TIMEOUT_S = 1200

pytestmark = [
    pytest.mark.slow,
    pytest.mark.on_postgresql,  # counted with the PostgreSQL half: CI fails if it is skipped
    pytest.mark.skipif(not POSTGRES_URL, reason="the scale-out stack runs on PostgreSQL: set OPS_TEST_POSTGRES_URL"),
]


@pytest.fixture
def scale_out_settings(
    tmp_path: Path, postgres_url: str, chroma_server: tuple[str, int], s3_bucket: S3Bucket, tiny_model_dir: Path
) -> Settings:
    forget_database(postgres_url)
    _reset_postgres(postgres_url)
    host, port = chroma_server
    return Settings(
        workspace=tmp_path / "ws",
        runs_dir=tmp_path / "runs",
        db_url=postgres_url,
        chroma_host=host,
        chroma_port=port,
        object_store_url=s3_bucket.object_store_url,
        model_store_url=s3_bucket.model_store_url,
        # Blind (reads no text), so the candidate trained from feedback PASSes every time.
        base_model_path=build_blind_model(tiny_model_dir, tmp_path / "tiny-blind"),
        base_model_version=f"tiny-{uuid.uuid4().hex[:8]}",  # its own collections on the shared server
        reindex_shard_size=200,  # 755 chunks → 4 shards for the two workers to share
        auto_cutover=True,
        log_level="INFO",
        **FAST_TIMINGS,
    )


def _prepare(ws: Workspace, stack: ScaleOutStack) -> Traffic:
    """Bootstrap, the built-in corpus, an evaluation set, the endpoint and a week of traffic over
    HTTP; returns a ``Traffic`` (not started) for more of it."""
    init_workspace(ws)
    load_corpus(ws, build_demo_corpus(CORPUS))
    register_evaluation_set(ws, records_from_corpus(ws, CORPUS), source=f"corpus {CORPUS}: reserved queries")
    client = stack.serve()
    simulate_traffic(
        ws,
        CORPUS,
        requests=60,
        seed=7,
        start=utcnow() - timedelta(days=6),
        spread=timedelta(days=6),
        channel=EndpointChannel(client),
    )
    flush_outbox(ws, force=True)
    return Traffic(client, traffic_queries(ws, CORPUS))


def _start_services(stack: ScaleOutStack) -> None:
    """Two workers and the scheduler. The dataset schedule fires once, at the first minute after
    the traffic was flushed (a scheduled dataset's source window ends at its tick), and the
    scheduler starts once that minute has come; the weekly training tick is already due, so the
    scheduler's first pass builds the dataset, then queues the training request."""
    tick = (utcnow() + timedelta(minutes=1)).replace(second=0, microsecond=0)
    cron = f"{tick.minute} {tick.hour} {tick.day} {tick.month} *"
    stack.start("worker-a", "worker")
    stack.start("worker-b", "worker")
    time.sleep(max(0.0, (tick - utcnow()).total_seconds()) + 0.5)
    stack.start("scheduler", "schedule", {"OPS_DATASET_SCHEDULE": cron, "OPS_SCHEDULE_TIMEZONE": "UTC"})


def test_the_whole_lifecycle_on_the_scale_out_stack(scale_out_settings: Settings, s3_bucket: S3Bucket) -> None:
    ws = Workspace(scale_out_settings)
    stack = ScaleOutStack(scale_out_settings, s3_bucket.env, scale_out_settings.workspace / "logs")
    stack.logs.mkdir(parents=True, exist_ok=True)
    try:
        traffic = _prepare(ws, stack)
        base = release_row(ws).active_model_version
        _start_services(stack)
        wait_for("a candidate cut over", lambda: bool(cut_over_runs(ws)), stack, timeout_s=600)
        run_id = cut_over_runs(ws)[0]
        with ws.db.read() as session:
            candidate = session.get(MLPipelineRun, run_id).candidate_model_version  # type: ignore[union-attr]
        # the endpoint follows the release row: the next searches are the candidate's
        wait_for("the endpoint serving the candidate", lambda: _served_by(traffic) == candidate, stack, 60)
        drive_loops(ws, stack, until=lambda: completed_rollbacks(ws) >= 1, timeout_s=300)
        wait_for("the endpoint serving the base model again", lambda: _served_by(traffic) == base, stack, 60)
        settle(ws, stack)
    finally:
        stack.stop()
    result = audit(ws, traffic.acknowledged)
    assert result.clean, result
    with ws.db.read() as session:
        executions = list(session.scalars(select(StageExecution).order_by(StageExecution.id)))
        run = session.get(MLPipelineRun, run_id)
        shard_workers = {s.done_by for s in session.scalars(select(ReindexShard))}
    assert run is not None and run.status is RunStatus.READY_FOR_RELEASE
    stages = Counter(e.stage for e in executions if e.status is ExecutionStatus.SUCCEEDED)
    assert all(
        stages[s] >= 1
        for s in (
            "20_build_dataset",
            "30_train_candidate",
            "40_evaluate_candidate",
            "50_reindex_candidate",
            "60_cutover",
            "70_rollback",
        )
    ), stages
    assert {e.status for e in executions} == {ExecutionStatus.SUCCEEDED}, [(e.stage, e.error) for e in executions]
    assert None not in shard_workers
    # Everything durable went to S3: datasets, models, index snapshots, feedback; none of it locally.
    keys = s3_bucket.keys()
    for prefix in ("objects/datasets/", "objects/raw_logs/", "objects/index_snapshots/", f"models/{candidate}/"):
        assert any(k.startswith(prefix) for k in keys), (prefix, keys[:20])
    assert not (scale_out_settings.workspace / "objects").exists()
    assert not (scale_out_settings.workspace / "models").exists()


def _by_stage(in_flight: Counter[tuple[int, str]]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for (_, stage), n in in_flight.items():
        totals[stage] += n
    return totals


def _served_by(traffic: Traffic) -> str:
    query, project = traffic.queries[0]
    return str(traffic.client.search(query, project, "scale-out-check")["active_model_version"])


@pytest.mark.chaos
@pytest.mark.timeout(CHAOS_TIMEOUT_S + 600)  # the loop's own deadline fails first, with the state it saw
def test_chaos_run(scale_out_settings: Settings, s3_bucket: S3Bucket) -> None:
    ws = Workspace(scale_out_settings)
    stack = ScaleOutStack(scale_out_settings, s3_bucket.env, scale_out_settings.workspace / "logs")
    stack.logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(CHAOS_SEED)
    kills: Counter[str] = Counter()
    in_flight: Counter[tuple[int, str]] = Counter()  # kills per (loop, stage running)
    next_kill = [0.0]
    started = time.monotonic()
    traffic = None
    try:
        traffic = _prepare(ws, stack)
        _start_services(stack)
        traffic.start()
        next_kill[0] = time.monotonic() + rng.uniform(*KILL_EVERY_S)

        def killer() -> bool:
            """One kill -9 when its (seeded, random) moment has come, unless the stage in flight
            has had its share in this loop; True once all of them are done."""
            if sum(kills.values()) >= CHAOS_KILLS:
                return True
            if time.monotonic() >= next_kill[0]:
                moment = (completed_rollbacks(ws), stage_in_flight(ws))
                victim = rng.choice(["worker-a", "worker-b", "scheduler"])
                if in_flight[moment] < KILLS_PER_STAGE:
                    stack.kill(victim)
                    stack.restart(victim)  # as a supervisor (systemd, Kubernetes) would
                    kills[victim] += 1
                    in_flight[moment] += 1
                next_kill[0] = time.monotonic() + rng.uniform(*KILL_EVERY_S)
            return False

        # Kill while the loop runs; then let it finish at least one full loop with no more kills.
        drive_loops(ws, stack, until=lambda: killer() and completed_rollbacks(ws) >= 1, timeout_s=CHAOS_TIMEOUT_S)
        settle(ws, stack, timeout_s=300)
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
    result = audit(ws, traffic.acknowledged)
    with ws.db.read() as session:
        runs = Counter(r.status.value for r in session.scalars(select(MLPipelineRun)))
    print(
        "\nchaos run (seed {seed}): kills survived {kills} ({by}) · invariant violations {violations} · "
        "duplicate effects {duplicates} · records left unfinished {unfinished} · acknowledged feedback lost "
        "{lost} of {acked} · feedback refused {refused} · searches failed {failed} of {searches} · loops completed {loops} "
        "(cut over {cutovers}) · runs {runs} · {wall:.0f} s".format(
            seed=CHAOS_SEED,
            kills=sum(kills.values()),
            by=", ".join(f"{k} {v}" for k, v in sorted(kills.items()))
            + "; during "
            + ", ".join(f"{stage} {n}" for stage, n in sorted(_by_stage(in_flight).items())),
            violations=len(result.invariant_violations),
            duplicates=len(result.duplicate_effects),
            unfinished=len(result.unfinished),
            lost=len(result.lost_feedback),
            acked=len(traffic.acknowledged),
            refused=len(traffic.refused_feedback),
            failed=len(traffic.failed_searches),
            searches=traffic.searches,
            loops=completed_rollbacks(ws),
            cutovers=len(cut_over_runs(ws)),
            runs=dict(runs),
            wall=time.monotonic() - started,
        )
    )
    assert sum(kills.values()) >= CHAOS_KILLS
    assert result.clean, result
    assert traffic.failed_searches == [], traffic.failed_searches[:5]
    assert traffic.refused_feedback == [], traffic.refused_feedback[:5]
