"""The driver/worker data contract: what a training worker reads from its Ray Data shards.

The driver (``train/runner.py``) builds the ``train`` and ``val`` datasets with the crops of
:func:`transform_config_of`; each worker iterates its shard of them per epoch with
:func:`epoch_batches`, getting uint8 NHWC images and int64 labels on its device.
"""

from __future__ import annotations

import dataclasses

import torch

from resnet_platform.data.transforms import NORMALIZATION_STATS

from .config import TrainConfig
from .resolution import eval_sizes


def transform_config_of(config: TrainConfig, *, train: bool):
    """The crop settings of the training or validation stream (one place for the pipeline and
    the GPU decode path)."""
    from resnet_platform.data.transform_config import TransformConfig

    if train:  # the largest crop of a progressive schedule: the worker resizes to the epoch's size
        mean = NORMALIZATION_STATS[config.normalization][0]
        return TransformConfig(
            image_size=config.image_size,
            augmentation=config.augmentation,
            auto_augment=config.auto_augment,
            random_erase=config.random_erase,
            erase_fill=tuple(round(m * 255) for m in mean),
        )
    crop, _ = eval_sizes(config)  # the resize: --val-resize-size, else the 256/224 rule of the crop
    return TransformConfig(
        image_size=crop,
        resize_size=config.val_resize_size,
        augmentation=config.augmentation,
        ten_crop=config.ten_crop,
    )


def epoch_batches(
    shard, config: TrainConfig, device: torch.device, *, train: bool, shuffle_seed: int | None,
    image_size: int | None = None, epoch: int | None = None,
):  # fmt: skip
    """The worker's batches of one epoch, as uint8 NHWC + int64 labels on its device, in
    micro-batches (``per_worker_batch / grad_accum_steps`` rows).

    ``decode="cpu"``: Ray Data decoded them on the data nodes; they are copied to the device from
    pinned memory (non-blocking) with ``prefetch_batches`` in flight. ``decode="gpu"``: the rows are
    JPEG bytes, decoded and cropped here on the device (``data/device_decode.py``), training crops at
    ``image_size`` (the epoch's size of a progressive schedule).
    """
    # Epoch 1 reads prepare's globally shuffled shards in a shuffled file order: no local buffer, so
    # its first batch does not wait for 1.5x the buffer's rows (Ray's ShufflingBatcher) decoded first.
    buffer = config.shuffle_buffer if epoch != 0 else 0
    shuffle = {"local_shuffle_buffer_size": buffer or None, "local_shuffle_seed": shuffle_seed}
    if not train:
        shuffle = {}
    if config.decode == "gpu":
        from resnet_platform.data.device_decode import DeviceDecoder
        from resnet_platform.data.skip_ledger import ledger_name

        transform = transform_config_of(config, train=train)
        if train and image_size is not None:
            transform = dataclasses.replace(transform, image_size=image_size)
        decoder = DeviceDecoder(
            transform,
            train=train,
            device=device,
            skips_name=ledger_name(config.run_uri, "train" if train else "val"),
        )
        raw = shard.iter_batches(
            batch_size=config.micro_batch_size,
            batch_format="numpy",
            prefetch_batches=config.prefetch_batches,
            **shuffle,
        )
        return decoder.batches(raw)
    return shard.iter_torch_batches(
        batch_size=config.micro_batch_size,
        dtypes={"image": torch.uint8, "label": torch.int64},
        prefetch_batches=config.prefetch_batches,
        pin_memory=device.type == "cuda",
        **shuffle,
    )
