"""The one definition of the image crops: which box of the source image becomes the network's input.

Both decode paths use it: the CPU path (Ray Data ``map_batches`` on the data nodes) and the GPU path
(nvJPEG on the training worker, ``data/device_decode.py``). Each draws the same crop box and flip
from the same distribution (torchvision's ``RandomResizedCrop.get_params``; the paper's scale
augmentation; resize-then-center-crop for evaluation) and resizes it with the same kernel
(bilinear, antialiased, on uint8), so the two paths feed the network the same pixels up to the JPEG
decoder's rounding.

Decoding uses ``torchvision.io`` (libjpeg-turbo on the CPU, nvJPEG on the GPU): one thread decodes
and crops about 1.5x faster than PIL decode + PIL resize (measured in ``BENCHMARKS.md``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as tnf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the CIFAR-10 training set's per-channel mean and std
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NORMALIZATION_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}

Box = tuple[int, int, int, int]  # left, top, right, bottom in source pixels


@dataclass(frozen=True)
class Crop:
    """What one image's transform draws: a source box and whether to flip the result."""

    box: Box
    flip: bool = False


def eval_resize_of(image_size: int) -> int:
    """The 256/224 rule: the shorter side is resized to 256 for a 224 crop, in proportion otherwise."""
    return round(image_size * 256 / 224)


def rrc_box(
    rng: np.random.Generator, w: int, h: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``, as a (left, top, right, bottom) box."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def center_box(w: int, h: int, resize: int, size: int) -> Box:
    """Resize the shorter side to ``resize``, then center-crop ``size``: that crop in source pixels."""
    f = resize / min(w, h)
    cw, ch = min(round(size / f), w), min(round(size / f), h)
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def scale_box(rng: np.random.Generator, w: int, h: int, lo: int, hi: int, size: int) -> Box:
    """The paper's scale augmentation (section 3.4): shorter side resized to a random S in [lo, hi],
    then a random ``size`` crop: that crop in source pixels."""
    f = int(rng.integers(lo, hi + 1)) / min(w, h)
    rw, rh = max(size, round(w * f)), max(size, round(h * f))
    x, y = int(rng.integers(0, rw - size + 1)), int(rng.integers(0, rh - size + 1))
    fx, fy = rw / w, rh / h
    left, top = int(x / fx), int(y / fy)
    return (
        left,
        top,
        min(w, max(left + 1, round((x + size) / fx))),
        min(h, max(top + 1, round((y + size) / fy))),
    )


def draw_crop(
    rng: np.random.Generator,
    w: int,
    h: int,
    *,
    augmentation: str,
    train: bool,
    image_size: int,
    resize_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    scale_range: tuple[int, int] = (256, 480),
) -> Crop:
    """The crop of one ``w`` x ``h`` image: random for training ("rrc", "scale"), the center crop
    after a shorter-side resize to ``resize_size`` for evaluation and for augmentation "none"."""
    if train and augmentation == "rrc":
        return Crop(rrc_box(rng, w, h, scale, ratio), bool(rng.random() < 0.5))
    if train and augmentation == "scale":
        return Crop(
            scale_box(rng, w, h, scale_range[0], scale_range[1], image_size), bool(rng.random() < 0.5)
        )
    return Crop(center_box(w, h, resize_size, image_size))


def decode_rgb(data: bytes | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Image bytes -> uint8 CHW RGB tensor on ``device`` (nvJPEG for JPEG on CUDA; any format
    torchvision reads on the CPU). Raises on bytes no decoder reads."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if torch.device(device).type == "cuda" and raw[:2].tolist() == [0xFF, 0xD8]:
        return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return decode_image(raw, mode=ImageReadMode.RGB).to(device)


def decode_rgb_batch(datas: list, device: str | torch.device) -> list[torch.Tensor | Exception]:
    """Decode a batch: one batched nvJPEG call on CUDA when every item is a JPEG; otherwise (or when
    the batched call fails on a bad image) one by one, an undecodable item becoming its exception."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if torch.device(device).type == "cuda":
        raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        if all(r[:2].tolist() == [0xFF, 0xD8] for r in raws):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return list(decode_jpeg(raws, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                pass  # find the bad one below
    out: list[torch.Tensor | Exception] = []
    for d in datas:
        try:
            out.append(decode_rgb(d, device))
        except Exception as e:  # noqa: BLE001 - reported per image by the caller
            out.append(e)
    return out


def crop_resize(image: torch.Tensor, crop: Crop, size: int) -> torch.Tensor:
    """uint8 CHW -> uint8 CHW ``size`` x ``size``: the crop's box, bilinear with antialiasing, flipped
    when drawn. The same kernel on CPU and CUDA tensors."""
    left, top, right, bottom = crop.box
    region = image[:, top:bottom, left:right].unsqueeze(0)
    if region.shape[-2:] != (size, size):
        if region.device.type == "cpu":  # uint8 fast path; CUDA's antialiased kernel wants floats
            region = tnf.interpolate(
                region, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        else:
            region = tnf.interpolate(
                region.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            region = region.round_().clamp_(0, 255).to(torch.uint8)
    out = region[0]
    return out.flip(-1) if crop.flip else out
