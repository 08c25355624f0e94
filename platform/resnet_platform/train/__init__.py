"""Ray Train DDP training with the paper's recipe."""

from .config import FaultInjection, TrainConfig

__all__ = ["FaultInjection", "TrainConfig"]
