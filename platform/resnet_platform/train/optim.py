"""Optimizer and learning-rate schedule, stepped once per epoch as torchvision's reference does."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; optionally no weight decay on BN parameters and biases (1-d tensors)."""
    if config.no_bn_weight_decay:
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum)


class EpochSchedule:
    """Warmup, then step / cosine / plateau decay; ``step(val_error)`` after every epoch.

    torch's schedulers do the arithmetic; this class only chains warmup in front of
    ``ReduceLROnPlateau`` (which ``SequentialLR`` cannot hold) and gives one state_dict.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
        self.config = config
        self.epochs_done = 0
        sched = torch.optim.lr_scheduler
        self.warmup = (
            sched.LinearLR(
                optimizer, start_factor=1.0 / (config.warmup_epochs + 1), total_iters=config.warmup_epochs
            )
            if config.warmup_epochs
            else None
        )
        if config.lr_schedule == "step":
            self.main = sched.MultiStepLR(
                optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma
            )
        elif config.lr_schedule == "cosine":
            self.main = sched.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs - config.warmup_epochs))
        else:
            self.main = sched.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.lr_gamma, patience=config.plateau_patience
            )
        self.optimizer = optimizer

    def step(self, val_error: float) -> None:
        self.epochs_done += 1
        if self.warmup is not None and self.epochs_done <= self.config.warmup_epochs:
            self.warmup.step()
        elif isinstance(self.main, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.main.step(val_error)
        else:
            self.main.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "epochs_done": self.epochs_done,
            "warmup": self.warmup.state_dict() if self.warmup else None,
            "main": self.main.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        if self.warmup is not None and state["warmup"] is not None:
            self.warmup.load_state_dict(state["warmup"])
        self.main.load_state_dict(state["main"])
