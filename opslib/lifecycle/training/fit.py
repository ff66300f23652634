"""Training one configuration: sentence-transformers' Trainer for up to ``epochs`` epochs, the
validation split scored after each, the best epoch's weights kept, and training stopped once
``patience`` epochs in a row have not improved on the best (early stop).

Losses (``LOSSES``): ``mnrl`` — MultipleNegativesRankingLoss (the row's negatives plus every other
row's texts in the batch); ``cached_mnrl`` — the same loss with gradient caching
(CachedMultipleNegativesRankingLoss), so a larger batch, hence more in-batch negatives, fits in
fixed memory; ``gist`` — GISTEmbedLoss with the baseline as guide: an in-batch candidate the
baseline scores above the row's positive is not used as a negative (it is likely an unlabelled
positive).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opslib.infra.logs import get_logger
from opslib.lifecycle.training.validation import SELECTION_METRIC

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

LOSSES = ("mnrl", "cached_mnrl", "gist")
LOSS_NAMES = {
    "mnrl": "MultipleNegativesRankingLoss",
    "cached_mnrl": "CachedMultipleNegativesRankingLoss",
    "gist": "GISTEmbedLoss (guide: the baseline)",
}
CACHED_MINI_BATCH = 16
log = get_logger(__name__)


@dataclass(frozen=True)
class Configuration:
    learning_rate: float
    loss: str = "mnrl"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r}: must be one of {', '.join(LOSSES)}")
        if not 0.0 < self.learning_rate <= 1e-2:
            raise ValueError(f"learning_rate {self.learning_rate}: must be in (0, 0.01]")

    @property
    def label(self) -> str:
        return f"{self.loss} lr={self.learning_rate:g}"


@dataclass
class EpochScore:
    epoch: int
    step: int
    metrics: dict[str, float]
    weights_sha256: str  # fingerprint of the weights scored (the kept epoch's must match the artifact)


@dataclass
class ConfigurationResult:
    configuration: Configuration
    epochs: list[EpochScore] = field(default_factory=list)
    best_epoch: int = 0  # 0: no epoch scored
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0
    loss_history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def best_score(self) -> float:
        return max((e.metrics.get(SELECTION_METRIC, float("-inf")) for e in self.epochs), default=float("-inf"))

    def as_record(self) -> dict[str, Any]:
        return {
            "configuration": asdict(self.configuration),
            "label": self.configuration.label,
            "epochs": [asdict(e) for e in self.epochs],
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "stopped_early": self.stopped_early,
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "final_loss": self.loss_history[-1][1] if self.loss_history else None,
        }


def weights_fingerprint(model: SentenceTransformer) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    max_seq_length: int
    seed: int
    warmup_ratio: float
    patience: int
    device: str
    mixed_precision: str
    progress: bool
    # Refit: train this many epochs of the ``epochs``-long schedule, then stop (no validation).
    stop_after: int | None = None


def fit_configuration(
    model: SentenceTransformer,
    guide: Callable[[], SentenceTransformer],
    rows: list[dict[str, str]],
    configuration: Configuration,
    settings: FitSettings,
    score: Callable[[SentenceTransformer], dict[str, float]] | None,
) -> tuple[ConfigurationResult, dict[str, Any]]:
    """Train ``model`` in place; return the result and the best epoch's weights (a state dict on
    the CPU). ``score`` is the validation scorer; ``guide`` gives the guide model for ``gist``.

    Without a scorer (a refit on every labelled query) nothing is validated: training runs the
    schedule of ``settings.epochs`` epochs, stops after ``settings.stop_after`` of them, and the
    weights returned are that epoch's."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback, set_seed
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    set_seed(settings.seed)
    result = ConfigurationResult(configuration)
    best: dict[str, Any] = {}
    model.max_seq_length = settings.max_seq_length

    class _EpochEnd(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                result.loss_history.append((int(state.global_step), float(logs["loss"])))
                # The kernel's log is where a watcher (the demo's console, an operator's tail -f)
                # sees training move: the notebook's own progress bar reaches no console.
                log.info(
                    "training step",
                    extra={
                        "step": int(state.global_step),
                        "of": int(state.max_steps),
                        "epoch": round(float(state.epoch or 0), 2),
                        "loss": round(float(logs["loss"]), 4),
                    },
                )

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            epoch = len(result.epochs) + 1
            if score is None:
                result.epochs.append(EpochScore(epoch, int(state.global_step), {}, weights_fingerprint(model)))
                if epoch == (settings.stop_after or settings.epochs):
                    best.update(
                        epoch=epoch, state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    )
                    result.stopped_early = epoch < settings.epochs
                    control.should_training_stop = True
                return
            metrics = score(model)
            result.epochs.append(EpochScore(epoch, int(state.global_step), metrics, weights_fingerprint(model)))
            log.info("epoch validated", extra={"epoch": epoch, SELECTION_METRIC: round(metrics[SELECTION_METRIC], 4)})
            if metrics[SELECTION_METRIC] > (best.get("score", float("-inf"))):
                best.update(score=metrics[SELECTION_METRIC], epoch=epoch)
                best["state"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            elif epoch - best["epoch"] >= settings.patience:
                result.stopped_early = epoch < settings.epochs
                control.should_training_stop = True

    if configuration.loss == "mnrl":
        loss: Any = losses.MultipleNegativesRankingLoss(model)
    elif configuration.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH)
    else:
        loss = losses.GISTEmbedLoss(model, guide())

    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "trainer"),
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=configuration.learning_rate,
            warmup_steps=int(settings.warmup_ratio * steps_per_epoch * settings.epochs),
            seed=settings.seed,
            data_seed=settings.seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES,  # a repeated text in a batch is a false negative
            logging_steps=max(1, steps_per_epoch // 10),
            save_strategy="no",
            report_to=[],
            use_cpu=settings.device == "cpu",
            bf16=settings.mixed_precision == "bf16",
            fp16=settings.mixed_precision == "fp16",
            disable_tqdm=not settings.progress,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss, callbacks=[_EpochEnd()]
        )
        if trainer.pop_callback(NotebookProgressCallback) is not None:
            # In a notebook kernel transformers draws its own bar, which divides by a time per step it
            # has not measured yet when training stops after one step (a refit on tiny data): tqdm's.
            trainer.add_callback(ProgressCallback)
        outcome = trainer.train()
    result.steps = int(outcome.global_step)
    result.seconds = time.perf_counter() - started
    result.best_epoch = int(best.get("epoch", 0))
    return result, best.get("state", {})
