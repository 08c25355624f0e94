"""The one definition of the preprocessing: which box of the source image becomes the network's input,
how it is resized, and how its pixels are normalized.

Every path that feeds a network uses it: the CPU decode path (Ray Data ``map_batches`` on the data
nodes), the GPU path (nvJPEG on the training worker, ``data/device_decode.py``), the training loop's
normalization, and inference (``tracking/inference.py``: ``load_model``, the served pyfunc model,
batch prediction). Each draws the same crop box and flip from the same distribution (torchvision's
``RandomResizedCrop.get_params``; the paper's scale augmentation; CIFAR's pad-crop) and evaluates
with the same crop (:func:`eval_crop`: resize-then-center-crop, or the whole image for pad-crop
models), resized with the same kernel (bilinear, antialiased, on uint8), so a served model sees the
pixels it was validated on, up to the JPEG decoder's rounding.

Only numpy at import; torch where a function needs it (torchvision when decoding). A served model
imports this module, and so does every process that unpickles a Ray Data function of the pipeline:
Ray Data's split coordinators and dataset managers never call them, and without torch mapped they
use about 200 MB instead of about 690 MB each, and start seconds sooner (``tests/test_layering.py``).

Decoding uses ``torchvision.io`` (libjpeg-turbo on the CPU, nvJPEG on the GPU): one thread decodes
and crops about 1.5x faster than PIL decode + PIL resize (measured in ``BENCHMARKS.md``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the CIFAR-10 training set's per-channel mean and std
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The train-time crops (``draw_crop``) and where JPEGs are decoded and cropped (the data nodes, or each
# training worker's device): declared once, read by the pipeline and by ``TrainConfig``'s flags.
AUGMENTATIONS = ("rrc", "scale", "none", "pad-crop")
DECODE_MODES = ("cpu", "gpu")
NORMALIZATION_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}
# How a network is evaluated: "center" resizes the shorter side, then center-crops (ImageNet);
# "whole" resizes the whole image to the square input (CIFAR's pad-crop models, section 4.2).
EVAL_CROPS = ("center", "whole")

Box = tuple[int, int, int, int]  # left, top, right, bottom in source pixels


@dataclass(frozen=True)
class Crop:
    """What one image's transform draws: a source box and whether to flip the result."""

    box: Box
    flip: bool = False


def eval_resize_of(image_size: int) -> int:
    """The 256/224 rule: the shorter side is resized to 256 for a 224 crop, in proportion otherwise."""
    return round(image_size * 256 / 224)


def eval_crop_of(augmentation: str) -> str:
    """The evaluation crop of a network trained with ``augmentation``."""
    return "whole" if augmentation == "pad-crop" else "center"


def eval_preprocessing(image_size: int, augmentation: str, normalization: str) -> dict:
    """What validation does to an image of a network trained with these settings, as ``ModelSpec``
    records it for inference: ``image_size``, ``resize_size``, ``eval_crop``, ``mean``, ``std``."""
    mean, std = NORMALIZATION_STATS[normalization]
    return {
        "image_size": image_size,
        "resize_size": eval_resize_of(image_size),
        "eval_crop": eval_crop_of(augmentation),
        "mean": mean,
        "std": std,
    }


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


def eval_crop(w: int, h: int, *, image_size: int, resize_size: int, mode: str = "center") -> Crop:
    """The evaluation crop of a ``w`` x ``h`` image: validation's and inference's (see ``EVAL_CROPS``)."""
    if mode not in EVAL_CROPS:
        raise ValueError(f"eval crop must be one of {EVAL_CROPS}, not {mode!r}")
    if mode == "whole":
        return Crop((0, 0, w, h))
    return Crop(center_box(w, h, resize_size, image_size))


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
    """The crop of one ``w`` x ``h`` image: random for training ("rrc", "scale"); otherwise the
    evaluation crop (:func:`eval_crop`), also for training with "none", and "pad-crop" (whose random
    pad, crop and flip :func:`pad_crop_flip` applies afterwards, to the resized image)."""
    if train and augmentation == "rrc":
        return Crop(rrc_box(rng, w, h, scale, ratio), bool(rng.random() < 0.5))
    if train and augmentation == "scale":
        return Crop(
            scale_box(rng, w, h, scale_range[0], scale_range[1], image_size), bool(rng.random() < 0.5)
        )
    return eval_crop(w, h, image_size=image_size, resize_size=resize_size, mode=eval_crop_of(augmentation))


def decode_rgb(data: bytes | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Image bytes -> uint8 CHW RGB tensor on ``device`` (nvJPEG for JPEG on CUDA; any format
    torchvision reads on the CPU). Raises on bytes no decoder reads."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if torch.device(device).type == "cuda" and raw[:2].tolist() == [0xFF, 0xD8]:
        return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return decode_image(raw, mode=ImageReadMode.RGB).to(device)


def decode_rgb_batch(datas: list, device: str | torch.device) -> list[torch.Tensor | Exception]:
    """Decode a batch: one batched nvJPEG call on CUDA when every item is a JPEG; otherwise (or when
    the batched call fails on a bad image) one by one, an undecodable item becoming its exception."""
    import torch
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


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 CHW -> uint8 CHW ``height`` x ``width``, bilinear with antialiasing: the one resize kernel,
    the same on CPU and CUDA tensors."""
    import torch
    import torch.nn.functional as tnf

    region = image.unsqueeze(0)
    if region.shape[-2:] != (height, width):
        if region.device.type == "cpu":  # uint8 fast path; CUDA's antialiased kernel wants floats
            region = tnf.interpolate(
                region, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        else:
            region = tnf.interpolate(
                region.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
            region = region.round_().clamp_(0, 255).to(torch.uint8)
    return region[0]


def crop_resize(image: torch.Tensor, crop: Crop, size: int) -> torch.Tensor:
    """uint8 CHW -> uint8 CHW ``size`` x ``size``: the crop's box, resized (:func:`resize`), flipped
    when drawn."""
    left, top, right, bottom = crop.box
    out = resize(image[:, top:bottom, left:right], size, size)
    return out.flip(-1) if crop.flip else out


def ten_crop(image: torch.Tensor, resize_size: int, size: int) -> np.ndarray:
    """The paper's 10-crop testing of a uint8 CHW image: shorter side resized to ``resize_size``, the
    four corner and the center ``size`` crops and their flips -> uint8 (10, size, size, 3)."""
    _, h, w = image.shape
    f = resize_size / min(w, h)
    rw, rh = max(size, round(w * f)), max(size, round(h * f))
    full = resize(image, rh, rw).permute(1, 2, 0).numpy()
    x, y = (rw - size) // 2, (rh - size) // 2
    corners = [(0, 0), (rw - size, 0), (0, rh - size), (rw - size, rh - size), (x, y)]
    crops = [full[b : b + size, a : a + size] for a, b in corners]
    return np.stack(crops + [c[:, ::-1] for c in crops])


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """CIFAR augmentation (section 4.2) of uint8 NHWC: zero-pad ``pad`` pixels per side, take a
    random crop of the original size, flip horizontally with probability 1/2; one draw per image."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    ys = rng.integers(0, 2 * pad + 1, size=n)
    xs = rng.integers(0, 2 * pad + 1, size=n)
    flips = rng.random(n) < 0.5
    for i in range(n):
        crop = padded[i, ys[i] : ys[i] + h, xs[i] : xs[i] + w]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


def channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``mean`` and ``std`` (given on the [0, 1] scale) as (3, 1, 1) float tensors on the
    0-255 scale, what :func:`normalize` takes."""
    import torch

    as_255 = [torch.tensor(v, dtype=torch.float32, device=device).view(3, 1, 1) * 255 for v in (mean, std)]
    return as_255[0], as_255[1]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 HWC or NHWC -> normalized float CHW or NCHW, on their device; ``mean`` and ``std`` from
    :func:`channel_stats`. The training loop and inference both normalize here."""
    return (images.movedim(-1, -3).float() - mean) / std
