"""GPU decode: the training worker turns JPEG bytes into cropped uint8 batches on its own device.

On the fastest GPUs, CPU decoding (about 200 images/s per vCPU with RandomResizedCrop) would need
40-60 vCPUs per GPU to keep a ResNet-50 busy. With ``--decode gpu`` Ray Data only reads the shards
(bytes and labels: cheap CPU work), and each worker decodes its batch with batched nvJPEG
(``torchvision.io.decode_jpeg(..., device="cuda")``), then crops, resizes and flips on the device.

The crop of every image is drawn exactly as the CPU path draws it (``pipeline.draw_crop_for``, from
``data/transforms.py``), and resized with the same kernel, so both paths train on the same
distribution of inputs; training crops then get the same TrivialAugment/RandAugment/random erasing
(``data/augment.py``), drawn from the same generator. The same code runs with device ``cpu``, which
is how it is tested without a GPU. Undecodable images are skipped and reported in the split's skip record, as on the CPU path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from resnet_platform.data import transforms
from resnet_platform.data.pipeline import TransformConfig, draw_crop_for, record_skips

log = logging.getLogger(__name__)


class DeviceDecoder:
    """``{"image": array of JPEG bytes, "label": ints}`` -> ``{"image": uint8 NHWC, "label": int64}``
    on ``device``; rows that no decoder reads are dropped and recorded under ``skips_name``."""

    def __init__(
        self,
        transform: TransformConfig,
        *,
        train: bool,
        device: str | torch.device,
        skips_name: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if transform.augmentation == "pad-crop" or transform.ten_crop:
            raise ValueError("decode on the device supports rrc, scale and none (not pad-crop or ten-crop)")
        self.transform = transform
        self.train = train
        self.device = torch.device(device)
        self.skips_name = skips_name
        self.rng = rng if rng is not None else np.random.default_rng()
        self.skipped = 0
        self.last_failures: list[dict] = []

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        datas = list(batch["image"])
        labels = np.asarray(batch["label"], dtype=np.int64)
        decoded = transforms.decode_rgb_batch(datas, self.device)
        size = self.transform.image_size
        crops, keep, failed = [], [], []
        for i, image in enumerate(decoded):
            if isinstance(image, Exception):
                key = str(batch["key"][i]) if "key" in batch else f"row {i} of a batch"
                failed.append({"key": key, "reason": f"{type(image).__name__}: {image}"})
                continue
            crop = draw_crop_for(self.rng, image.shape[2], image.shape[1], self.transform, self.train)
            out = transforms.crop_resize(image, crop, size)
            crops.append(self.transform.augment(out, self.rng) if self.train else out)
            keep.append(i)
        self.last_failures = failed
        if failed:
            self.skipped += len(failed)
            log.warning("skipping %d undecodable image(s), e.g. %s", len(failed), failed[0]["key"])
            if self.skips_name is not None:
                record_skips(self.skips_name, failed)
        if crops:
            images = torch.stack(crops).permute(0, 2, 3, 1)  # NHWC, as the CPU path delivers it
        else:
            images = torch.zeros((0, size, size, 3), dtype=torch.uint8, device=self.device)
        label_t = torch.from_numpy(labels[keep]).to(self.device, non_blocking=True)
        return {"image": images, "label": label_t}

    def batches(self, raw_batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, torch.Tensor]]:
        """Decode a stream of raw batches (``DataIterator.iter_batches(batch_format="numpy")``)."""
        for raw in raw_batches:
            out = self(raw)
            if len(out["label"]):
                yield out
