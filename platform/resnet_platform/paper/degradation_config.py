"""The degradation job's configuration (``jobs/degradation.py``'s flags are generated from it) and
where its data comes from. Light on purpose: the job parses and checks it before anything heavy
(Ray, torch's training stack, MLflow) is imported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_platform.models import get_spec
from resnet_platform.settings import setting

from .schedule import milestones_at

DIGITS = "digits"
AUGMENTATIONS = ("none", "pad-crop")
WARMUP_LR = 0.01  # the paper's ResNet-110 warm-up rate (recipe.cifar_config)

# Flag groups, in the order ``--help`` shows them.
FLAG_GROUPS = {
    "data": "data",
    "grid": "the comparison",
    "recipe": "the paper's CIFAR recipe, scaled to the budget",
    "execution": "execution",
    "output": "output and tracking",
}


@dataclass
class DegradationConfig:
    """Plain against residual nets at the same budget: the flags of ``jobs/degradation.py`` are
    generated from these fields."""

    data: str = setting(
        DIGITS,
        "'digits' (scikit-learn's digits, the demo's data set, in memory), a CIFAR-10 archive or "
        "folder, or a data set prepared by prepare_imagenet.py (path or URI)",
        group="data",
    )
    digits_size: int = setting(
        16,
        "side of the digits in pixels: the 8x8 glyphs upsampled bilinearly (the demo writes 32; 16 holds "
        "the same information at about a third of the CPU time)",
        group="data",
    )
    train_rows: int | None = setting(
        None, "train on the first N training images only (digits and CIFAR; a smoke run)", group="data"
    )
    depths: tuple[int, ...] = setting(
        (20, 56), "6n+2 depths; the shallowest and deepest are compared", group="grid"
    )
    seeds: tuple[int, ...] = setting((0, 1, 2), "one trial per net and seed", group="grid")
    margin: float = setting(
        0.01,
        "the deepest ResNet may end this much (a fraction) above the shallowest in training error and "
        "still count as not degrading",
        group="grid",
    )
    epochs: int = setting(12, "the budget: epochs per net; lr /10 at 1/2 and 3/4 of them", group="recipe")
    batch_size: int = setting(128, "global batch per net (the paper's 128)", group="recipe")
    lr: float = setting(0.1, "initial learning rate (the paper's 0.1)", group="recipe")
    warmup_epochs: int | None = setting(
        None,
        f"epochs over which every net's lr ramps linearly from {WARMUP_LR} to --lr (Goyal et al.'s gradual "
        "warm-up); default: a quarter of --epochs; 0: the paper's recipe to the letter (no warm-up below "
        f"110 layers; from 110, lr {WARMUP_LR} until the training error is below 80%%)",
        group="recipe",
    )
    augmentation: str | None = setting(
        None,
        "none, or pad-crop (CIFAR's 4-pixel pad + random crop + flip); default: none on the digits "
        "(flipped digits are other digits), pad-crop otherwise",
        group="recipe",
        choices=AUGMENTATIONS,
    )
    num_workers: int = setting(1, "DDP workers per net", group="execution")
    use_gpu: bool = setting(False, "one GPU per worker", group="execution")
    cpus_per_worker: float = setting(
        0.2,
        "CPUs reserved per training worker (one thread each on CPU); leave a whole CPU for the data tasks",
        group="execution",
    )
    max_concurrent_trials: int = setting(2, "nets trained at once", group="execution")
    trial_retries: int = setting(
        1,
        "times a failed trial is started again (continuing from its last checkpoint); on a shared "
        "machine Ray's memory monitor may kill a worker",
        group="execution",
    )
    storage: str = setting("runs", "where runs and checkpoints go (path or s3://)", group="output")
    name: str | None = setting(None, "grid name (default: degradation-TIMESTAMP)", group="output")
    output: str = setting(
        "degradation-results", "where the figure and the tables are written", group="output"
    )
    experiment: str = setting("resnet-degradation", group="output")
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="output"
    )
    track: bool = setting(True, group="output", cli=False)  # the job's --no-mlflow

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.seeds = tuple(int(s) for s in self.seeds)
        if len(set(self.depths)) < 2:
            raise ValueError(f"need at least two depths to compare, got {self.depths}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_concurrent_trials < 1:
            raise ValueError("epochs, batch size and max concurrent trials must be at least 1")
        if self.trial_retries < 0:
            raise ValueError(f"trial retries must not be negative, got {self.trial_retries}")
        if self.train_rows is not None and self.train_rows < 1:
            raise ValueError(f"train rows must be positive, got {self.train_rows}")
        if self.augmentation is not None and self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; valid: {', '.join(AUGMENTATIONS)}")
        if self.margin < 0:
            raise ValueError(f"margin must not be negative, got {self.margin}")
        first_division = milestones_at(self.epochs)[0]  # where recipe.cifar_config first divides the lr
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < first_division:
            raise ValueError(
                f"warm-up epochs must be at least 0 and end before the first lr division (epoch "
                f"{first_division} of {self.epochs}), got {self.warmup_epochs}"
            )
        self.archs  # noqa: B018  (unknown depths fail here, listing the valid nets)

    @property
    def archs(self) -> list[str]:
        archs = [f"cifar_{family}{d}" for family in ("plain", "resnet") for d in sorted(self.depths)]
        for arch in archs:
            get_spec(arch)
        return archs

    @property
    def resolved_augmentation(self) -> str:
        if self.augmentation is not None:
            return self.augmentation
        return "none" if self.data == DIGITS else "pad-crop"

    @property
    def resolved_warmup_epochs(self) -> int:
        return self.epochs // 4 if self.warmup_epochs is None else self.warmup_epochs

    def warmup_overrides(self) -> dict[str, Any]:
        """The TrainConfig fields of the warm-up, the same for every net: the training loop's linear
        warm-up from ``WARMUP_LR`` (``train/optim.py``, ``lr_factor``), and no error-threshold
        warm-up; none at 0 epochs, where ``recipe.cifar_config`` applies the paper's own rule."""
        epochs = self.resolved_warmup_epochs
        if epochs == 0:
            return {}
        return {
            "warmup_epochs": epochs,
            "warmup_start_factor": min(1.0, WARMUP_LR / self.lr),
            "error_warmup_lr": None,
        }


# ----------------------------------------------------------------------------------------- data


def data_source(data: str) -> str:
    """``digits``, ``prepared`` (a folder or prefix with a manifest.json) or ``cifar``."""
    if data == DIGITS:
        return "digits"
    from resnet_platform.data.manifest import MANIFEST_NAME, read_text
    from resnet_platform.storage import join

    try:
        has_manifest = read_text(join(data, MANIFEST_NAME)) is not None
    except OSError:  # e.g. a path below a file (the .tar.gz itself)
        has_manifest = False
    return "prepared" if has_manifest else "cifar"
