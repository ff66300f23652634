"""Guarded operator actions: role, reason, typed confirmation, guard; audit with the effect."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import corpus_ready, dataset_row, ready_run
from sqlalchemy import select

from opslib.control.messages import parse_control_message
from opslib.db.models import AuditLog, MLPipelineRun, OpsMessage
from opslib.infra.workspace import Workspace
from opslib.ops import actions
from opslib.ops.actions import ActionRefused
from opslib.settings import Settings

DATASET = "20261201-aaaaaaaaaaaa"


def _as(ws: Workspace, role: str = "admin", operator: str = "ana") -> Workspace:
    return Workspace(Settings(**{**ws.settings.model_dump(), "operator": operator, "operator_role": role}))


def _eligible_dataset(ws: Workspace) -> None:
    dataset_row(ws, DATASET)


def _audit(ws: Workspace) -> list[AuditLog]:
    with ws.db.read() as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))


def _messages(ws: Workspace) -> list[OpsMessage]:
    with ws.db.read() as session:
        return list(session.scalars(select(OpsMessage).order_by(OpsMessage.id)))


def test_retrigger_training_queues_the_request_with_its_audit_row(ws: Workspace) -> None:
    _eligible_dataset(ws)
    admin = _as(ws)
    preview = actions.preview_training(admin)
    assert preview.possible and preview.target == DATASET and "tiny-base" in preview.summary
    result = actions.retrigger_training(admin, confirm=DATASET, reason="new feedback since Monday")
    (message,) = _messages(admin)
    request = parse_control_message(message.payload, 1)
    assert message.id == result.message_id and request.trigger_source == "manual"
    assert (request.requested_by, request.reason, request.trace_id) == (
        "ana",
        "new feedback since Monday",
        result.trace_id,
    )
    (row,) = _audit(admin)
    assert (row.operator, row.role, row.action, row.target) == ("ana", "admin", "retrigger-training", DATASET)
    assert row.reason == "new feedback since Monday" and f"message {message.id}" in row.result
    assert row.trace_id == result.trace_id == message.trace_id


@pytest.mark.parametrize(
    ("role", "confirm", "reason", "why"),
    [
        ("operator", DATASET, "a reason", "needs 'admin'"),
        ("viewer", DATASET, "a reason", "needs 'admin'"),
        ("admin", DATASET, "", "a reason is required"),
        ("admin", "20261130-bbbbbbbbbbbb", "a reason", "does not match"),
    ],
)
def test_refusals_change_nothing_and_are_audited(ws: Workspace, role: str, confirm: str, reason: str, why: str) -> None:
    _eligible_dataset(ws)
    who = _as(ws, role=role)
    with pytest.raises(ActionRefused, match=why):
        actions.retrigger_training(who, confirm=confirm, reason=reason)
    assert _messages(who) == []
    (row,) = _audit(who)
    assert row.result.startswith("refused: ") and why in row.result and row.role == role


def test_training_without_an_eligible_dataset_is_refused(ws: Workspace) -> None:
    admin = _as(ws)
    preview = actions.preview_training(admin)
    assert not preview.possible and "no eligible training dataset" in (preview.blocker or "")
    with pytest.raises(ActionRefused, match="no eligible training dataset"):
        actions.retrigger_training(admin, confirm="anything", reason="try")
    assert _messages(admin) == [] and len(_audit(admin)) == 1


def test_the_effect_and_its_audit_row_commit_together(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    _eligible_dataset(ws)
    admin = _as(ws)

    def broken_audit(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(actions, "_audit", broken_audit)
    with pytest.raises(RuntimeError):
        actions.retrigger_training(admin, confirm=DATASET, reason="try")
    assert _messages(admin) == []  # the message was rolled back with the failed audit row


def test_rollback_needs_a_snapshot_then_queues_a_request_expecting_the_active(
    ws: Workspace, tiny_candidate_dir: Path
) -> None:
    from opslib.lifecycle.cutover import cutover
    from opslib.lifecycle.reindex import reindex_candidate

    admin = _as(ws)
    assert "no rollback snapshot" in (actions.preview_rollback(admin).blocker or "")
    with pytest.raises(ActionRefused, match="no rollback snapshot"):
        actions.request_rollback(admin, confirm="tiny-base", reason="bad answers")
    corpus_ready(admin)
    run_id = ready_run(admin, tiny_candidate_dir)
    reindex_candidate(admin, run_id)
    cutover(admin, run_id)
    with admin.db.read() as session:
        candidate = session.get(MLPipelineRun, run_id).candidate_model_version
    preview = actions.preview_rollback(admin)
    assert preview.target == candidate and "to tiny-base" in preview.summary
    with pytest.raises(ActionRefused, match="does not match"):
        actions.request_rollback(admin, confirm="tiny-base", reason="typed the wrong version")
    result = actions.request_rollback(admin, confirm=candidate, reason="bad answers since the switch")
    message = _messages(admin)[-1]
    request = parse_control_message(message.payload, 1)
    assert message.id == result.message_id and request.expected_active_model_version == candidate
    assert [r.result.split(":")[0] for r in _audit(admin)] == [
        "refused",
        "refused",
        "queued ROLLBACK_REQUEST message 1",
    ]


def test_promote_approves_a_ready_run_once(ws: Workspace, tiny_candidate_dir: Path) -> None:

    admin = _as(ws)
    corpus_ready(admin)
    run_id = ready_run(admin, tiny_candidate_dir)
    assert actions.promotable_runs(admin) == [run_id]
    preview = actions.preview_promote(admin, run_id)
    with admin.db.read() as session:
        candidate = session.get(MLPipelineRun, run_id).candidate_model_version
    assert preview.target == candidate
    result = actions.promote_run(admin, run_id, confirm=candidate, reason="report reviewed")
    with admin.db.read() as session:
        run = session.get(MLPipelineRun, run_id)
        assert run.promoted_by == "ana" and run.promoted_at is not None
    assert "approved for release" in result.result and actions.promotable_runs(admin) == []
    with pytest.raises(ActionRefused, match="already promoted by ana"):
        actions.promote_run(admin, run_id, confirm=candidate, reason="again")
    with pytest.raises(ActionRefused, match="no such run"):
        actions.promote_run(admin, 999, confirm=candidate, reason="typo")
    assert [r.result.split(":")[0] for r in _audit(admin)][1:] == ["refused", "refused"]


@pytest.mark.slow
def test_generate_dataset_runs_the_stage_and_audits_it_with_the_execution(ws: Workspace) -> None:
    from opslib.db.models import StageExecution

    admin = _as(ws)
    preview = actions.preview_dataset(admin)
    started = []
    result = actions.generate_dataset(
        admin, confirm=preview.target or "", reason="backfill after outage", on_started=started.append
    )
    (row,) = _audit(admin)
    with admin.db.read() as session:
        execution = session.get(StageExecution, result.execution_id)
    assert execution is not None and execution.stage == "20_build_dataset" and execution.trace_id == result.trace_id
    assert row.result == f"started 20_build_dataset execution {execution.id}" and result.result.endswith("succeeded")
    assert started and started[0].execution_id == execution.id
