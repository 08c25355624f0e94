"""The per-image transform of one stream (crop, resize, flip, augmentations): plain settings that the
CPU decode path (``data/pipeline.py``), the device decode path (``data/device_decode.py``) and the
training loop share, kept apart from both so neither imports the other for them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resnet_platform.data import augment, transforms
from resnet_platform.data.transforms import AUGMENTATIONS


@dataclass
class TransformConfig:
    image_size: int = 224
    resize_size: int | None = None  # eval resize of the shorter side; default round(image_size * 256 / 224)
    augmentation: str = "rrc"  # "rrc": RandomResizedCrop + flip; "scale": the paper's; "none": eval transform
    # "pad-crop": CIFAR's (section 4.2): the whole image at image_size, zero-padded by 4, a random
    # image_size crop and a flip; evaluation then uses the whole image, uncropped
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    ten_crop: bool = False  # eval only: rows become (10, H, W, 3)
    # Training only, after the crop (``data/augment.py``): "ta_wide", "randaugment" or "none";
    # random erasing with this probability, the box filled with ``erase_fill`` (the mean in uint8).
    auto_augment: str = "none"
    random_erase: float = 0.0
    erase_fill: tuple[int, ...] = (124, 116, 104)

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {self.augmentation!r}")
        if self.auto_augment not in augment.AUTO_AUGMENTS:
            raise ValueError(
                f"auto_augment must be one of {augment.AUTO_AUGMENTS}, not {self.auto_augment!r}"
            )

    @property
    def eval_resize(self) -> int:
        return self.resize_size or transforms.eval_resize_of(self.image_size)

    def augment(self, image, rng: np.random.Generator):
        """Training augmentations after the crop (uint8 CHW tensor, any device): ``data/augment.py``."""
        return augment.augment_image(
            image,
            rng,
            auto_augment=self.auto_augment,
            random_erase=self.random_erase,
            erase_fill=self.erase_fill,
        )

    @property
    def scale_range(self) -> tuple[int, int]:
        """The paper's scale augmentation: shorter side in [256, 480], scaled to the crop size."""
        return round(256 * self.image_size / 224), round(480 * self.image_size / 224)
