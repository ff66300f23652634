"""Run control: the transition table, the slots and their races, redelivery."""

import multiprocessing
import threading
from datetime import timedelta

import pytest
from helpers import dataset_row
from sqlalchemy import select

from opslib.control.runs import (
    TRANSITIONS,
    RunError,
    check_transition,
    claim_stalled,
    fail_run,
    get_run,
    heartbeat,
    mark_failed,
    mark_ready,
    request_run,
    start_next_pending,
)
from opslib.db.models import FailureType, MLPipelineRun, RunStage, RunStatus, utcnow
from opslib.infra.workspace import Workspace
from opslib.settings import Settings


@pytest.fixture
def rws(ws: Workspace) -> Workspace:
    """A workspace with one eligible dataset row (run control only reads the row)."""
    dataset_row(ws)
    return ws


def _runs(ws: Workspace) -> list[MLPipelineRun]:
    with ws.db.read() as session:
        return list(session.scalars(select(MLPipelineRun).order_by(MLPipelineRun.id)))


def test_no_eligible_dataset_means_no_run(ws: Workspace) -> None:
    outcome = request_run(ws.db, trigger_source="manual", trace_id="t")
    assert outcome.run_id is None and "no eligible training dataset" in outcome.reason
    assert _runs(ws) == []


def test_first_request_starts_a_run_with_everything_fixed(rws: Workspace) -> None:
    outcome = request_run(rws.db, trigger_source="schedule", trace_id="t1")
    assert outcome.created and outcome.status is RunStatus.RUNNING
    run = get_run(rws.db, outcome.run_id)
    assert run.dataset_version == "20261201-aaaaaaaaaaaa"
    assert run.baseline_model_version == "tiny-base"  # the active model at start
    assert run.candidate_model_version == f"cand-r{run.id:05d}-20261201-aaaaaaaaaaaa"
    assert run.candidate_index_name == f"idx-{run.candidate_model_version}"
    assert run.heartbeat_at is not None and run.trace_id == "t1"


def test_newest_pending_wins_and_older_are_superseded(rws: Workspace) -> None:
    first = request_run(rws.db, trigger_source="manual", trace_id="a")
    second = request_run(rws.db, trigger_source="manual", trace_id="b")
    third = request_run(rws.db, trigger_source="manual", trace_id="c")
    assert (first.status, second.status, third.status) == (RunStatus.RUNNING, RunStatus.PENDING, RunStatus.PENDING)
    runs = {r.id: r for r in _runs(rws)}
    assert runs[second.run_id].status is RunStatus.SUPERSEDED
    assert runs[second.run_id].superseded_by_run_id == third.run_id
    assert runs[third.run_id].dataset_version is None  # fixed when it starts
    assert start_next_pending(rws.db) is None  # the active slot is taken
    with rws.db.transaction() as session:
        mark_failed(session, first.run_id, stage=RunStage.TRAINING, failure_type=FailureType.ERROR, reason="x")
    assert start_next_pending(rws.db) == third.run_id
    started = get_run(rws.db, third.run_id)
    assert started.status is RunStatus.RUNNING and started.dataset_version == "20261201-aaaaaaaaaaaa"
    assert start_next_pending(rws.db) is None


def test_a_new_request_beats_a_pending_run_left_waiting_by_a_run_that_ended(rws: Workspace) -> None:
    first = request_run(rws.db, trigger_source="manual", trace_id="a")
    waiting = request_run(rws.db, trigger_source="manual", trace_id="b")
    fail_run(rws.db, first.run_id, stage=RunStage.TRAINING, failure_type=FailureType.ERROR, reason="stalled")
    # The slot is free but the pending run has not been started yet; a newer request arrives.
    newest = request_run(rws.db, trigger_source="manual", trace_id="c")
    assert newest.status is RunStatus.RUNNING
    runs = {r.id: r for r in _runs(rws)}
    assert runs[waiting.run_id].status is RunStatus.SUPERSEDED
    assert runs[waiting.run_id].superseded_by_run_id == newest.run_id
    assert start_next_pending(rws.db) is None  # nothing older sneaks in after it


def test_a_redelivered_message_never_creates_a_second_run(rws: Workspace) -> None:
    from opslib.control.messages import new_training_request
    from opslib.control.queue import publish

    message_id = publish(rws.db, new_training_request())
    first = request_run(rws.db, trigger_source="manual", trace_id="t", request_message_id=message_id)
    again = request_run(rws.db, trigger_source="manual", trace_id="t", request_message_id=message_id)
    assert first.created and not again.created and again.run_id == first.run_id
    assert len(_runs(rws)) == 1


def test_the_transition_table_refuses_everything_else() -> None:
    statuses = [None, *RunStatus]
    for current in statuses:
        for target in RunStatus:
            if (current, target) in TRANSITIONS:
                assert check_transition(current, target)
            else:
                with pytest.raises(RunError, match="not allowed"):
                    check_transition(current, target)


def test_ready_and_failed_need_a_running_run(rws: Workspace) -> None:
    run_id = request_run(rws.db, trigger_source="manual", trace_id="t").run_id
    with rws.db.transaction() as session:
        mark_ready(session, run_id, evaluation_id=1)
    for action in (
        lambda s: mark_ready(s, run_id, evaluation_id=2),
        lambda s: mark_failed(s, run_id, stage=RunStage.EVALUATION, failure_type=FailureType.FAIL, reason="r"),
    ):
        with pytest.raises(RunError), rws.db.transaction() as session:
            action(session)
    run = get_run(rws.db, run_id)
    assert run.status is RunStatus.READY_FOR_RELEASE and run.evaluation_id == 1  # unchanged by the refusals
    # A released run can still fail in its release stages.
    assert fail_run(rws.db, run_id, stage=RunStage.REINDEX, failure_type=FailureType.ERROR, reason="index down")
    assert get_run(rws.db, run_id).failed_stage is RunStage.REINDEX
    assert not fail_run(rws.db, run_id, stage=RunStage.TRAINING, failure_type=FailureType.ERROR, reason="again")
    with pytest.raises(RunError, match="no such run"), rws.db.transaction() as session:
        mark_ready(session, 999, evaluation_id=1)


def test_heartbeat_and_stalled_claims(rws: Workspace) -> None:
    run_id = request_run(rws.db, trigger_source="manual", trace_id="t").run_id
    assert heartbeat(rws.db, run_id)
    assert not claim_stalled(rws.db, run_id, stall_after_s=60)  # fresh
    later = utcnow() + timedelta(minutes=5)
    assert claim_stalled(rws.db, run_id, stall_after_s=60, now=later)
    assert not claim_stalled(rws.db, run_id, stall_after_s=60, now=later)  # only one claimer wins
    assert fail_run(rws.db, run_id, stage=RunStage.TRAINING, failure_type=FailureType.ERROR, reason="x")
    assert not heartbeat(rws.db, run_id)


def _request_in_process(settings_json: str, n: int, barrier, errors) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.model_validate_json(settings_json)
    ws = Workspace(settings)
    barrier.wait()
    try:
        for i in range(n):
            request_run(ws.db, trigger_source="schedule", trace_id=f"proc-{i}")
    except Exception as exc:  # pragma: no cover - reported to the parent
        errors.put(repr(exc))


def test_32_concurrent_requests_threads_and_processes(rws: Workspace) -> None:
    errors: list[str] = []
    barrier = threading.Barrier(16)

    def thread_request(i: int) -> None:
        barrier.wait()
        try:
            request_run(rws.db, trigger_source="manual", trace_id=f"thread-{i}")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=thread_request, args=(i,)) for i in range(16)]
    context = multiprocessing.get_context("spawn")
    proc_barrier, proc_errors = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_request_in_process, args=(rws.settings.model_dump_json(), 4, proc_barrier, proc_errors))
        for _ in range(4)
    ]
    for p in processes:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    while not proc_errors.empty():
        errors.append(proc_errors.get())
    assert errors == []
    runs = _runs(rws)
    assert len(runs) == 32
    by_status = {s: [r for r in runs if r.status is s] for s in RunStatus}
    assert len(by_status[RunStatus.RUNNING]) == 1
    assert len(by_status[RunStatus.PENDING]) == 1
    assert len(by_status[RunStatus.SUPERSEDED]) == 30
    ids = {r.id for r in runs}
    assert all(r.superseded_by_run_id in ids for r in by_status[RunStatus.SUPERSEDED])
