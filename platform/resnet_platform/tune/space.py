"""The search space of a sweep: architectures x learning rate (x weight decay, batch size).

Architectures are always a grid (the question is how error changes with depth); the learning rate is
log-uniform between ``lr_min`` and ``lr_max`` with ``samples`` draws per grid point, or a grid
(``lrs``, each repeated ``samples`` times). Everything is checked here, before Ray starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from resnet_platform.models import get_spec


@dataclass(frozen=True)
class SearchSpace:
    archs: tuple[str, ...]
    lrs: tuple[float, ...] = ()  # a grid; empty: log-uniform in [lr_min, lr_max]
    lr_min: float | None = None
    lr_max: float | None = None
    samples: int = 1
    weight_decays: tuple[float, ...] = ()  # a grid; empty: the base config's
    batch_sizes: tuple[int, ...] = ()  # a grid (global batch); empty: the base config's

    def validate(self, workers_per_trial: int = 1) -> None:
        """Raise ValueError naming what is wrong: nothing starts on an empty or invalid space."""
        if not self.archs:
            raise ValueError("empty search space: give at least one architecture (--archs)")
        for arch in self.archs:
            get_spec(arch)  # "unknown architecture 'x'; valid: ..."
        if len(set(self.archs)) != len(self.archs):
            raise ValueError(f"duplicate architectures in {', '.join(self.archs)}")
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if self.lrs:
            if self.lr_min is not None or self.lr_max is not None:
                raise ValueError("give either a learning-rate grid (--lrs) or a range (--lr-min/--lr-max)")
            bad = [lr for lr in self.lrs if not (lr > 0 and math.isfinite(lr))]
            if bad:
                raise ValueError(f"learning rates must be positive and finite, got {bad}")
        else:
            if self.lr_min is None or self.lr_max is None:
                raise ValueError("empty learning-rate space: give --lrs, or both --lr-min and --lr-max")
            if not (0 < self.lr_min and math.isfinite(self.lr_max)):
                raise ValueError(f"lr-min must be positive, got {self.lr_min}")
            if self.lr_min > self.lr_max:
                raise ValueError(f"lr-min {self.lr_min} is greater than lr-max {self.lr_max}")
        bad_wd = [wd for wd in self.weight_decays if wd < 0]
        if bad_wd:
            raise ValueError(f"weight decays must be >= 0, got {bad_wd}")
        for bs in self.batch_sizes:
            if bs < 1 or bs % workers_per_trial:
                raise ValueError(
                    f"batch size {bs} must be positive and divide evenly over {workers_per_trial} workers"
                )

    @property
    def num_trials(self) -> int:
        n = self.samples * len(self.archs)
        for grid in (self.lrs, self.weight_decays, self.batch_sizes):
            n *= max(len(grid), 1)
        return n

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's ``param_space`` (use with ``TuneConfig(num_samples=self.samples)``)."""
        from ray import tune

        space: dict[str, Any] = {"arch": tune.grid_search(list(self.archs))}
        if self.lrs:
            space["lr"] = tune.grid_search(list(self.lrs))
        elif self.lr_min == self.lr_max:
            space["lr"] = self.lr_min
        else:
            space["lr"] = tune.loguniform(self.lr_min, self.lr_max)
        if self.weight_decays:
            space["weight_decay"] = tune.grid_search(list(self.weight_decays))
        if self.batch_sizes:
            space["batch_size"] = tune.grid_search(list(self.batch_sizes))
        return space


def parse_list(text: str | None, kind: type = str) -> tuple:
    """``"a, b,,c"`` -> ``(a, b, c)`` converted with ``kind``; None or blank -> ``()``."""
    if not text:
        return ()
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ValueError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from err
