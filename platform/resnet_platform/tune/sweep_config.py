"""What a sweep is asked (``SweepConfig``: a base training config and a search space) and what it
returns (``SweepOutcome``); the metric ASHA compares and the names of the files it writes."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_platform.errors import UserError
from resnet_platform.train.config import TrainConfig

from .results import TrialRow
from .space import SearchSpace

METRIC = "val_top1_error"
MODE = "min"
TRIALS_DIR = "trials"
RESULTS_MD = "sweep_results.md"
RESULTS_CSV = "sweep_results.csv"
PLOT_PNG = "val_error_vs_lr.png"


class SweepExistsError(UserError, ValueError):
    pass


@dataclass
class SweepConfig:
    """``base`` holds every training setting a trial does not vary (data, epochs, workers per
    trial, storage, experiment, ...); ``space`` what it does."""

    base: TrainConfig
    space: SearchSpace
    name: str | None = None
    grace_epochs: int = 1
    reduction_factor: float = 2.0
    max_concurrent: int = 1
    register_best: str | None = None
    resume: bool = False
    search_seed: int | None = None  # seeds the learning-rate draws

    def validate(self) -> None:
        self.space.validate(self.base.num_workers)
        if not 1 <= self.grace_epochs <= self.base.epochs:
            raise ValueError(f"grace epochs must be between 1 and epochs ({self.base.epochs})")
        if self.reduction_factor <= 1:
            raise ValueError(f"reduction factor must be greater than 1, got {self.reduction_factor}")
        if self.max_concurrent < 1:
            raise ValueError(f"max concurrent trials must be at least 1, got {self.max_concurrent}")


@dataclass
class SweepOutcome:
    name: str
    path: str  # storage URI of the sweep (Tune state + trials/)
    rows: list[TrialRow]
    parent_run_id: str | None
    interrupted: bool = False
    best: TrialRow | None = None
    model_uri: str | None = None  # the best trial's model, when logged
    model_version: str | None = None  # its registered version, when registered
