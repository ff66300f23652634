"""Stage 30, training: validation split → mined hard negatives → rows → a grid of configurations,
each with per-epoch validation → the best one registered as the candidate (see ``stage``)."""

from opslib.lifecycle.training.fit import LOSSES, Configuration
from opslib.lifecycle.training.mining import MiningParams
from opslib.lifecycle.training.rows import training_rows
from opslib.lifecycle.training.stage import (
    TrainingError,
    TrainingParams,
    TrainingReport,
    read_selection,
    train_candidate,
)

__all__ = [
    "LOSSES",
    "Configuration",
    "MiningParams",
    "TrainingError",
    "TrainingParams",
    "TrainingReport",
    "read_selection",
    "train_candidate",
    "training_rows",
]
