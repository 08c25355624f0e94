"""Optimizer and learning-rate schedule, stepped once per epoch as torchvision's reference does (the
ResNet-110 low-rate phase ends at the step its training error falls below the threshold)."""

from __future__ import annotations

import math

import torch
from torch import nn

from resnet_platform.models.freeze import head_parameters

from .config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; optionally no weight decay on BN parameters and biases (1-d tensors).
    Frozen parameters (``--freeze``) are left out; ``--head-lr-factor`` gives the classifier its own
    groups at that multiple of every rate (the schedule scales each group's own base rate)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.no_bn_weight_decay:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": config.weight_decay}]
    if config.head_lr_factor != 1.0:
        groups = split_head(groups, head_parameters(model), config.base_lr * config.head_lr_factor)
    return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum)


def split_head(groups: list[dict], head: list[nn.Parameter], head_lr: float) -> list[dict]:
    """Each group split in two: the classifier's parameters (rate ``head_lr``) after the rest, so
    ``param_groups[0]`` (the rate logged as ``lr``) stays the backbone's."""
    ids = {id(p) for p in head}
    body = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    heads = [{**g, "params": [p for p in g["params"] if id(p) in ids], "lr": head_lr} for g in groups]
    return [g for g in body + heads if g["params"]]


def lr_factor(epoch: int, config: TrainConfig) -> float:
    """Multiplier of the base rate for the epoch with 0-based index ``epoch``.

    Milestones are absolute epochs (30 and 60 stay 30 and 60 with a warmup in front); the cosine
    runs from the end of the warmup to the last epoch. The warmup ramps ``(epoch + 1) / (w + 1)``
    (Goyal et al.), or from ``warmup_start_factor`` linearly towards 1 (torchvision's ``LinearLR``:
    0.01, 0.208, ... for 0.01 over 5 epochs).
    """
    w = config.warmup_epochs
    warm = (epoch + 1) / (w + 1) if epoch < w else 1.0
    if epoch < w and config.warmup_start_factor is not None:  # torchvision's LinearLR warmup
        s = config.warmup_start_factor
        warm = s + (1.0 - s) * epoch / w
    if config.lr_schedule == "step":
        return warm * config.lr_gamma ** sum(epoch >= m for m in config.lr_milestones)
    if config.lr_schedule == "cosine":
        t = min(max((epoch - w) / max(1, config.epochs - w), 0.0), 1.0)
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    return warm  # plateau: the decay comes from ReduceLROnPlateau once the warmup is over


class EpochSchedule:
    """The learning rate of each epoch; ``step(val_error)`` after every epoch.

    ``LambdaLR`` applies :func:`lr_factor`; for ``plateau`` it only covers the warmup, then
    torch's ``ReduceLROnPlateau`` divides the rate when the validation error stops improving
    (the paper's own wording).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, lr_scale: float = 1.0) -> None:
        """``lr_scale``: factor on every rate (an elastic group below its full size, ``train/elastic.py``)."""
        self.config = config
        self.optimizer = optimizer
        self.lr_scale = lr_scale
        self.epochs_done = 0
        # ResNet-110's rule: a low rate until the training error falls below a threshold.
        self.error_warmup = config.error_warmup_lr is not None
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: lr_factor(e, config) * self._error_warmup_factor() * self.lr_scale
        )
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.lr_gamma, patience=config.plateau_patience
            )
            if config.lr_schedule == "plateau"
            else None
        )

    def _error_warmup_factor(self) -> float:
        return self.config.error_warmup_lr / self.config.base_lr if self.error_warmup else 1.0

    def observe_step_error(self, batch_error: float) -> None:
        """After an optimizer step during the ResNet-110 low-rate phase: the global batch's training
        error. Below the threshold, the phase ends now and the next step trains at the schedule's
        rate: the paper's "until the training error is below 80% (about 400 iterations)" is a count
        of iterations, and an epoch of a small data set is a dozen of them, so a once-per-epoch check
        kept the low rate an epoch too long (ResNet-56 on the digits sharpened at 0.01 for 24 steps,
        then blew up at 0.1: BENCHMARKS.md, "Degradation at small scale")."""
        if not self.error_warmup or batch_error >= self.config.error_warmup_threshold:
            return
        self.error_warmup = False
        if self.plateau is not None and self.epochs_done > self.config.warmup_epochs:
            for group in self.optimizer.param_groups:  # the plateau scheduler multiplies the rate on
                group["lr"] *= self.config.base_lr / self.config.error_warmup_lr
            return
        for group, base, factor in zip(
            self.optimizer.param_groups, self.lambda_lr.base_lrs, self.lambda_lr.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(self.lambda_lr.last_epoch)

    def step(self, val_error: float, train_error: float | None = None) -> None:
        """After each epoch; ``train_error`` ends the ResNet-110 low-rate phase once below threshold
        (when no step's batch did first: :meth:`observe_step_error`)."""
        if self.error_warmup and train_error is not None and train_error < self.config.error_warmup_threshold:
            self.error_warmup = False
        self.epochs_done += 1
        if self.plateau is not None and self.epochs_done > self.config.warmup_epochs:
            self.plateau.step(val_error)
        else:
            self.lambda_lr.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "epochs_done": self.epochs_done,
            "error_warmup": self.error_warmup,
            "lambda_lr": self.lambda_lr.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        self.error_warmup = state.get("error_warmup", False)
        self.lambda_lr.load_state_dict(state["lambda_lr"])
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
        # The optimizer's rates were saved at the old group size's scale: move them to this one's
        # (the lambda schedule recomputes from the base rate at its next step; plateau multiplies on).
        ratio = self.lr_scale / float(state.get("lr_scale", 1.0))
        if ratio != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= ratio
