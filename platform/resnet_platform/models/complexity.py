"""Parameters and multiply-add FLOPs, counted by torch's own ``FlopCounterMode``.

Models are built on the ``meta`` device so counting even ResNet-152 or CIFAR-1202 allocates
no memory and takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import build_model, get_spec


@dataclass(frozen=True)
class Complexity:
    arch: str
    layers: int
    params: int
    gflops: float  # multiply-adds x 10^9, the paper's unit
    input_size: int


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one forward pass on one image (FlopCounterMode counts 2 per MAC)."""
    device = next(model.parameters()).device
    x = torch.empty(1, 3, input_size, input_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def complexity(arch: str, **options) -> Complexity:
    spec = get_spec(arch)
    with torch.device("meta"):
        model = build_model(arch, **options)
    return Complexity(
        arch=arch,
        layers=spec.depth,
        params=count_params(model),
        gflops=count_multiply_adds(model, spec.input_size) / 1e9,
        input_size=spec.input_size,
    )
