"""The stage registry: each lifecycle stage's notebook and its typed parameter schema.

Parameters are validated against the schema before any kernel starts: an unknown, missing or
mistyped parameter is an error (``extra="forbid"``, strict types), and so is one outside its real
range — a ``seed`` beyond 0…2³²−1 (what NumPy and PyTorch seed from), an ``as_of`` in the future
(beyond ``AS_OF_CLOCK_SKEW``). ``check_references`` then checks against the Metadata DB that the
run, queue message and evaluation set a stage's parameters name exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opslib.control.leases import Lease, StaleLease, release_lease_of
from opslib.control.messages import ROLLBACK_REQUEST
from opslib.control.runs import fail_run
from opslib.db.engine import Database
from opslib.db.models import EvaluationDataset, FailureType, MLPipelineRun, OpsMessage, RunStage, utcnow
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.rules import DEFAULT_RULE, GENERATION_RULES
from opslib.lifecycle.reindex import abort_candidate
from opslib.lifecycle.training import MiningParams, TrainingParams

log = get_logger(__name__)


class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# A seed feeds random.seed, numpy's RandomState and torch.manual_seed: NumPy takes 0…2**32 − 1.
SEED_MAX = 2**32 - 1
# How far ahead of this machine's clock an ``as_of`` may lie (another host's clock, a tick that
# fires a little early); beyond it the window has not ended and the dataset would stay "latest".
AS_OF_CLOCK_SKEW = timedelta(minutes=5)


class FeedbackHealthParams(StageParams):
    window_days: int = Field(default=7, ge=1, le=365, description="look back this many days")


def parse_instant(value: str) -> datetime:
    """An ISO date or datetime; a date means 00:00 UTC that day, no offset means UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class BuildDatasetParams(StageParams):
    as_of: str | None = Field(default=None, description="window end (ISO date/datetime, UTC); None = now")
    source_window_days: int = Field(default=30, ge=1, le=365)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    generation_rule: str = Field(default=DEFAULT_RULE, description="retrieval-group-v2 (default) or v1")

    @field_validator("generation_rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value not in GENERATION_RULES:
            raise ValueError(f"must be one of {', '.join(GENERATION_RULES)}")
        return value

    @field_validator("as_of")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                instant = parse_instant(value)
            except ValueError:
                raise ValueError(
                    "must be an ISO-8601 date or datetime, e.g. 2026-12-01 or 2026-12-01T03:00:00+09:00"
                ) from None
            except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
                raise ValueError(f"{value}: out of range") from None
            now = utcnow()
            if instant > now + AS_OF_CLOCK_SKEW:
                raise ValueError(
                    f"{instant.isoformat()} is in the future (now {now.replace(microsecond=0).isoformat()}; "
                    f"up to {AS_OF_CLOCK_SKEW.total_seconds() / 60:g} minutes of clock skew are allowed): "
                    "a dataset's source window must have ended"
                )
            if instant < datetime.min.replace(tzinfo=UTC) + timedelta(days=366):
                raise ValueError(f"{value}: out of range (no source window fits before it)")
        return value

    @property
    def as_of_instant(self) -> datetime | None:
        return parse_instant(self.as_of) if self.as_of is not None else None


class TrainCandidateParams(StageParams):
    run_id: int = Field(ge=1)
    epochs: int = Field(default=3, ge=1, le=50, description="the most per configuration; each keeps its best")
    batch_size: int = Field(default=16, ge=2, le=1024)
    learning_rates: list[Annotated[float, Field(gt=0, le=1e-2)]] = Field(
        default=[2e-5, 5e-5], min_length=1, max_length=8
    )
    losses: list[Literal["mnrl", "cached_mnrl", "gist"]] = Field(default=["mnrl"], min_length=1, max_length=3)
    max_seq_length: int = Field(default=128, ge=8, le=512)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    base_model_version: str | None = Field(
        default=None,
        min_length=3,
        max_length=56,
        description="the registered version to fine-tune from; None: the run's baseline (the serving model)",
    )
    patience: int = Field(default=1, ge=1, le=50, description="epochs without a better validation score")
    validation_share: float = Field(default=0.2, gt=0, lt=1)
    negatives_per_row: int = Field(default=1, ge=1, le=8)
    refit: bool = Field(
        default=True, description="retrain the winner on training + validation queries for its best epoch count"
    )
    mine_rank_from: int = Field(default=3, ge=0, le=1000)
    mine_rank_to: int = Field(default=30, ge=1, le=1000)
    mine_margin: float = Field(default=0.05, ge=0, lt=1)
    mined_per_group: int = Field(default=3, ge=0, le=50)

    @model_validator(mode="after")
    def _window(self) -> TrainCandidateParams:
        if self.mine_rank_from >= self.mine_rank_to:
            raise ValueError(f"mine_rank_from {self.mine_rank_from} must be below mine_rank_to {self.mine_rank_to}")
        return self

    def training_params(self) -> TrainingParams:
        return TrainingParams(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rates=tuple(self.learning_rates),
            losses=tuple(self.losses),
            max_seq_length=self.max_seq_length,
            seed=self.seed,
            base_model_version=self.base_model_version,
            patience=self.patience,
            validation_share=self.validation_share,
            negatives_per_row=self.negatives_per_row,
            refit=self.refit,
            mining=MiningParams(
                rank_from=self.mine_rank_from,
                rank_to=self.mine_rank_to,
                margin=self.mine_margin,
                per_group=self.mined_per_group,
            ),
        )


class EvaluateCandidateParams(StageParams):
    run_id: int = Field(ge=1)
    evaluation_dataset_ref: str = Field(min_length=1, pattern=r"^eval-[0-9a-f]{16}$")
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)


class DrivenParams(StageParams):
    """A release stage's hand-off from its driver: the release lease the driving worker holds
    across 50 → 60 (or 70), so no other worker can start the same stage in between. Both or
    neither; without them the stage takes the lease itself (an operator's run by hand)."""

    lease_token: int | None = Field(default=None, ge=1, description="the driver's release lease token")
    lease_holder: str | None = Field(default=None, min_length=1, max_length=256, description="the driver's name")

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.lease_token is None) != (self.lease_holder is None):
            raise ValueError("lease_token and lease_holder: give both (a driver's lease) or neither")
        return self

    @property
    def lease(self) -> Lease | None:
        return release_lease_of(self.lease_token, self.lease_holder)


class ReleaseRunParams(DrivenParams):
    run_id: int = Field(ge=1)


class RollbackParams(DrivenParams):
    message_id: int = Field(ge=1, description="the ROLLBACK_REQUEST on the queue")


# What a failed execution of a run's stage does to its run: (workspace, run_id, reason, the
# execution's validated parameters).
FailureHandler = Callable[[Workspace, int, str, StageParams], None]


def fail_run_with_error(stage: RunStage) -> FailureHandler:
    """Any exception in a run's stage is a system error of that stage; serving is untouched.
    (A no-op if the stage already settled the run, e.g. FAILED with FAIL.)"""

    def handle(ws: Workspace, run_id: int, reason: str, params: StageParams) -> None:
        fail_run(ws.db, run_id, stage=stage, failure_type=FailureType.ERROR, reason=reason)

    return handle


def abort_release_candidate(stage: RunStage) -> FailureHandler:
    """A release stage's failure fails the run and drops its open candidate in one transaction,
    so the release never points at a candidate whose run has failed. Under the driver's lease when
    a worker handed the stage one (it still holds it: taking the lease here would find it busy)."""

    def handle(ws: Workspace, run_id: int, reason: str, params: StageParams) -> None:
        fence = params.lease if isinstance(params, DrivenParams) else None
        try:
            abort_candidate(ws, run_id, reason, actor=ws.settings.operator, stage=stage, fence=fence)
        except StaleLease:  # the driver lost the lease meanwhile: the release is its successor's now
            log.warning("candidate not aborted: the driver's lease was taken over", extra={"run_id": run_id})

    return handle


@dataclass(frozen=True)
class StageSpec:
    name: str
    notebook: str
    params: type[StageParams]
    description: str
    module: str  # the opslib module that implements the stage (the notebook only calls into it)
    run_stage: RunStage | None = None  # the run stage a failure is recorded against
    on_failure: FailureHandler | None = None  # what a failed execution does to its run


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "10_feedback_health",
            "10_feedback_health.ipynb",
            FeedbackHealthParams,
            "raw-log volume, rejects, duplicates, rating mix per active model version",
            "opslib.lifecycle.feedback.health",
        ),
        StageSpec(
            "20_build_dataset",
            "20_build_dataset.ipynb",
            BuildDatasetParams,
            "raw logs → retrieval groups + manifest + data-quality validation",
            "opslib.lifecycle.dataset.builder",
        ),
        StageSpec(
            "30_train_candidate",
            "30_train_candidate.ipynb",
            TrainCandidateParams,
            "fine-tune the run's baseline on the run's dataset → candidate artifact",
            "opslib.lifecycle.training",
            RunStage.TRAINING,
            fail_run_with_error(RunStage.TRAINING),
        ),
        StageSpec(
            "40_evaluate_candidate",
            "40_evaluate_candidate.ipynb",
            EvaluateCandidateParams,
            "candidate vs baseline → ModelEvaluation + detail; the evaluation report",
            "opslib.lifecycle.evaluation.evaluate",
            RunStage.EVALUATION,
            fail_run_with_error(RunStage.EVALUATION),
        ),
        StageSpec(
            "50_reindex_candidate",
            "50_reindex_candidate.ipynb",
            ReleaseRunParams,
            "open CANDIDATE_REINDEXING, build the candidate index, readiness",
            "opslib.lifecycle.reindex",
            RunStage.REINDEX,
            abort_release_candidate(RunStage.REINDEX),
        ),
        StageSpec(
            "60_cutover",
            "60_cutover.ipynb",
            ReleaseRunParams,
            "completeness + readiness gate, snapshot, atomic switch",
            "opslib.lifecycle.cutover",
            RunStage.CUTOVER,
            abort_release_candidate(RunStage.CUTOVER),
        ),
        StageSpec(
            "70_rollback",
            "70_rollback.ipynb",
            RollbackParams,
            "exclude, restore the snapshot index, switch back, re-embed, re-include",
            "opslib.lifecycle.rollback",
        ),
    )
}

# Injected by the runner next to the stage's own parameters; never accepted from callers.
EXECUTION_ID_PARAM = "ops_execution_id"


class StageError(Invalid, ValueError):
    pass


def stage_spec(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise StageError(f"stage {name!r}: unknown; known stages: {', '.join(sorted(STAGES))}") from None


def _known_params(spec: StageSpec) -> str:
    """What an unknown parameter's error lists: the names the stage's schema accepts."""
    return f"parameters of {spec.name}: {', '.join(sorted(spec.params.model_fields))}"


def _reference_problems(db: Database, params: StageParams, run_id: int | None) -> list[str]:
    """Why the ids ``params`` (and the execution's ``run_id``) name are not in the Metadata DB."""
    problems = []
    with db.read() as session:
        named = getattr(params, "run_id", None)
        for label, value in (("run_id", named), ("the execution's run_id", run_id if run_id != named else None)):
            if value is not None and session.get(MLPipelineRun, value) is None:
                problems.append(f"{label} {value}: no such run")
        message_id = getattr(params, "message_id", None)
        if message_id is not None:
            message = session.get(OpsMessage, message_id)
            if message is None:
                problems.append(f"message_id {message_id}: no such message")
            elif message.message_type != ROLLBACK_REQUEST:
                problems.append(f"message_id {message_id}: is a {message.message_type}, not a {ROLLBACK_REQUEST}")
        ref = getattr(params, "evaluation_dataset_ref", None)
        if ref is not None and session.get(EvaluationDataset, ref) is None:
            problems.append(f"evaluation_dataset_ref {ref}: no such evaluation set (`opsbench register-eval`)")
    return problems


def check_references(db: Database, name: str, params: StageParams, *, run_id: int | None = None) -> None:
    """Refuse (``StageError``) before anything starts when a parameter names a run, queue message
    (a ROLLBACK_REQUEST for 70) or evaluation set that does not exist — or ``run_id``, the run the
    execution is recorded against — each problem named: ``run_id 99999: no such run``."""
    problems = _reference_problems(db, params, run_id)
    if problems:
        raise StageError(f"stage {name}: invalid parameters: " + "; ".join(problems))


def validate_params(name: str, raw: dict[str, object]) -> StageParams:
    """The stage's parameters as its schema types them; a clear error names each bad field."""
    spec = stage_spec(name)
    try:
        return spec.params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "parameters"
            kind = {"extra_forbidden": "unknown parameter", "missing": "missing parameter"}.get(
                error["type"], error["msg"]
            )
            problems.append(f"{field}: {kind}")
        if any(error["type"] == "extra_forbidden" for error in exc.errors()):
            problems.append(_known_params(spec))  # once, however many names were mistyped
        raise StageError(f"stage {name}: invalid parameters: " + "; ".join(problems)) from None
