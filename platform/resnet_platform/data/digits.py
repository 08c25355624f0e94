"""A real, tiny data set in ImageNet layout, with no download: scikit-learn's bundled digits.

1,797 8x8 handwritten digits in 10 classes, written as JPEG class folders
(``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``) so the demo and the tests run the same
preparation and streaming code as real ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Made-up WordNet-style ids that sort in digit order, like ImageNet's n0xxxxxxx.
DIGIT_WNIDS = [f"n0000000{d}" for d in range(10)]
DIGIT_NAMES = [f"digit {d}" for d in range(10)]


@dataclass(frozen=True)
class DigitsLayout:
    root: Path
    train_images: int
    val_images: int


def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """(the 1,797 8x8 glyphs as uint8 0-255, their labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8), digits.target.astype(np.int64)


def _val_indices(n: int, val_fraction: float, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    return order[: int(n * val_fraction)]


def _resized_rgb(img: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(img, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


def digits_arrays(
    size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same images and split as :func:`write_digits_imagenet`, in memory and without JPEG:
    (train images, train labels, val images, val labels), images uint8 (N, size, size, 3)."""
    images, labels = _digits_uint8()
    is_val = np.zeros(len(images), bool)
    is_val[_val_indices(len(images), val_fraction, seed)] = True
    rgb = np.stack([np.asarray(_resized_rgb(img, size)) for img in images])
    return rgb[~is_val], labels[~is_val], rgb[is_val], labels[is_val]


def write_digits_imagenet(
    root: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> DigitsLayout:
    """Write the digits as RGB JPEGs of ``size`` pixels; a seeded split keeps reruns identical."""
    root = Path(root)
    images, labels = _digits_uint8()
    val_idx = set(_val_indices(len(images), val_fraction, seed).tolist())
    counts = {"train": 0, "val": 0}
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        split = "val" if i in val_idx else "train"
        folder = root / split / DIGIT_WNIDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"digit_{i:04d}.JPEG"
        if not path.exists():
            _resized_rgb(img, size).save(path, quality=95)
        counts[split] += 1
    (root / "synset_words.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(DIGIT_WNIDS, DIGIT_NAMES, strict=True))
    )
    return DigitsLayout(root, counts["train"], counts["val"])
