"""The degradation job's configuration (``jobs/degradation.py``'s flags are generated from it) and
where its data comes from. Light on purpose: the job parses and checks it before anything heavy
(Ray, torch's training stack, MLflow) is imported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_platform.errors import ConfigError
from resnet_platform.models import get_spec
from resnet_platform.settings import check_ranges, setting

from .cifar_recipe import cifar_config, passed_through
from .schedule import milestones_at

DIGITS = "digits"
AUGMENTATIONS = ("none", "pad-crop")
WARMUP_LR = 0.01  # the paper's ResNet-110 warm-up rate (cifar_recipe.cifar_config)

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
        at_least=8,
    )
    train_rows: int | None = setting(
        None,
        "train on the first N training images only (digits and CIFAR; a smoke run)",
        group="data",
        at_least=1,
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
        at_least=0,
    )
    epochs: int = setting(
        12, "the budget: epochs per net; lr /10 at 1/2 and 3/4 of them", group="recipe", at_least=1
    )
    batch_size: int = setting(128, "global batch per net (the paper's 128)", group="recipe", at_least=1)
    lr: float = setting(0.1, "initial learning rate (the paper's 0.1)", group="recipe", above=0)
    warmup_epochs: int | None = setting(
        None,
        f"epochs over which every net's lr ramps linearly from {WARMUP_LR} to --lr (Goyal et al.'s gradual "
        "warm-up); default: a quarter of --epochs; 0: the paper's recipe to the letter (no warm-up below "
        f"110 layers; from 110, lr {WARMUP_LR} until the training error is below 80%%)",
        group="recipe",
        at_least=0,
    )
    augmentation: str | None = setting(
        None,
        "none, or pad-crop (CIFAR's 4-pixel pad + random crop + flip); default: none on the digits "
        "(flipped digits are other digits), pad-crop otherwise",
        group="recipe",
        choices=AUGMENTATIONS,
    )
    num_workers: int = setting(1, "DDP workers per net", group="execution", at_least=1)
    use_gpu: bool = setting(False, "one GPU per worker", group="execution")
    cpus_per_worker: float = setting(
        0.2,
        "CPUs reserved per training worker (one thread each on CPU); leave a whole CPU for the data tasks",
        group="execution",
        above=0,
    )
    max_concurrent_trials: int = setting(2, "nets trained at once", group="execution", at_least=1)
    trial_retries: int = setting(
        1,
        "times a failed trial is started again (continuing from its last checkpoint); on a shared "
        "machine Ray's memory monitor may kill a worker",
        group="execution",
        at_least=0,
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
        """Every setting checked here, on the driver, before Ray starts: the declared ranges, the
        grid's shape, and each net's training config as its trial will build it (a batch that does
        not divide over the workers fails now, not in every trial)."""
        self.depths = tuple(int(d) for d in self.depths)
        self.seeds = tuple(int(s) for s in self.seeds)
        check_ranges(self)
        if len(set(self.depths)) < 2:
            raise ConfigError(f"--depths: need at least two depths to compare, got {self.depths}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds must be distinct and at least one, got {self.seeds}")
        if self.augmentation is not None and self.augmentation not in AUGMENTATIONS:
            raise ConfigError(
                f"unknown augmentation {self.augmentation!r}; valid: {', '.join(AUGMENTATIONS)}"
            )
        first_division = milestones_at(self.epochs)[0]  # where cifar_config first divides the lr
        if self.warmup_epochs is not None and self.warmup_epochs >= first_division:
            raise ConfigError(
                f"--warmup-epochs must end before the first lr division (epoch {first_division} of "
                f"{self.epochs}), got {self.warmup_epochs}"
            )
        for arch in self.archs:  # unknown depths fail here, listing the valid nets
            cifar_config(self.data, train_rows=1, **self.net_settings(arch, self.seeds[0]))

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

    def net_settings(self, arch: str, seed: int) -> dict[str, Any]:
        """The TrainConfig fields (over ``cifar_config``'s recipe) of the net ``arch`` at ``seed``,
        less where its run is kept (storage, name, resume, tracking URI: the trial adds them)."""
        same = ("epochs", "batch_size", "lr", "num_workers", "use_gpu", "cpus_per_worker", "experiment")
        return dict(
            passed_through(self, same),
            arch=arch,
            augmentation=self.resolved_augmentation,
            channels_last=self.use_gpu,  # NCHW is about 30% faster for these nets on CPU threads
            seed=seed,
            **self.warmup_overrides(),
        )

    def warmup_overrides(self) -> dict[str, Any]:
        """The TrainConfig fields of the warm-up, the same for every net: the training loop's linear
        warm-up from ``WARMUP_LR`` (``train/optim.py``, ``lr_factor``), and no error-threshold
        warm-up; none at 0 epochs, where ``cifar_recipe.cifar_config`` applies the paper's own rule."""
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
