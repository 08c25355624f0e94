"""Per-image augmentations after the crop: TrivialAugmentWide, RandAugment and random erasing.

torchvision's ``transforms.v2`` on uint8 CHW tensors, in the order of torchvision's reference
``ClassificationPresetTrain``: crop + flip (``data/transforms.py``), then the automatic augmentation
(bilinear, as the reference passes it), then random erasing. Both decode paths call
:func:`augment_image`: the CPU path in the Ray Data decode task, the GPU path on the worker's device
(every op here works on CUDA tensors).

Random erasing runs before normalization here (the reference erases the normalized tensor with 0):
the box is filled with the normalization mean in uint8, which normalizes to about 0, the same value.

Randomness: v2 transforms draw from torch's global CPU generator. Each image's draw is seeded from
the caller's numpy generator (the one the crop draws come from) and the global state is put back
afterwards, so the augmentation is reproducible from that generator, the same on both decode paths,
and never disturbs the training loop's own torch random stream.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: see data/transforms.py's docstring
    import torch

AUTO_AUGMENTS = ("none", "ta_wide", "randaugment")
# RandAugment as torchvision's reference builds it: 2 ops, magnitude 9 of 31 bins.
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 9


@functools.cache
def _auto_augment(name: str):
    from torchvision.transforms import v2

    bilinear = v2.InterpolationMode.BILINEAR
    if name == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=bilinear)
    if name == "randaugment":
        return v2.RandAugment(
            num_ops=RANDAUGMENT_OPS, magnitude=RANDAUGMENT_MAGNITUDE, interpolation=bilinear
        )
    raise ValueError(f"unknown auto augment {name!r}; valid: {', '.join(AUTO_AUGMENTS)}")


@functools.cache
def _eraser(p: float, fill: tuple[int, ...]):
    from torchvision.transforms import v2

    return v2.RandomErasing(p=p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=list(fill))


def is_active(auto_augment: str, random_erase: float) -> bool:
    return auto_augment != "none" or random_erase > 0


def augment_image(
    image: torch.Tensor,
    rng: np.random.Generator,
    *,
    auto_augment: str = "none",
    random_erase: float = 0.0,
    erase_fill: tuple[int, ...] = (0, 0, 0),
) -> torch.Tensor:
    """uint8 CHW (any device) -> uint8 CHW, augmented; unchanged (and ``rng`` untouched) when both
    are off."""
    if not is_active(auto_augment, random_erase):
        return image
    import torch

    seed = int(rng.integers(0, 2**63 - 1))
    generator = torch.default_generator
    saved = generator.get_state()
    try:
        generator.manual_seed(seed)
        if auto_augment != "none":
            image = _auto_augment(auto_augment)(image)
        if random_erase > 0:
            image = _eraser(float(random_erase), tuple(int(v) for v in erase_fill))(image)
    finally:
        generator.set_state(saved)
    return image
