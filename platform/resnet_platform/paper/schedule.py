"""The paper's CIFAR schedule in numbers (section 4.2): 64k iterations, the lr divided by 10 at 32k
and 48k. Plain arithmetic with no imports, so the degradation job's configuration can check a
warm-up against the first division without importing the training stack (``paper/recipe.py``)."""

from __future__ import annotations

import math

PAPER_ITERATIONS = 64_000
PAPER_MILESTONES = (32_000, 48_000)


def steps_per_epoch(train_rows: int, batch_size: int) -> int:
    return math.ceil(train_rows / batch_size)


def schedule_in_epochs(
    train_rows: int,
    batch_size: int,
    iterations: int = PAPER_ITERATIONS,
    milestones: tuple[int, ...] = PAPER_MILESTONES,
) -> tuple[int, tuple[int, ...]]:
    """(epochs, milestone epochs) closest to the given iteration counts."""
    steps = steps_per_epoch(train_rows, batch_size)
    return max(1, round(iterations / steps)), tuple(max(1, round(m / steps)) for m in milestones)


def milestones_at(
    epochs: int, iterations: int = PAPER_ITERATIONS, milestones: tuple[int, ...] = PAPER_MILESTONES
) -> tuple[int, ...]:
    """The epochs at which the lr is divided when training lasts ``epochs``: the paper's milestones
    kept at their fractions of its ``iterations`` (1/2 and 3/4). The one formula: ``cifar_config``
    and the degradation job's warm-up check both use it."""
    return tuple(max(1, round(epochs * m / iterations)) for m in milestones)
