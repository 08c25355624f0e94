"""The training techniques beyond the paper's recipe, wired into the per-worker loop in one place.

Each is a ``TrainConfig`` setting (a flag) and off by default, so the paper's recipe runs exactly as
before. The pieces live in their own modules; this one checks the settings on the driver and holds
what one worker needs during a run:

- progressive resizing and a separate eval resolution (``train/resolution.py``);
- Mixup / CutMix on the device per batch, with label smoothing (``train/mixing.py``);
- TrivialAugmentWide / RandAugment / random erasing, per image in the decode (``data/augment.py``);
- an EMA of the weights, validated and checkpointed beside them (``train/ema.py``);
- gradient accumulation (``train/accumulate.py``);
- a linear warmup from a given fraction of the rate (``train/optim.py``).

``train/recipes.py`` bundles them into ``--recipe`` presets.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from resnet_platform.data.augment import AUTO_AUGMENTS

from . import resolution
from .ema import ModelEma, adjusted_decay
from .mixing import BatchMixer

log = logging.getLogger(__name__)

EMA_PREFIX = "ema_"  # the EMA's validation metrics: ema_val_top1_error, ...


def check(config) -> None:
    """Refuse impossible technique settings on the driver (``TrainConfig.__post_init__``)."""
    if config.auto_augment not in AUTO_AUGMENTS:
        raise ValueError(f"unknown auto_augment {config.auto_augment!r}; valid: {', '.join(AUTO_AUGMENTS)}")
    if not 0 <= config.random_erase <= 1:
        raise ValueError(f"random erase is a probability, got {config.random_erase}")
    if config.mixup_alpha < 0 or config.cutmix_alpha < 0:
        raise ValueError("mixup and cutmix alphas must be >= 0 (0: off)")
    if not 0 < config.ema_decay < 1 or config.ema_steps < 1:
        raise ValueError("ema decay must be in (0, 1) and ema steps at least 1")
    if config.grad_accum_steps < 1:
        raise ValueError(f"grad accumulation steps must be at least 1, got {config.grad_accum_steps}")
    per_step = config.max_workers * config.grad_accum_steps  # the full size of an elastic group
    if config.batch_size % per_step:
        raise ValueError(
            f"global batch {config.batch_size} does not divide into {config.max_workers} workers x "
            f"{config.grad_accum_steps} micro-batches"
        )
    if config.warmup_start_factor is not None and not 0 < config.warmup_start_factor <= 1:
        raise ValueError(f"warmup start factor must be in (0, 1], got {config.warmup_start_factor}")
    for name in ("val_image_size", "val_resize_size", "progressive_min_size"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if config.progressive_min_size is not None:
        if config.progressive_min_size > config.image_size:
            raise ValueError(
                f"progressive resizing grows to --image-size {config.image_size}: the start size "
                f"{config.progressive_min_size} must not exceed it"
            )
        ramp = tuple(config.progressive_ramp)
        if len(ramp) != 2 or not 0 <= ramp[0] <= ramp[1] <= 1 or config.progressive_step < 1:
            raise ValueError(
                f"progressive ramp must be two fractions 0 <= start <= end <= 1 and the step positive, "
                f"got {ramp} and {config.progressive_step}"
            )
    if config.deterministic and (config.auto_augment != "none" or config.random_erase > 0):
        raise ValueError(
            "deterministic runs cannot replay random augmentations: no --auto-augment or --random-erase"
        )


def uses_soft_targets(config) -> bool:
    return config.mixup_alpha > 0 or config.cutmix_alpha > 0


class WorkerTechniques:
    """One worker's state for the techniques: the mixer, the EMA, the resolution schedule."""

    def __init__(self, config, net: nn.Module, device: torch.device) -> None:
        """``net``: the unwrapped network the optimizer trains (not its DDP or compiled wrapper)."""
        self.config = config
        self.net = net
        self.device = device
        self.mixer = BatchMixer(config.num_classes, config.mixup_alpha, config.cutmix_alpha)
        self.ema: ModelEma | None = None
        if config.ema:
            decay = adjusted_decay(config.ema_decay, config.batch_size, config.ema_steps, config.epochs)
            self.ema = ModelEma(net, decay)

    def train_size(self, epoch: int) -> int:
        return resolution.train_size(self.config, epoch)

    def prepare(self, x: torch.Tensor, y: torch.Tensor, size: int, memory_format):
        """Normalized NCHW batch -> (input, loss target, labels the error is counted against).

        Resized to ``size`` only under a progressive schedule: otherwise the batch keeps the size its
        data came in (the pipeline's crop, or an in-memory set's own, e.g. the degradation job's
        16-pixel digits), the size validation sees too. Resizing those to ``--image-size`` trained
        at 32 pixels and validated at 16 (test error at chance, found 2026-11-27)."""
        if self.config.progressive_min_size is not None:
            x = resolution.resize_batch(x, size)
        x, target, hard = self.mixer(x, y)
        return x.contiguous(memory_format=memory_format), target, hard

    def after_step(self, step: int, epoch: int) -> None:
        """After each optimizer step (``step`` counts them from the start of the run)."""
        if self.ema is not None and step % self.config.ema_steps == 0:
            self.ema.update(self.net, warmup=epoch < self.config.warmup_epochs)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Prefix of the metric names -> network to validate."""
        models = {"": model}
        if self.ema is not None:
            models[EMA_PREFIX] = self.ema.module
        return models

    def state_dict(self) -> dict:
        return {"model_ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, saved: dict) -> None:
        """From a checkpoint; the restored network seeds an EMA the checkpoint lacks."""
        if self.ema is None:
            return
        if saved.get("model_ema") is not None:
            self.ema.load_state_dict(saved["model_ema"])
        else:  # a run continued with --ema that was written without it: average from here on
            log.warning("the checkpoint has no EMA weights: the EMA starts from the restored weights")
            self.ema.module.load_state_dict(self.net.state_dict())
            self.ema.fresh = True
