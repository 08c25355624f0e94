"""The driver/worker data contract: what a training worker reads from its Ray Data shards.

The driver (``train/runner.py``) builds the ``train`` and ``val`` datasets with the crops of
:func:`transform_config_of`; each worker iterates its shard of them per epoch with
:func:`epoch_batches`, getting uint8 NHWC images and int64 labels on its device.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

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


@dataclass
class PlanSource:
    """What a worker needs to read its part of an epoch plan (``data/epoch_plan.py``), opened once
    per worker group start: the split's shard table from the manifest, its filesystem, the seed."""

    shard_rows: tuple[int, ...]
    entries: dict  # shard index -> data.plan_reader.ShardEntry
    fs: object
    num_classes: int
    seed: int
    pixel_limit: int | None  # checked per image only where prepare did not enforce it already

    @classmethod
    def open(cls, config: TrainConfig) -> PlanSource:
        from resnet_platform import storage
        from resnet_platform.data.epoch_plan import plan_seed, shard_rows_of
        from resnet_platform.data.manifest import PreparedData
        from resnet_platform.data.plan_reader import ShardEntry
        from resnet_platform.data.shard_reader import pixel_limit_to_check

        # A worker process opens the data itself: the driver's handle (a filesystem, the manifest)
        # is not part of the picklable config the workers receive.
        data = PreparedData.open(config.data)
        shards = data.manifest.splits["train"].shards
        entries = {
            i: ShardEntry(path=path, uri=storage.join(data.uri, s.path), sha256=s.sha256, size=s.bytes)
            for i, (s, path) in enumerate(zip(shards, data.shard_paths("train"), strict=True))
        }
        return cls(
            shard_rows_of(data.manifest, "train"),
            entries,
            data.fs,
            data.manifest.num_classes,
            plan_seed(config.seed, config.name or ""),
            pixel_limit_to_check(data.manifest, config.max_image_pixels),
        )

    def plan(self, config: TrainConfig, epoch: int):
        from resnet_platform.data.epoch_plan import EpochPlan, window_shards_for

        window = window_shards_for(self.shard_rows, config.shuffle_window_shards)
        return EpochPlan(self.shard_rows, self.seed, epoch, window)

    def batches(
        self, config: TrainConfig, device: torch.device, *, epoch: int, start: int, rank: int, world: int
    ):
        """Rank ``rank``'s micro-batches of epoch ``epoch`` from plan position ``start`` on."""
        from resnet_platform.data.plan_reader import plan_dataset
        from resnet_platform.data.skip_ledger import ledger_name

        from .data_wait import no_progress_timeout_s

        plan = self.plan(config, epoch)
        stream = plan.rank_stream(start, rank, world)
        ds = plan_dataset(
            plan,
            stream,
            entries=self.entries,
            fs=self.fs,
            num_classes=self.num_classes,
            transform=transform_config_of(config, train=True),
            skips_name=ledger_name(config.run_uri, "train"),
            max_image_pixels=self.pixel_limit,
            task_args=config.placement.task_args(),
        )
        options = ds.context.execution_options
        options.label_selector = config.placement.data_selector
        if config.ingest_object_store_gib:  # the run's read-ahead budget, shared by its ranks
            from ray.data import ExecutionResources

            budget = config.ingest_object_store_gib * 2**30 / world
            options.resource_limits = ExecutionResources(object_store_memory=budget)
        ds.context.execution_no_progress_timeout_s = no_progress_timeout_s(
            config, ds.context.execution_no_progress_timeout_s
        )
        batches = ds.iter_torch_batches(
            batch_size=config.micro_batch_size,
            dtypes={"image": torch.uint8, "label": torch.int64, "sample": torch.int64},
            prefetch_batches=config.prefetch_batches,
            pin_memory=device.type == "cuda",
        )
        if config.trace_samples:
            batches = _traced(batches, config.trace_samples, epoch=epoch, start=start, rank=rank, world=world)
        return batches


def _traced(batches, folder: str, *, epoch: int, start: int, rank: int, world: int):
    """Tests: append each trained sample's plan position and id to ``folder/rank-R.jsonl``
    (positions follow the interleave of ``data/epoch_plan.py``)."""
    os.makedirs(folder, exist_ok=True)
    done = 0
    with open(os.path.join(folder, f"rank-{rank}.jsonl"), "a") as f:
        for batch in batches:
            samples = batch["sample"].tolist()
            positions = [start + (done + i) * world + rank for i in range(len(samples))]
            done += len(samples)
            f.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "start": start,
                        "positions": positions,
                        "samples": samples,
                        "world": world,
                    }
                )
                + "\n"
            )
            f.flush()
            yield batch
