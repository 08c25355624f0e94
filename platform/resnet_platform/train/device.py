"""What a worker sets up on its device before training: seeds, the AMP dtype, the normalizer.

Batches cross from Ray Data as uint8 NHWC (4x fewer bytes than float); :class:`Normalizer` turns them
into normalized float NCHW on the device.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from resnet_platform.data.transforms import IMAGENET_MEAN, IMAGENET_STD, channel_stats, normalize


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 on request, never on CPU (slower there, not faster)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (the model itself when not wrapped)."""
    return model.module if hasattr(model, "module") else model


class Normalizer(nn.Module):
    """uint8 NHWC -> float NCHW normalized, channels_last in memory when asked.

    ``permute`` of an NHWC tensor already has channels_last strides; ``contiguous`` with that
    format makes them exact (DDP warns about mismatched grad strides otherwise).
    """

    def __init__(
        self,
        device: torch.device,
        channels_last: bool,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.mean, self.std = channel_stats(mean, std, device)
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std).contiguous(memory_format=self.format)
