"""The paper's CIFAR-10 recipe (section 4.2) as a :class:`~resnet_platform.train.config.TrainConfig`.

Apart from ``paper/recipe.py`` (which trains with it) because building a config imports no training
stack (no Ray Train, no MLflow): the paper jobs' configurations build every net's config to check
their settings before Ray starts, and a bad value costs a second, not a trial.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from resnet_platform.models import get_spec
from resnet_platform.train.config import TrainConfig

from .schedule import PAPER_ITERATIONS, PAPER_MILESTONES, milestones_at, schedule_in_epochs

CIFAR_RECIPE = dict(
    image_size=32,
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    lr_schedule="step",
    lr_gamma=0.1,
    augmentation="pad-crop",
    normalization="cifar10",
    shuffle_buffer=0,  # the ids are fully reshuffled every epoch already
    experiment="resnet-cifar10",
)


def cifar_config(
    data: str,
    *,
    train_rows: int,
    arch: str = "cifar_resnet20",
    iterations: int = PAPER_ITERATIONS,
    milestones: tuple[int, ...] = PAPER_MILESTONES,
    epochs: int | None = None,
    **overrides,
) -> TrainConfig:
    """A TrainConfig with the paper's CIFAR recipe; ``overrides`` are TrainConfig fields."""
    values = dict(CIFAR_RECIPE, data=data, arch=arch)
    values.update(overrides)
    if epochs is None:
        epochs, ms = schedule_in_epochs(train_rows, values["batch_size"], iterations, milestones)
    else:
        ms = milestones_at(epochs, iterations, milestones)
    values.setdefault("epochs", epochs)
    values.setdefault("lr_milestones", ms)
    spec = get_spec(arch)
    if spec.depth >= 110:  # "0.1 is slightly too large to start converging" (section 4.2)
        values.setdefault("error_warmup_lr", 0.01)
    return TrainConfig(**values)


def passed_through(config: object, names: Iterable[str]) -> dict[str, Any]:
    """The settings of a paper job's ``config`` that a net's TrainConfig takes under the same name."""
    return {name: getattr(config, name) for name in names}
