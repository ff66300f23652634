"""Stage 30: fine-tune the run's baseline on the run's dataset → the candidate model artifact.

1. **Split** the dataset's groups — read verified (``read_dataset_groups``): a dataset whose
   artifact is gone or changed is marked unusable and nothing is trained — a seeded,
   query-disjoint share is held out for validation (``split``); the rest trains.
2. **Merge** the training groups of one query into one (``split.merge_by_query``), **mine** hard
   negatives for them with the baseline (``mining``) and build rows that combine them with the
   feedback's own negatives (``rows``).
3. **Select**: every configuration of the grid (loss × learning rate) trains from the baseline for
   up to ``epochs`` epochs, scored on the validation split after each; each keeps its best epoch
   (``fit``). The configuration with the best validation nDCG@5 becomes the candidate (ties: the
   earlier one in the grid). The baseline's own validation score is recorded beside them.
4. **Refit** (``refit``, default on): the winning configuration trains once more from the
   baseline on *every* labelled query — training and validation — for exactly its best epoch count
   (the same schedule, stopped there). Selection needed the validation queries held out; the
   candidate need not waste them. Its validation score cannot be measured (it trained on those
   queries): stage 40 judges it, on the evaluation set.
5. **Register** the candidate (write-once) — reading texts as far as the baseline did or as far as
   it was trained to, whichever is longer (training may cut texts shorter for speed) — with the
   whole selection — split, negatives by source, every configuration's epoch scores — in its
   manifest and in ``training/run-<id>/<candidate>/selection.json``.

Deterministic for a seed on one device at one precision (both recorded in the manifest): seeded
split, mining over fixed vectors, seeded shuffling and initialisation, deterministic torch kernels.
Training runs on ``OPS_DEVICE``, autocast to the device's native half precision (bf16 on GPUs and
on CPUs with AMX / AVX-512 BF16; ``opslib.infra.precision.training_mixed_precision``) with fp32
weights and optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from opslib.control.datasets import open_dataset
from opslib.control.runs import RunError, get_run
from opslib.db.models import ModelVersion, RunStatus
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.model_artifacts import local_model_dir, read_manifest, register_model
from opslib.infra.offline import use_offline_environment
from opslib.infra.precision import resolve_device, training_mixed_precision
from opslib.infra.workspace import Workspace
from opslib.lifecycle.training.fit import (
    LOSS_NAMES,
    LOSSES,
    Configuration,
    ConfigurationResult,
    FitSettings,
    fit_configuration,
    weights_fingerprint,
)
from opslib.lifecycle.training.mining import MiningParams, mine_hard_negatives
from opslib.lifecycle.training.rows import training_rows
from opslib.lifecycle.training.split import merge_by_query, split_groups
from opslib.lifecycle.training.validation import SELECTION_METRIC, Validator, validation_queries

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = get_logger(__name__)


class TrainingError(Invalid):
    pass


@dataclass(frozen=True)
class TrainingParams:
    epochs: int = 3  # the most per configuration; each keeps its best epoch
    batch_size: int = 16
    learning_rates: tuple[float, ...] = (2e-5, 5e-5)
    losses: tuple[str, ...] = ("mnrl",)
    max_seq_length: int = 128
    seed: int = 0
    warmup_ratio: float = 0.1
    patience: int = 1
    validation_share: float = 0.2
    negatives_per_row: int = 1
    refit: bool = True  # the winner retrained on training + validation queries for its best epoch count
    mining: MiningParams = field(default_factory=MiningParams)
    base_model_version: str | None = None  # what the fine-tune starts from; None: the run's baseline

    def __post_init__(self) -> None:
        if not self.learning_rates or not self.losses:
            raise TrainingError("learning_rates and losses: each needs at least one value")
        for loss in self.losses:
            if loss not in LOSSES:
                raise TrainingError(f"losses: {loss!r} is not one of {', '.join(LOSSES)}")
        if self.epochs < 1 or self.patience < 1:
            raise TrainingError(f"epochs {self.epochs}, patience {self.patience}: each must be >= 1")

    def configurations(self) -> list[Configuration]:
        """The grid, loss-major, in the order given (the order breaks ties)."""
        return [Configuration(lr, loss) for loss, lr in product(self.losses, self.learning_rates)]

    def as_record(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rates": list(self.learning_rates),
            "losses": list(self.losses),
            "max_seq_length": self.max_seq_length,
            "seed": self.seed,
            "warmup_ratio": self.warmup_ratio,
            "patience": self.patience,
            "validation_share": self.validation_share,
            "negatives_per_row": self.negatives_per_row,
            "refit": self.refit,
            "mining": self.mining.__dict__,
            "base_model_version": self.base_model_version,
        }


@dataclass
class TrainingReport:
    run_id: int
    candidate_model_version: str
    baseline_model_version: str
    dataset_version: str
    rows: int = 0
    groups: int = 0
    groups_without_negatives: int = 0
    steps: int = 0
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # the selected configuration's
    already_trained: bool = False
    selection: dict[str, Any] = field(default_factory=dict)  # what selection.json holds
    # A delivered candidate (``opsbench propose-model``): nothing is trained; what was delivered.
    delivered: dict[str, Any] = field(default_factory=dict)
    base_model_version: str | None = None  # what the fine-tune started from (None: nothing trained)


def selection_key(run_id: int, candidate: str) -> str:
    return f"training/run-{run_id:05d}/{candidate}/selection.json"


def _deterministic(seed: int) -> None:
    use_offline_environment()  # before the first transformers import: nothing may download
    import torch  # deferred: torch and transformers take seconds to import
    from transformers import set_seed

    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def read_selection(ws: Workspace, run_id: int, candidate: str) -> dict[str, Any]:
    key = selection_key(run_id, candidate)
    return json.loads(ws.objects.get_text(key)) if ws.objects.exists(key) else {}


def read_dataset_groups(ws: Workspace, dataset_version: str) -> list[dict[str, Any]]:
    """The dataset's groups, from a private copy verified against the sha256 recorded beside
    train.jsonl and in the dataset's manifest (``opslib.control.datasets.open_dataset``). A
    dataset whose artifact is gone or changed is marked unusable (never "latest eligible" again)
    and ``IntegrityFailure`` naming its key is raised: nothing is trained on it."""
    with open_dataset(ws.db, ws.objects, dataset_version) as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def delivery_record(ws: Workspace, row: ModelVersion) -> dict[str, Any]:
    """What the 30 report shows of a delivered model: its provenance and what its validation
    measured, from its ModelVersion row and its (verified) manifest."""
    manifest = read_manifest(ws, row.model_version)
    return {
        "model version": row.model_version,
        "source": row.source,
        "delivered by": row.delivered_by,
        "reason": row.delivery_reason,
        "registered at": row.created_at.isoformat(),
        "embedding dimension": manifest.embedding_dimension,
        "max sequence length": manifest.max_seq_length,
        "encodes at": manifest.encode_precision,
        "files (sha256 in model_manifest.json)": len(manifest.files),
        "artifact": row.artifact_path,
    }


def train_candidate(ws: Workspace, run_id: int, params: TrainingParams, *, progress: bool = True) -> TrainingReport:
    """Train the candidate of RUNNING run ``run_id`` and register it (never overwriting); a
    delivered candidate is verified and recorded as delivered, not trained."""
    run = get_run(ws.db, run_id)
    if run.status is not RunStatus.RUNNING:
        raise RunError(f"run {run_id}: is {run.status.value}, training needs a RUNNING run")
    if not (run.baseline_model_version and run.candidate_model_version):
        raise RunError(f"run {run_id}: baseline and candidate must be fixed before training")
    report = TrainingReport(run_id, run.candidate_model_version, run.baseline_model_version, run.dataset_version or "—")
    with ws.db.read() as session:
        registered = session.get(ModelVersion, run.candidate_model_version)
    if registered is not None and registered.delivered:
        local_model_dir(ws, registered.model_version)  # every file verified against its manifest
        report.delivered = delivery_record(ws, registered)
        log.info("candidate delivered, not trained", extra={"run_id": run_id, "candidate": registered.model_version})
        return report
    if registered is not None:
        report.already_trained = True  # a resumed run: the artifact stands, it is never rewritten
        report.selection = read_selection(ws, run_id, run.candidate_model_version)
        return report
    if not run.dataset_version:
        raise RunError(f"run {run_id}: a dataset must be fixed before training")
    base = params.base_model_version or run.baseline_model_version
    with ws.db.read() as session:
        if session.get(ModelVersion, base) is None:
            raise TrainingError(f"base_model_version {base!r}: not registered (training_base_model_version)")
    report.base_model_version = base

    split = split_groups(read_dataset_groups(ws, run.dataset_version), params.validation_share, params.seed)
    if not split.train:
        raise TrainingError(f"dataset {run.dataset_version}: no groups left to train on after the validation split")
    _deterministic(params.seed)
    train_groups = merge_by_query(split.train)
    log.info("mining hard negatives with the baseline", extra={"run_id": run_id, "groups": len(train_groups)})
    # Negatives hard for the model being fine-tuned: mined with the base it starts from.
    mined, mining = mine_hard_negatives(ws, base, train_groups, params.mining, progress=progress)
    rows, rows_report = training_rows(train_groups, mined, params.negatives_per_row)
    if not rows:
        raise TrainingError(f"dataset {run.dataset_version}: no trainable rows (every group lacks a negative)")
    report.rows, report.groups = len(rows), rows_report.groups_used
    report.groups_without_negatives = rows_report.groups_without_negatives

    from sentence_transformers import SentenceTransformer  # deferred: loads torch

    device = resolve_device(ws.settings.device)
    mixed_precision = training_mixed_precision(ws.settings.encode_precision, device)
    validator = Validator(ws, validation_queries(split.validation), device, mixed_precision)
    baseline_scores = validator.score_registered(run.baseline_model_version) if len(validator) else None
    # A pinned base is where training starts (epoch 0); the baseline stays what 40 judges against.
    pinned = base != run.baseline_model_version
    base_scores = validator.score_registered(base) if len(validator) and pinned else None
    base_path = str(local_model_dir(ws, base))
    guide: list[SentenceTransformer] = []

    def load_guide() -> SentenceTransformer:
        if not guide:
            guide.append(SentenceTransformer(base_path, device=device))
        return guide[0]

    settings = FitSettings(
        params.epochs,
        params.batch_size,
        params.max_seq_length,
        params.seed,
        params.warmup_ratio,
        params.patience,
        device,
        mixed_precision,
        progress,
    )
    results: list[ConfigurationResult] = []
    best_state: dict[str, Any] = {}
    chosen = -1
    serving_length = 0
    configurations = params.configurations()
    for index, configuration in enumerate(configurations):
        log.info(
            "training configuration",
            extra={
                "run_id": run_id,
                "configuration": configuration.label,
                "n": f"{index + 1} of {len(configurations)}",
            },
        )
        _deterministic(params.seed)
        # A private copy of the weights: the endpoint's shared (serving) instance must not change.
        model = SentenceTransformer(base_path, device=device)
        # The candidate reads as far as its baseline did or as it was trained to, whichever is longer.
        serving_length = max(int(model.max_seq_length or 0), params.max_seq_length)

        def score(candidate: SentenceTransformer, length: int = serving_length) -> dict[str, float]:
            return validator.score_model(candidate, length)

        result, state = fit_configuration(model, load_guide, rows, configuration, settings, score)
        results.append(result)
        log.info(
            "configuration trained",
            extra={
                "run_id": run_id,
                "configuration": configuration.label,
                "best_epoch": result.best_epoch,
                "score": result.best_score,
            },
        )
        if chosen < 0 or result.best_score > results[chosen].best_score:
            chosen, best_state = index, state
        del model, state

    winner = results[chosen]
    report.steps = winner.steps
    report.loss_history = winner.loss_history
    model = SentenceTransformer(base_path, device=device)
    refit: dict[str, Any] | None = None
    trained_on = rows_report  # the rows the candidate's weights come from (the refit's, if any)
    if params.refit and split.validation:
        # Every labelled query now trains, for the epochs validation chose (same schedule, stopped there).
        _deterministic(params.seed)
        all_groups = merge_by_query(split.train + split.validation)
        log.info("refit on every labelled query", extra={"run_id": run_id, "epochs": winner.best_epoch})
        all_mined, _ = mine_hard_negatives(ws, base, all_groups, params.mining, progress=progress)
        all_rows, all_rows_report = training_rows(all_groups, all_mined, params.negatives_per_row)
        refit_settings = dataclasses.replace(settings, stop_after=winner.best_epoch)
        refit_result, best_state = fit_configuration(
            model, load_guide, all_rows, winner.configuration, refit_settings, None
        )
        kept_fingerprint = refit_result.epochs[-1].weights_sha256
        refit = {
            "configuration": winner.configuration.label,
            "epochs": winner.best_epoch,
            "epochs_run": len(refit_result.epochs),  # of a schedule params.epochs long, as in selection
            "groups": len(all_groups),
            "rows": all_rows_report.as_record(),
            "steps": refit_result.steps,
            "seconds": round(refit_result.seconds, 1),
            "weights_sha256": kept_fingerprint,
        }
        report.steps, report.loss_history = refit_result.steps, refit_result.loss_history
        report.rows, report.groups = len(all_rows), all_rows_report.groups_used
        report.groups_without_negatives = all_rows_report.groups_without_negatives
        trained_on = all_rows_report
        del model
        model = SentenceTransformer(base_path, device=device)
        kept_epoch = f"the refit's epoch {winner.best_epoch}"
    else:
        kept_fingerprint = winner.epochs[winner.best_epoch - 1].weights_sha256
        kept_epoch = f"epoch {winner.best_epoch}"
    model.load_state_dict(best_state)
    if weights_fingerprint(model) != kept_fingerprint:
        raise TrainingError(f"run {run_id}: the kept weights are not {kept_epoch}'s (fingerprint differs)")
    kept = winner.epochs[winner.best_epoch - 1]
    model.max_seq_length = serving_length
    selection = {
        "run_id": run_id,
        "candidate_model_version": run.candidate_model_version,
        "baseline_model_version": run.baseline_model_version,
        "training_base_model_version": base,  # what the fine-tune started from (the baseline unless pinned)
        "dataset_version": run.dataset_version,
        "selection_metric": SELECTION_METRIC,
        "split": split.as_record()
        | {"validation_queries_scored": len(validator), "train_groups_merged_by_query": len(train_groups)},
        "mining": mining.as_record(),
        "rows": rows_report.as_record(),
        "parameters": params.as_record(),
        "device": device,
        "mixed_precision": mixed_precision,
        "baseline_validation": baseline_scores,
        "base_validation": base_scores,  # a pinned base's own scores (None: the base is the baseline)
        "configurations": [r.as_record() for r in results],
        "selected": chosen,
        "selected_label": winner.configuration.label,
        "selected_epoch": winner.best_epoch,
        "refit": refit,  # None: the candidate is the selected configuration's kept epoch itself
        "serving_max_seq_length": serving_length,
    }
    report.selection = selection
    key = selection_key(run_id, run.candidate_model_version)
    if not ws.objects.exists(key):  # a crashed earlier attempt computed the same bytes
        ws.objects.put_text(key, json.dumps(selection, indent=2, sort_keys=True))
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        out = Path(tmp) / "candidate"
        model.save(str(out))
        register_model(
            ws,
            run.candidate_model_version,
            out,
            base_model_version=base,
            dataset_version=run.dataset_version,
            run_id=run_id,
            training_parameters={
                **params.as_record(),
                "loss": LOSS_NAMES[winner.configuration.loss],
                "learning_rate": winner.configuration.learning_rate,
                "selected_epoch": winner.best_epoch,
                "refit_on_validation_queries": refit is not None,
                "selection": ws.objects.uri(key),
                # The selected configuration's kept epoch; a refit trained on the validation queries too.
                "validation": kept.metrics,
                "baseline_validation": baseline_scores,
                "batch_sampler": "no_duplicates",
                "rows": report.rows,
                "groups": report.groups,
                "groups_without_negatives": report.groups_without_negatives,
                "negatives_in_rows_by_source": trained_on.as_record()["negatives_in_rows_by_source"],
                "steps": report.steps,
                "device": device,  # determinism holds per device and precision
                "mixed_precision": mixed_precision,
                "final_loss": report.loss_history[-1][1] if report.loss_history else None,
            },
        )
    log.info(
        "candidate trained",
        extra={
            "run_id": run_id,
            "candidate": run.candidate_model_version,
            "rows": report.rows,
            "configuration": winner.configuration.label,
            "epoch": winner.best_epoch,
        },
    )
    return report
