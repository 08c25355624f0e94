"""Prepared shards -> a streaming Ray Data pipeline of uint8 HWC image batches.

verified shard reads (``shard_reader``: sha256 checked on the bytes parsed; streaming, never
materialized) -> ``map_batches`` decode + augment on CPU ->
rows ``{"image": uint8 (H, W, 3), "label": int64}``. Normalization happens on the device
(``IMAGENET_MEAN`` / ``IMAGENET_STD``), so 4x fewer bytes cross to it.

Training order changes every epoch: the shard files (one read task and block stream each) are
reshuffled on every execution of the dataset, and the consumer adds its local shuffle buffer
(``iter_torch_batches(local_shuffle_buffer_size=...)``).
"""

from __future__ import annotations

import functools
import logging
import uuid

import numpy as np

from resnet_platform.data import transforms
from resnet_platform.data.checks import DEFAULT_MAX_IMAGE_PIXELS
from resnet_platform.data.manifest import Manifest, PreparedData
from resnet_platform.data.placement import DataPlacement
from resnet_platform.data.skip_ledger import ledger_name, record_skips, skipped_images
from resnet_platform.data.transform_config import TransformConfig
from resnet_platform.data.transforms import (  # noqa: F401 (re-exported)
    AUGMENTATIONS,
    DECODE_MODES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    pad_crop_flip,
)

log = logging.getLogger(__name__)

DECODE_BATCH_ROWS = 64  # images per decode task call: small enough to stream, large enough to amortize


def label_names(manifest: Manifest) -> list[str]:
    """Label index -> human-readable class name (the WordNet id when the source had no names)."""
    return list(manifest.class_names)


# ------------------------------------------------------------------------------------------- transforms


def transform_image(data: bytes, t: TransformConfig, train: bool, rng: np.random.Generator) -> np.ndarray:
    """Image bytes -> uint8 HWC (or 10xHWC for ten-crop) with the configured transform.

    Every crop, resize and flip comes from ``data/transforms.py``, shared with the GPU decode path
    and with inference (the evaluation crop); CIFAR's pad-crop and the paper's 10-crop testing run
    on the CPU path only."""
    size = t.image_size
    image = transforms.decode_rgb(data)
    if t.ten_crop and not train:
        return transforms.ten_crop(image, t.eval_resize, t.image_size)
    crop = draw_crop_for(rng, image.shape[2], image.shape[1], t, train)
    out = transforms.crop_resize(image, crop, size)
    if train and t.augmentation == "pad-crop":
        import torch

        padded = pad_crop_flip(out.permute(1, 2, 0).numpy()[None], rng)[0]
        out = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)
    if train:
        out = t.augment(out, rng)  # data/augment.py: a no-op unless --auto-augment / --random-erase
    return out.permute(1, 2, 0).numpy()


def draw_crop_for(
    rng: np.random.Generator, w: int, h: int, t: TransformConfig, train: bool
) -> transforms.Crop:
    """One image's crop under ``t``: the same draw on the CPU and GPU decode paths."""
    return transforms.draw_crop(
        rng,
        w,
        h,
        augmentation=t.augmentation,
        train=train,
        image_size=t.image_size,
        resize_size=t.eval_resize,
        scale=t.scale,
        ratio=t.ratio,
        scale_range=t.scale_range,
    )


def decode_failures(run: str, split: str) -> list[dict]:
    """Images of ``split`` that run ``run`` skipped (undecodable, above the pixel limit):
    ``[{"key", "reason", "shard"}]``, each once (``data/skip_ledger.py``)."""
    return skipped_images(ledger_name(run, split))


@functools.cache
def _one_thread() -> None:
    """A decode task is one CPU's work: torch's intra-op threads would only fight the other tasks."""
    import torch

    torch.set_num_threads(1)


def _decode_batch(
    batch: dict[str, np.ndarray], *, t: TransformConfig, train: bool, include_key: bool, skips_name: str
) -> dict[str, np.ndarray]:
    _one_thread()
    rng = np.random.default_rng()
    images, labels, keys, failed = [], [], [], []
    for data, label, key in zip(batch["image"], batch["label"], batch["key"], strict=True):
        try:
            images.append(transform_image(data, t, train, rng))
        except Exception as e:  # a corrupt shard row must not stop training
            log.warning("skipping undecodable image %s: %s: %s", key, type(e).__name__, e)
            failed.append({"key": str(key), "reason": f"{type(e).__name__}: {e}"})
            continue
        labels.append(label)
        keys.append(key)
    if failed:
        record_skips(skips_name, failed)
    size = t.image_size
    shape = (10, size, size, 3) if (t.ten_crop and not train) else (size, size, 3)
    out = {
        "image": np.stack(images) if images else np.zeros((0, *shape), np.uint8),
        "label": np.asarray(labels, dtype=np.int64),
    }
    if include_key:
        out["key"] = np.asarray(keys, dtype=object)
    return out


def build_split_dataset(
    data: str | PreparedData,
    split: str,
    *,
    train: bool,
    transform: TransformConfig,
    seed: int | None = None,
    include_key: bool = False,
    placement: DataPlacement | None = None,
    decode: str = "cpu",
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    run: str | None = None,
):
    """A streaming Ray Dataset of one prepared split: rows ``{"image": uint8 HWC, "label": int64}``.

    ``data``: the prepared data set, opened once by the caller (:class:`PreparedData`: a run reads its
    manifest once for its checks and both splits), or its URI, opened here.

    ``train=True``: shard files and blocks are reshuffled on every execution (epoch); with ``seed``
    the sequence of orders is reproducible. ``train=False``: deterministic order. ``include_key``
    adds each row's source path (as strings, for inspection; not for ``iter_torch_batches``).
    ``placement``: every read and decode task runs on the CPU data nodes it names (``data/placement.py``).
    ``decode="gpu"``: rows stay ``{"image": JPEG bytes, "label", "key"}`` (the read is all the CPU does);
    the training worker decodes and crops them on its device (``data/device_decode.py``).
    Every shard is checked against the manifest's sha256 before its rows are used (a mismatch fails
    naming the shard); images above ``max_image_pixels`` are skipped and recorded (None: no limit)
    in the ledger of ``run`` (``data/skip_ledger.py``; None: one of this dataset's own).
    """
    from ray.data import FileShuffleConfig

    from resnet_platform.data.shard_reader import read_verified_shards

    data = data if isinstance(data, PreparedData) else PreparedData.open(data)
    uri, manifest = data.uri, data.manifest
    if split not in manifest.splits:
        raise KeyError(f"{uri}: no split {split!r} (has {sorted(manifest.splits)})")
    if transform.ten_crop and train:
        raise ValueError("ten_crop is an evaluation transform: use it with train=False")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, not {decode!r}")
    task_args = placement.task_args() if placement is not None else {}
    skips = ledger_name(run or f"{uri}#{uuid.uuid4().hex}", split)
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if train else None
    # One read task per shard (what streaming, shuffling and splitting need), each verifying its
    # shard's sha256 on the bytes it parses: see shard_reader.
    ds = read_verified_shards(
        uri,
        manifest,
        split,
        # The GPU path keeps the keys: the worker names the images it cannot decode by them.
        columns=["image", "label", "key"],
        shuffle=shuffle,
        max_image_pixels=max_image_pixels,
        skips_name=skips,
        task_args=task_args,
    )
    # No randomize_block_order(): in Ray 2.60 it is an all-to-all barrier that holds every read block
    # before the first decode. One read task per shard in a file order reshuffled every execution
    # gives the same new block order per epoch while streaming.
    if decode == "cpu":
        fn = functools.partial(
            _decode_batch,
            t=transform,
            train=train,
            include_key=include_key,
            skips_name=skips,
        )
        ds = ds.map_batches(
            fn, batch_size=DECODE_BATCH_ROWS, batch_format="numpy", zero_copy_batch=True, **task_args
        )
    if not train:
        ds.context.execution_options.preserve_order = True
    return ds
