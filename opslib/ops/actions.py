"""Guarded operator actions: the few things the dashboard and the CLI let an operator do.

Each action has a *preview* (what will happen, what must be typed to confirm it, or why it is not
possible now) read from the Metadata DB, and *perform*, which checks in order:

1. the operator's role (settings) is ``admin``;
2. a reason is given;
3. the typed confirmation equals the preview's target (e.g. the model version that serves now);
4. the action's own guard, re-read from the DB inside the transaction that has the effect.

Every attempt — done or refused — leaves one ``AuditLog`` row. A done action writes its row in
the same transaction as its effect (the queued message, the run's approval, the stage
execution), so there is never an effect without its audit row or the other way round.
"""

from __future__ import annotations

import enum
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opslib.control.leases import check_fence, holding_release
from opslib.control.messages import TrainingRequest, new_rollback_request, new_training_request
from opslib.control.queue import publish
from opslib.control.release import current_release
from opslib.control.runs import latest_eligible_dataset
from opslib.corpus.indexing import missing_from_index
from opslib.db.models import (
    AuditLog,
    Chunk,
    MLPipelineRun,
    ModelVersion,
    ReleaseStatus,
    RunStatus,
    StageExecution,
    VectorIndexEntry,
    Video,
    VideoStatus,
    utcnow,
)
from opslib.errors import Refused
from opslib.execution.runner import run_stage
from opslib.infra.logs import get_logger, new_trace_id, trace
from opslib.infra.model_artifacts import (
    ModelArtifactError,
    Provenance,
    local_model_dir,
    publish_model,
    read_manifest,
    register_model,
    validate_model_version,
)
from opslib.infra.model_intake import ModelIntakeRefused, inspect_model, stage_model
from opslib.infra.precision import PRECISIONS, choose_precision, validate_precision
from opslib.infra.vector_store import VectorStoreDamaged
from opslib.infra.workspace import Workspace
from opslib.lifecycle.index_snapshot import forget_entries, rebuild_index
from opslib.settings import Settings

log = get_logger(__name__)

ADMIN_ROLE = "admin"
MIN_REASON = 3


class Action(enum.StrEnum):
    RETRIGGER_TRAINING = "retrigger-training"
    GENERATE_DATASET = "generate-dataset"
    REQUEST_ROLLBACK = "request-rollback"
    PROMOTE_RUN = "promote-run"
    CHANGE_PRECISION = "change-precision"
    REINDEX_ACTIVE = "reindex-active"
    PROPOSE_MODEL = "propose-model"


class ActionRefused(Refused):
    """The action was not carried out (and the refusal was audited); the message says why."""


# Private control flow: never escapes (``_effect_with_audit`` turns it into ``ActionRefused``).
class _GuardFailed(Exception):
    """The action's guard failed inside its transaction (rolled back; audited afterwards)."""


@dataclass(frozen=True)
class Preview:
    action: Action
    target: str | None  # what the operator types to confirm; None when the action is not possible now
    summary: str  # what will happen
    blocker: str | None = None  # why it is not possible now

    @property
    def possible(self) -> bool:
        return self.blocker is None and self.target is not None


@dataclass(frozen=True)
class ActionResult:
    action: Action
    target: str
    audit_id: int
    result: str
    trace_id: str
    message_id: int | None = None
    execution_id: int | None = None


# Previews ----------------------------------------------------------------------------------------
def preview_training(ws: Workspace) -> Preview:
    with ws.db.read() as session:
        dataset = latest_eligible_dataset(session)
        release = current_release(session)
        running = session.scalars(select(MLPipelineRun.id).where(MLPipelineRun.status == RunStatus.RUNNING)).first()
    if release is None:
        return Preview(Action.RETRIGGER_TRAINING, None, "—", "no ModelRelease: initialise the workspace")
    if dataset is None:
        return Preview(
            Action.RETRIGGER_TRAINING,
            None,
            "—",
            "no eligible training dataset: the request would be refused (generate a dataset first)",
        )
    queued = (
        f"queued behind RUNNING run {running} (a newer request replaces an older PENDING one)"
        if running
        else "started by the worker on its next pass"
    )
    return Preview(
        Action.RETRIGGER_TRAINING,
        dataset.dataset_version,
        f"a TRAINING_REQUEST (manual): a run fine-tunes {release.active_model_version} on the latest "
        f"eligible dataset — {dataset.dataset_version} now — and evaluates it; {queued}. "
        "Type the dataset version to confirm.",
    )


def dataset_as_of(now: datetime | None = None) -> datetime:
    """The ``as_of`` of a dataset generated now: the current minute (UTC)."""
    return (now or utcnow()).astimezone(UTC).replace(second=0, microsecond=0)


def preview_dataset(ws: Workspace, source_window_days: int | None = None, now: datetime | None = None) -> Preview:
    days = source_window_days or ws.settings.dataset_source_window_days
    as_of = dataset_as_of(now)
    target = as_of.date().isoformat()
    return Preview(
        Action.GENERATE_DATASET,
        target,
        f"executes 20_build_dataset over the {days} days of feedback before {as_of.isoformat()} "
        "(archived in runs/). It never starts training. Type today's date (UTC) to confirm.",
    )


def preview_rollback(ws: Workspace) -> Preview:
    with ws.db.read() as session:
        release = current_release(session)
    if release is None:
        return Preview(Action.REQUEST_ROLLBACK, None, "—", "no ModelRelease: initialise the workspace")
    if release.release_status is not ReleaseStatus.STABLE:
        return Preview(
            Action.REQUEST_ROLLBACK,
            None,
            "—",
            f"the release is {release.release_status.value}; a rollback needs STABLE",
        )
    if release.rollback_snapshot_active_model_version is None:
        return Preview(
            Action.REQUEST_ROLLBACK, None, "—", "no rollback snapshot: nothing was cut over since the last rollback"
        )
    return Preview(
        Action.REQUEST_ROLLBACK,
        release.active_model_version,
        f"a ROLLBACK_REQUEST: serving returns from {release.active_model_version} to "
        f"{release.rollback_snapshot_active_model_version} "
        f"({release.rollback_snapshot_active_index_name}, captured "
        f"{release.rollback_snapshot_captured_at.isoformat() if release.rollback_snapshot_captured_at else '?'}); "
        "videos only the current model embedded are hidden until re-embedded. "
        "Type the model version serving now to confirm.",
    )


def _promote_blocker(run: MLPipelineRun | None, run_id: int, release: Any) -> str | None:
    if run is None:
        return f"run {run_id}: no such run"
    if run.status is not RunStatus.READY_FOR_RELEASE:
        return f"run {run_id} is {run.status.value}; only a READY_FOR_RELEASE run is promoted"
    if run.cutover_time is not None:
        return f"run {run_id} was already cut over at {run.cutover_time.isoformat()}"
    if run.promoted_at is not None:
        return f"run {run_id} was already promoted by {run.promoted_by} at {run.promoted_at.isoformat()}"
    if release is not None and run.baseline_model_version != release.active_model_version:
        return (
            f"run {run_id} was judged against {run.baseline_model_version}, but "
            f"{release.active_model_version} serves now: evaluate a new run instead"
        )
    return None


def preview_promote(ws: Workspace, run_id: int) -> Preview:
    with ws.db.read() as session:
        run = session.get(MLPipelineRun, run_id)
        release = current_release(session)
    blocker = _promote_blocker(run, run_id, release)
    if blocker or run is None:
        return Preview(Action.PROMOTE_RUN, None, "—", blocker)
    return Preview(
        Action.PROMOTE_RUN,
        run.candidate_model_version,
        f"approves the release of run {run_id}: the worker builds {run.candidate_index_name} "
        f"(50_reindex_candidate) and switches serving from {run.baseline_model_version} to "
        f"{run.candidate_model_version} (60_cutover) on its next pass. "
        "Type the candidate model version to confirm.",
    )


def precision_version_for(model_version: str, precision: str) -> str:
    """The version name of ``model_version``'s weights recorded at ``precision`` (≤ 56 characters)."""
    suffix = f"-{precision}"
    return model_version[: 56 - len(suffix)].rstrip("-._") + suffix


def preview_precision_change(ws: Workspace, precision: str) -> Preview:
    action = Action.CHANGE_PRECISION
    if precision not in PRECISIONS:
        return Preview(action, None, "—", f"precision {precision!r}: must be one of {list(PRECISIONS)}")
    with ws.db.read() as session:
        release = current_release(session)
        dataset = latest_eligible_dataset(session)
        active = session.get(ModelVersion, release.active_model_version) if release else None
        derived_name = precision_version_for(release.active_model_version, precision) if release else ""
        derived = session.get(ModelVersion, derived_name) if release else None
    if release is None or active is None:
        return Preview(action, None, "—", "no ModelRelease: initialise the workspace")
    if active.encode_precision == precision:
        return Preview(action, None, "—", f"{active.model_version} already serves at {precision}")
    if derived is not None and derived.encode_precision != precision:
        return Preview(action, None, "—", f"{derived_name} exists at {derived.encode_precision}, not {precision}")
    if dataset is None:
        return Preview(action, None, "—", "no eligible training dataset: a run needs one (generate a dataset first)")
    return Preview(
        action,
        derived_name,
        f"registers {derived_name}: the weights of {active.model_version} (serving at {active.encode_precision}) "
        f"recorded at {precision}, and queues a TRAINING_REQUEST naming it: the run skips training, evaluates it "
        f"against {active.model_version} (the report shows the metric change), and on a PASS builds its own "
        f"index (50) and switches serving to it (60) like any candidate. Type {derived_name} to confirm.",
    )


def preview_propose_model(ws: Workspace, source: str, model_version: str) -> Preview:
    """Bring your own model: what ``propose_model`` will do with ``source`` as ``model_version``.
    Cheap (no download, no load): the artifact itself is validated when the action is performed."""
    action = Action.PROPOSE_MODEL
    if not (source or "").strip():
        return Preview(action, None, "—", "source: a sentence-transformers folder or an fsspec URL of one is required")
    try:
        validate_model_version(model_version)
    except ModelArtifactError as exc:
        return Preview(action, None, "—", str(exc))
    with ws.db.read() as session:
        release = current_release(session)
        exists = session.get(ModelVersion, model_version) is not None
    if release is None:
        return Preview(action, None, "—", "no ModelRelease: initialise the workspace")
    if exists:
        return Preview(
            action, None, "—", f"model_version {model_version!r}: already registered (versions are written once)"
        )
    return Preview(
        action,
        model_version,
        f"copies the model at {source}, checks it loads offline from those files alone and smoke-encodes (its "
        f"embedding dimension and max sequence length are recorded), registers it as {model_version} with its "
        f"source, you and your reason (files hashed into model_manifest.json, written once), and queues a "
        f"TRAINING_REQUEST naming it: the run trains nothing (30 records it DELIVERED), 40 judges it against "
        f"{release.active_model_version} on the evaluation and guard sets like a fine-tune, and on a PASS 50 "
        f"builds its own index and 60 switches serving to it under the same release rule; a FAIL leaves serving "
        f"as it is. Type {model_version} to confirm.",
    )


def preview_reindex_active(ws: Workspace) -> Preview:
    action = Action.REINDEX_ACTIVE
    with ws.db.read() as session:
        release = current_release(session)
        if release is None:
            return Preview(action, None, "—", "no ModelRelease: initialise the workspace")
        index, model = release.active_index_name, release.active_model_version
        status = release.release_status
        entries = session.scalar(
            select(func.count()).select_from(VectorIndexEntry).where(VectorIndexEntry.index_name == index)
        )
        ready = session.scalar(
            select(func.count())
            .select_from(Chunk)
            .join(Video, Video.id == Chunk.video_id)
            .where(Video.status == VideoStatus.READY)
        )
    if status is not ReleaseStatus.STABLE:
        return Preview(action, None, "—", f"the release is {status.value}; rebuilding the active index needs STABLE")
    try:
        held = ws.vectors.collection_counts().get(index)
        store = f"holds {held} vectors in it" if held is not None else "has no collection for it"
    except VectorStoreDamaged as damaged:
        if not ws.vectors.embedded:
            return Preview(action, None, "—", str(damaged))
        store = f"is damaged (its folder is moved aside to {ws.vectors.location}.damaged-<time> first)"
    return Preview(
        action,
        index,
        f"rebuilds the active index {index} from the Metadata DB (the source of truth): drops its "
        f"{entries} entries and its collection (the vector store {store}), then embeds the {ready} READY "
        f"chunks with {model}, the active model (vectors it already computed elsewhere are reused). Searches "
        "miss results until it ends. Type the active index name to confirm.",
    )


def promotable_runs(ws: Workspace) -> list[int]:
    """READY_FOR_RELEASE runs an operator could promote now (newest first)."""
    with ws.db.read() as session:
        release = current_release(session)
        runs = list(
            session.scalars(
                select(MLPipelineRun)
                .where(MLPipelineRun.status == RunStatus.READY_FOR_RELEASE)
                .order_by(MLPipelineRun.id.desc())
            )
        )
        return [r.id for r in runs if _promote_blocker(r, r.id, release) is None]


# Performing --------------------------------------------------------------------------------------
def _audit(
    session: Session, ws: Workspace, action: Action, target: str, reason: str, result: str, trace_id: str
) -> AuditLog:
    row = AuditLog(
        operator=ws.settings.operator,
        role=ws.settings.operator_role,
        action=action.value,
        target=target[:256],
        reason=reason,
        result=result,
        trace_id=trace_id,
        at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def _refuse(ws: Workspace, action: Action, target: str, reason: str, why: str, trace_id: str) -> ActionRefused:
    with ws.db.transaction() as session:
        _audit(session, ws, action, target, reason, f"refused: {why}", trace_id)
    log.warning("operator action refused", extra={"action": action.value, "why": why, "operator": ws.settings.operator})
    return ActionRefused(why)


def role_refusal(settings: Settings) -> str | None:
    """Why ``settings``' operator may not perform a guarded action, and how to act as admin; None
    when they may."""
    if settings.operator_role == ADMIN_ROLE:
        return None
    return (
        f"operator {settings.operator!r} has role {settings.operator_role!r}; this action needs {ADMIN_ROLE!r} "
        f'(to act as admin: set OPS_OPERATOR_ROLE={ADMIN_ROLE}, or operator_role = "{ADMIN_ROLE}" in the '
        "config file)"
    )


def require_role(ws: Workspace, preview: Preview, reason: str = "", trace_id: str | None = None) -> None:
    """Refuse (audited) an operator without the admin role. Callers that ask the operator for
    anything (a reason, a typed confirmation) call it first, so nobody answers only to be refused."""
    why = role_refusal(ws.settings)
    if why is not None:
        raise _refuse(ws, preview.action, preview.target or "—", reason, why, trace_id or new_trace_id())


def _check(ws: Workspace, action: Action, preview: Preview, confirm: str, reason: str, trace_id: str) -> str:
    """Role, reason and confirmation; returns the confirmed target or raises (audited)."""
    target = preview.target or "—"
    require_role(ws, preview, reason, trace_id)
    if len((reason or "").strip()) < MIN_REASON:
        raise _refuse(ws, action, target, reason or "", "a reason is required (it goes into the audit log)", trace_id)
    if not preview.possible:
        raise _refuse(ws, action, target, reason, preview.blocker or "not possible now", trace_id)
    if (confirm or "").strip() != preview.target:
        raise _refuse(
            ws, action, target, reason, f"confirmation {confirm!r} does not match {preview.target!r}", trace_id
        )
    return str(preview.target)


def _effect_with_audit(
    ws: Workspace, action: Action, target: str, reason: str, trace_id: str, effect: Callable[[Session], str]
) -> tuple[int, str]:
    """Run ``effect`` (which re-checks its guard and returns the result text) and write the audit
    row in the same transaction: (audit id, result). A failed guard is refused and audited."""
    try:
        with ws.db.transaction() as session:
            result = effect(session)
            row = _audit(session, ws, action, target, reason, result, trace_id)
            return row.id, result
    except _GuardFailed as failed:
        raise _refuse(ws, action, target, reason, str(failed), trace_id) from None


def _guard_eligible_dataset(session: Session) -> None:
    """A run needs an eligible dataset at the moment its request is queued."""
    if latest_eligible_dataset(session) is None:
        raise _GuardFailed("no eligible training dataset any more")


def _guard_serving(session: Session, model_version: str) -> None:
    """Serving must still be ``model_version`` (read with a share lock: a switch waits for us)."""
    release = current_release(session, for_share=True)
    if release is None or release.active_model_version != model_version:
        raise _GuardFailed("serving changed while you confirmed; look again")


def retrigger_training(ws: Workspace, *, confirm: str, reason: str) -> ActionResult:
    action = Action.RETRIGGER_TRAINING
    trace_id = new_trace_id()
    target = _check(ws, action, preview_training(ws), confirm, reason, trace_id)
    message = new_training_request(
        trigger_source="manual", requested_by=ws.settings.operator, reason=reason, trace_id=trace_id
    )
    published: list[int] = []

    def queue(session: Session) -> str:
        _guard_eligible_dataset(session)
        published.append(publish(ws.db, message, session=session))
        return f"queued TRAINING_REQUEST message {published[0]}"

    audit_id, result = _effect_with_audit(ws, action, target, reason, trace_id, queue)
    return ActionResult(action, target, audit_id, result, trace_id, message_id=published[0])


def request_rollback(ws: Workspace, *, confirm: str, reason: str) -> ActionResult:
    action = Action.REQUEST_ROLLBACK
    trace_id = new_trace_id()
    target = _check(ws, action, preview_rollback(ws), confirm, reason, trace_id)
    message = new_rollback_request(target, requested_by=ws.settings.operator, reason=reason, trace_id=trace_id)
    published: list[int] = []

    def queue(session: Session) -> str:
        _guard_serving(session, target)
        published.append(publish(ws.db, message, session=session))
        return f"queued ROLLBACK_REQUEST message {published[0]}"

    audit_id, result = _effect_with_audit(ws, action, target, reason, trace_id, queue)
    return ActionResult(action, target, audit_id, result, trace_id, message_id=published[0])


def promote_run(ws: Workspace, run_id: int, *, confirm: str, reason: str) -> ActionResult:
    action = Action.PROMOTE_RUN
    trace_id = new_trace_id()
    target = _check(ws, action, preview_promote(ws, run_id), confirm, reason, trace_id)

    def approve(session: Session) -> str:
        run = session.scalars(select(MLPipelineRun).where(MLPipelineRun.id == run_id).with_for_update()).one_or_none()
        blocker = _promote_blocker(run, run_id, current_release(session))
        if blocker or run is None:
            raise _GuardFailed(blocker or f"run {run_id}: no such run")
        run.promoted_at, run.promoted_by = utcnow(), ws.settings.operator
        return f"run {run_id} approved for release; the worker releases it on its next pass"

    audit_id, result = _effect_with_audit(ws, action, target, reason, trace_id, approve)
    return ActionResult(action, f"run {run_id}: {target}", audit_id, result, trace_id)


def _request_to_judge(ws: Workspace, model_version: str, reason: str, trace_id: str) -> TrainingRequest:
    """The manual TRAINING_REQUEST whose run judges (and may release) a registered model instead of
    training one: a precision change, a delivered model."""
    return new_training_request(
        trigger_source="manual",
        requested_by=ws.settings.operator,
        reason=reason,
        trace_id=trace_id,
        candidate_model_version=model_version,
    )


def change_precision(ws: Workspace, precision: str, *, confirm: str, reason: str) -> ActionResult:
    """Release the serving weights at another precision: a new model version (recorded at
    ``precision``) through the gate, 50 and 60 — never a change in place of an index's precision."""
    action = Action.CHANGE_PRECISION
    trace_id = new_trace_id()
    preview = preview_precision_change(ws, precision)
    target = _check(ws, action, preview, confirm, reason, trace_id)
    with ws.db.read() as session:
        release = current_release(session)
        assert release is not None  # the preview checked
        source = release.active_model_version
        registered = session.get(ModelVersion, target) is not None
    if not registered:  # files first (write-once, idempotent); the audited effect below queues the run
        chosen = validate_precision(precision)
        with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
            # The model's own files only (the store keeps checksum sidecars and the manifest beside them).
            path = Path(tmp)
            stored = local_model_dir(ws, source)
            for relative in read_manifest(ws, source).files:
                (path / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(stored / relative, path / relative)
            try:
                register_model(
                    ws,
                    validate_model_version(target),
                    path,
                    base_model_version=source,
                    precision=choose_precision(chosen, ws.embeddings.device, path),
                )
            except ModelArtifactError as exc:
                raise _refuse(ws, action, target, reason, str(exc), trace_id) from None
    message = _request_to_judge(ws, target, reason, trace_id)
    published: list[int] = []

    def queue(session: Session) -> str:
        _guard_eligible_dataset(session)
        _guard_serving(session, source)
        published.append(publish(ws.db, message, session=session))
        return f"registered {target}; queued TRAINING_REQUEST message {published[0]} naming it"

    audit_id, result = _effect_with_audit(ws, action, target, reason, trace_id, queue)
    return ActionResult(action, target, audit_id, result, trace_id, message_id=published[0])


def propose_model(ws: Workspace, source: str, model_version: str, *, confirm: str, reason: str) -> ActionResult:
    """Bring your own model (``opsbench propose-model``): validate the artifact at ``source``,
    register it as ``model_version`` with its provenance and queue a run that judges it (no
    training). Any refusal — role, reason, confirmation, a version that exists, an artifact that
    is not a model, needs a download or fails its smoke encode — is audited and registers nothing:
    the row, the queued message and the audit row commit in one transaction."""
    action = Action.PROPOSE_MODEL
    trace_id = new_trace_id()
    target = _check(ws, action, preview_propose_model(ws, source, model_version), confirm, reason, trace_id)
    with tempfile.TemporaryDirectory(prefix="propose-") as tmp:
        staged = Path(tmp) / "model"
        try:
            stage_model(source, staged)
            inspection = inspect_model(staged, source, ws.embeddings.device)
            # The precision it will encode at is chosen (and checked) now, like any registration.
            precision = choose_precision(ws.settings.encode_precision, ws.embeddings.device, staged)
        except ModelIntakeRefused as exc:
            raise _refuse(ws, action, target, reason, str(exc), trace_id) from None
        # The files are copied to the model store before the transaction opens: a large model
        # must not hold the Metadata DB's write lock while it copies. Refused after this point,
        # nothing is registered; the published files are adopted by a retry with the same files.
        try:
            row = publish_model(
                ws,
                target,
                staged,
                base_model_version=None,
                precision=precision,
                provenance=Provenance(source=source, delivered_by=ws.settings.operator, reason=reason),
                delivery=inspection.as_record(),
                embedding_dimension=inspection.embedding_dimension,
                max_seq_length=inspection.max_seq_length,
            )
        except ModelArtifactError as exc:
            raise _refuse(ws, action, target, reason, str(exc), trace_id) from None
    message = _request_to_judge(ws, target, reason, trace_id)
    published: list[int] = []

    def register_and_queue(session: Session) -> str:
        if session.get(ModelVersion, target) is not None:
            raise _GuardFailed(f"model_version {target!r}: already registered (versions are written once)")
        session.add(row)
        session.flush()
        published.append(publish(ws.db, message, session=session))
        return (
            f"registered {target} (delivered from {source}: {inspection.embedding_dimension} dimensions, max "
            f"sequence length {inspection.max_seq_length}, encodes at {precision.precision}); queued "
            f"TRAINING_REQUEST message {published[0]} naming it"
        )

    audit_id, result = _effect_with_audit(ws, action, target, reason, trace_id, register_and_queue)
    log.info("model delivered", extra={"model_version": target, "source": source, "trace_id": trace_id})
    return ActionResult(action, target, audit_id, result, trace_id, message_id=published[0])


def reindex_active(ws: Workspace, *, confirm: str, reason: str, progress: bool = False) -> ActionResult:
    """Rebuild the active index from the Metadata DB (``opsbench reindex-active``): the way back from
    a dropped collection or a damaged vector store without a backup. The audit row is written in
    the transaction that drops the index's entries (a damaged embedded store's folder is moved
    aside then, never deleted); the returned result carries how the rebuild ended."""
    action = Action.REINDEX_ACTIVE
    trace_id = new_trace_id()
    target = _check(ws, action, preview_reindex_active(ws), confirm, reason, trace_id)
    fixed: dict[str, str] = {}

    def start(session: Session) -> str:
        release = current_release(session, for_share=True)
        if release is None or release.release_status is not ReleaseStatus.STABLE or release.active_index_name != target:
            raise _GuardFailed("the release changed while you confirmed; look again")
        fixed["model"] = release.active_model_version
        moved = ""
        try:
            ws.vectors.names()
        except VectorStoreDamaged as damaged:
            if not ws.vectors.embedded:
                raise _GuardFailed(str(damaged)) from None
            moved = f"; the damaged vector store was moved aside to {ws.vectors.set_aside()}"
        dropped = forget_entries(session, target)
        return f"rebuilding {target} with {fixed['model']} from the Metadata DB: dropped its {dropped} entries{moved}"

    # The rebuild writes the active index: no release stage may run meanwhile (LeaseBusy, a
    # Conflict, names who drives the release; nothing is changed then).
    with holding_release(ws.db, ws.settings, f"reindex-active {target}") as lease:

        def fenced_start(session: Session) -> str:
            check_fence(session, lease)
            return start(session)

        audit_id, started = _effect_with_audit(ws, action, target, reason, trace_id, fenced_start)

        def still_active(session: Session) -> bool:
            release = current_release(session)
            return release is not None and release.active_index_name == target

        with trace(trace_id):
            try:
                report = rebuild_index(ws, target, fixed["model"], guard=still_active, progress=progress)
            except VectorStoreDamaged:  # the store opened, but the index's own files are damaged
                if not ws.vectors.embedded:
                    raise
                moved_to = ws.vectors.set_aside()
                log.warning("damaged vector store moved aside", extra={"moved_to": str(moved_to)})
                started += f"; the damaged vector store was moved aside to {moved_to}"
                report = rebuild_index(ws, target, fixed["model"], guard=still_active, progress=progress)
    missing = len(missing_from_index(ws, target))
    verdict = (
        f"rebuilt: {report.written + report.unchanged} vectors ({report.embedded} embedded, {report.reused} reused)"
        + ("; stopped: it no longer serves" if report.stopped else "")
        + (f"; {missing} READY chunks still missing" if missing else ", complete")
    )
    log.info("active index rebuilt", extra={"index_name": target, "verdict": verdict, "trace_id": trace_id})
    return ActionResult(action, target, audit_id, f"{started}; {verdict}", trace_id)


def generate_dataset(
    ws: Workspace,
    *,
    confirm: str,
    reason: str,
    source_window_days: int | None = None,
    seed: int = 0,
    progress: bool = False,
    on_started: Callable[[ActionResult], None] | None = None,
) -> ActionResult:
    """Execute 20_build_dataset now. Long: the dashboard calls it from a background thread.

    The audit row is written in the transaction that creates the stage's ``StageExecution``;
    ``on_started`` gets the result at that moment; the returned result carries the outcome."""
    action = Action.GENERATE_DATASET
    trace_id = new_trace_id()
    preview = preview_dataset(ws, source_window_days)
    target = _check(ws, action, preview, confirm, reason, trace_id)
    days = source_window_days or ws.settings.dataset_source_window_days
    started: dict[str, Any] = {}

    def audit_with_execution(session: Session, execution: StageExecution) -> None:
        row = _audit(
            session, ws, action, target, reason, f"started 20_build_dataset execution {execution.id}", trace_id
        )
        started.update(audit_id=row.id, result=row.result, execution_id=execution.id)
        if on_started is not None:
            on_started(ActionResult(action, target, row.id, row.result, trace_id, execution_id=execution.id))

    with trace(trace_id):
        outcome = run_stage(
            ws,
            "20_build_dataset",
            {"as_of": dataset_as_of().isoformat(), "source_window_days": days, "seed": seed},
            trace_id=trace_id,
            progress=progress,
            on_created=audit_with_execution,
        )
    verdict = (
        "succeeded"
        if outcome.ok
        else f"{'refused' if outcome.refused else 'failed'}: {(outcome.error or {}).get('ename')}"
    )
    return ActionResult(
        action,
        target,
        started["audit_id"],
        f"{started['result']}; {verdict}",
        trace_id,
        execution_id=started["execution_id"],
    )


def recent_audit(ws: Workspace, limit: int = 20) -> list[AuditLog]:
    with ws.db.read() as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)))
