"""Stage 30: fine-tune the run's baseline on the run's dataset → the candidate model artifact.

Training pairs come from the retrieval groups with ``MultipleNegativesRankingLoss``: each
``(query, positive)`` row carries one hard negative, and the other rows of the batch are extra
in-batch negatives. **Confidence** decides which negative a row carries: a group's negatives are
taken in descending confidence (``exposed_unused`` 0.4 — shown but not used, the informative,
hard ones — before ``random_same_project`` 0.2), cycling when a group has more positives than
negatives. All positives of rule v1 share one confidence (0.8), so it does not weight rows.
Groups without any negative are counted and left out (the loss needs one per row).

Deterministic for a seed on one device at one precision (both recorded in the manifest): seeded
shuffling, seeded initialisation, deterministic torch kernels. Training runs on ``OPS_DEVICE``,
autocast to the device's native half precision (bf16 on GPUs and on CPUs with AMX / AVX-512 BF16;
``opslib.infra.precision.training_mixed_precision``) with fp32 weights and optimizer state.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opslib.control.runs import RunError, get_run
from opslib.db.models import ModelVersion, RunStatus
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.model_artifacts import local_model_dir, register_model
from opslib.infra.offline import use_offline_environment
from opslib.infra.precision import resolve_device, training_mixed_precision
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import read_groups

log = get_logger(__name__)


class TrainingError(Invalid):
    pass


@dataclass(frozen=True)
class TrainingParams:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    max_seq_length: int = 128
    seed: int = 0
    warmup_ratio: float = 0.1


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
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    already_trained: bool = False


def training_rows(groups: Any) -> tuple[list[dict[str, str]], int, int]:
    """(rows, groups used, groups skipped for lack of negatives) — see the module docstring."""
    rows: list[dict[str, str]] = []
    used = skipped = 0
    for group in groups:
        negatives = sorted(group["negatives"], key=lambda n: -n["confidence"])  # stable: keeps rule order
        if not negatives:
            skipped += 1
            continue
        used += 1
        for i, positive in enumerate(group["positives"]):
            rows.append(
                {
                    "anchor": group["query_text"],
                    "positive": positive["text"],
                    "negative": negatives[i % len(negatives)]["text"],
                }
            )
    return rows, used, skipped


def _deterministic(seed: int) -> None:
    use_offline_environment()  # before the first transformers import: nothing may download
    import torch  # deferred: torch and transformers take seconds to import
    from transformers import set_seed

    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_candidate(ws: Workspace, run_id: int, params: TrainingParams, *, progress: bool = True) -> TrainingReport:
    """Train the candidate of RUNNING run ``run_id`` and register it (never overwriting)."""
    run = get_run(ws.db, run_id)
    if run.status is not RunStatus.RUNNING:
        raise RunError(f"run {run_id}: is {run.status.value}, training needs a RUNNING run")
    if not (run.dataset_version and run.baseline_model_version and run.candidate_model_version):
        raise RunError(f"run {run_id}: dataset, baseline and candidate must be fixed before training")
    report = TrainingReport(run_id, run.candidate_model_version, run.baseline_model_version, run.dataset_version)
    with ws.db.read() as session:
        if session.get(ModelVersion, run.candidate_model_version) is not None:
            report.already_trained = True  # a resumed run: the artifact stands, it is never rewritten
            return report

    rows, report.groups, report.groups_without_negatives = training_rows(read_groups(ws, run.dataset_version))
    if not rows:
        raise TrainingError(f"dataset {run.dataset_version}: no trainable rows (every group lacks a negative)")
    report.rows = len(rows)

    _deterministic(params.seed)
    # Deferred: datasets, sentence_transformers and transformers take seconds; only training needs them.
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback

    device = resolve_device(ws.settings.device)
    mixed_precision = training_mixed_precision(ws.settings.encode_precision, device)
    # A private copy of the weights (fp32 master weights; the Trainer autocasts): the endpoint's
    # shared (serving) instance must not change.
    model = SentenceTransformer(str(local_model_dir(ws, run.baseline_model_version)), device=device)
    model.max_seq_length = params.max_seq_length
    loss_history = report.loss_history

    class _RecordLoss(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                loss_history.append((int(state.global_step), float(logs["loss"])))

    steps_per_epoch = math.ceil(len(rows) / params.batch_size)
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "trainer"),
            num_train_epochs=params.epochs,
            per_device_train_batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            warmup_steps=int(params.warmup_ratio * steps_per_epoch * params.epochs),
            seed=params.seed,
            data_seed=params.seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES,  # a repeated text in a batch is a false negative
            logging_steps=max(1, steps_per_epoch // 10),
            save_strategy="no",
            report_to=[],
            use_cpu=device == "cpu",
            bf16=mixed_precision == "bf16",
            fp16=mixed_precision == "fp16",
            disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            loss=MultipleNegativesRankingLoss(model),
            callbacks=[_RecordLoss()],
        )
        result = trainer.train()
        report.steps = int(result.global_step)
        out = Path(tmp) / "candidate"
        model.save(str(out))
        register_model(
            ws,
            run.candidate_model_version,
            out,
            base_model_version=run.baseline_model_version,
            dataset_version=run.dataset_version,
            run_id=run_id,
            training_parameters={
                **params.__dict__,
                "loss": "MultipleNegativesRankingLoss",
                "batch_sampler": "no_duplicates",
                "rows": report.rows,
                "groups": report.groups,
                "groups_without_negatives": report.groups_without_negatives,
                "steps": report.steps,
                "device": device,  # determinism holds per device and precision
                "mixed_precision": mixed_precision,
                "final_loss": loss_history[-1][1] if loss_history else None,
            },
        )
    log.info(
        "candidate trained",
        extra={"run_id": run_id, "candidate": run.candidate_model_version, "rows": report.rows, "steps": report.steps},
    )
    return report
