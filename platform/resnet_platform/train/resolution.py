"""Train and evaluation resolutions: progressive resizing over the epochs, a separate eval size.

Progressive resizing (FFCV's ``get_resolution``): the training crop is ``min_size`` until the ramp
starts, ``image_size`` once it ends, and in between the linear interpolation rounded to a multiple
of ``step`` (32: 160 -> 192 jumps once). The ramp is given as fractions of the run, so a preset
stretches with ``--epochs`` (FFCV's ResNet-50 configs: epochs 11-13 of 16, 17-20 of 24, 65-76 of 88).

The Ray datasets are built once for the whole run, whatever the schedule:

- ``--decode cpu``: the data nodes crop at the largest size of the schedule (``image_size``), and each
  worker resizes the batch on its device to the epoch's size (one antialiased bilinear call per batch,
  after normalization: bilinear resampling is linear, so it commutes with the per-channel affine);
- ``--decode gpu``: the worker's decoder crops each image straight to the epoch's size.

Evaluation uses its own crop (``val_image_size``, default the training ``image_size``) after a
shorter-side resize (``val_resize_size``, default the 256/224 rule of the eval crop), e.g. torchvision's
v2 recipe trains at 176 and evaluates a 224 crop of a 232 resize ("FixRes" effect).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as tnf

from resnet_platform.data.transforms import eval_resize_of


def progressive_size(
    epoch: int, epochs: int, *, min_size: int, max_size: int, ramp: tuple[float, float], step: int
) -> int:
    """The training crop of 0-based ``epoch`` (FFCV's rule, ramp in fractions of ``epochs``)."""
    start, end = round(ramp[0] * epochs), round(ramp[1] * epochs)
    if epoch >= end:  # checked first: a short run whose ramp rounds to one epoch still ends at the max
        return max_size
    if epoch <= start:
        return min_size
    size = float(np.interp(epoch, [start, end], [min_size, max_size]))
    return int(min(max_size, max(min_size, round(size / step) * step)))


def train_size(config, epoch: int) -> int:
    """The training crop size of ``epoch`` under ``config`` (``image_size`` without a schedule)."""
    if config.progressive_min_size is None:
        return config.image_size
    return progressive_size(
        epoch,
        config.epochs,
        min_size=config.progressive_min_size,
        max_size=config.image_size,
        ramp=tuple(config.progressive_ramp),
        step=config.progressive_step,
    )


def schedule(config) -> list[int]:
    """Every epoch's training crop size."""
    return [train_size(config, e) for e in range(config.epochs)]


def eval_sizes(config) -> tuple[int, int]:
    """(crop, shorter-side resize) of evaluation and of the registered model's preprocessing.
    CIFAR's pad-crop evaluates the whole image: the resize is the crop."""
    crop = config.val_image_size or config.image_size
    if config.augmentation == "pad-crop":
        return crop, crop
    return crop, config.val_resize_size or eval_resize_of(crop)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float NCHW (normalized) -> ``size`` x ``size``, antialiased bilinear; unchanged when already
    that size. Keeps the memory format."""
    if x.shape[-2:] == (size, size):
        return x
    fmt = (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )
    out = tnf.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=fmt)
