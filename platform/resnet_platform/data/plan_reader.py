"""One rank's training stream of an epoch plan, as a Ray Dataset it can seek into.

Each training worker builds its own dataset per epoch (``train/worker_data.py``) from its part of
the epoch's order (``data/epoch_plan.py``) from the position the run has reached: the read tasks
(one per plan window, on the data nodes like every data task) read each shard of the window once,
verify it against the manifest as every read does (``data/integrity.py``), keep the rows this rank
trains on and emit them in the plan's order; the decode tasks crop and augment each sample with a
generator seeded by (seed, epoch, sample), so a sample gets the same augmentation whichever rank,
worker count or resume trains it. ``preserve_order`` keeps the plan's order through the parallel
decode.

An image that cannot be decoded (or is above the pixel limit) is recorded in the run's skip ledger
as on the streaming path, and its place in the batch is taken by the batch's previous image: rows
are never dropped, so every rank keeps the same number of steps and plan positions stay exact. Only
a decode batch (64 samples) with no good image at all loses its rows: a split that broken ends at
the epoch's skip-budget check.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from resnet_platform.data.epoch_plan import EpochPlan, ReadUnit, read_units
from resnet_platform.data.transform_config import TransformConfig

log = logging.getLogger(__name__)

READ_COLUMNS = ["image", "label", "key"]


@dataclass(frozen=True)
class ShardEntry:
    """What a read task needs of one shard: where it is and what the manifest says it holds."""

    path: str  # inside the filesystem
    uri: str  # for messages
    sha256: str
    size: int


def _read_unit(unit: ReadUnit, entries: dict[int, ShardEntry], fs, num_classes: int) -> pa.Table:
    """The unit's rows in plan order, each shard read once and verified first."""
    import pyarrow.parquet as pq

    from resnet_platform.data.integrity import check_shard_bytes
    from resnet_platform.data.shard_reader import check_labels

    parts, where = [], []
    for s in unit.shards:
        entry = entries[s]
        with fs.open_input_file(entry.path) as f:
            data = f.readall()
        check_shard_bytes(data, sha256=entry.sha256, size=entry.size, uri=entry.uri)
        table = pq.read_table(pa.BufferReader(data), columns=READ_COLUMNS)
        check_labels(table, num_classes, entry.uri)
        mask = unit.shard_of == s
        parts.append(table.take(pa.array(unit.row_of[mask])))
        where.append(np.flatnonzero(mask))
    table = pa.concat_tables(parts)
    table = table.take(pa.array(np.argsort(np.concatenate(where), kind="stable")))
    return table.append_column("sample", pa.array(unit.sample_of, pa.int64()))


def _decode_samples(
    batch: dict[str, np.ndarray], *, t: TransformConfig, seed: int, epoch: int, skips_name: str,
    max_image_pixels: int | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Crop and augment each sample with its own generator; an undecodable one is replaced by the
    batch's previous good one (recorded in the skip ledger)."""
    from resnet_platform.data.pipeline import _one_thread, transform_image
    from resnet_platform.data.shard_reader import image_pixels
    from resnet_platform.data.skip_ledger import record_skips

    _one_thread()
    images, labels, failed, missing = [], [], [], []
    for data, label, key, sample in zip(
        batch["image"], batch["label"], batch["key"], batch["sample"], strict=True
    ):
        rng = np.random.default_rng([seed, epoch, int(sample)])
        try:
            pixels = image_pixels(data) if max_image_pixels else None
            if pixels is not None and pixels > max_image_pixels:
                raise ValueError(f"{pixels:,} pixels, above the limit of {max_image_pixels:,}")
            images.append(transform_image(data, t, True, rng))
            labels.append(label)
        except Exception as e:  # a bad image must not stop training
            log.warning("skipping undecodable image %s: %s: %s", key, type(e).__name__, e)
            failed.append({"key": str(key), "reason": f"{type(e).__name__}: {e}"})
            images.append(None)
            labels.append(None)
            missing.append(len(images) - 1)
    if failed:
        record_skips(skips_name, failed)
    good = [i for i, im in enumerate(images) if im is not None]
    if not good:  # nothing to stand in: the rows go (a split this broken fails its skip budget)
        size = t.image_size
        return {
            "image": np.zeros((0, size, size, 3), np.uint8),
            "label": np.zeros(0, np.int64),
            "sample": np.zeros(0, np.int64),
        }
    for i in missing:  # the previous good image of the batch (the next one for a leading failure)
        j = max((g for g in good if g < i), default=good[0])
        images[i], labels[i] = images[j], labels[j]
    return {
        "image": np.stack(images),
        "label": np.asarray(labels, dtype=np.int64),
        "sample": np.asarray(batch["sample"], dtype=np.int64),
    }


def plan_dataset(
    plan: EpochPlan,
    stream: np.ndarray,
    *,
    entries: dict[int, ShardEntry],
    fs,
    num_classes: int,
    transform: TransformConfig,
    skips_name: str,
    max_image_pixels: int | None,
    task_args: dict | None = None,
    decode_rows: int = 64,
):
    """A Ray Dataset of ``stream`` (sample ids in training order): rows ``{"image": uint8 HWC,
    "label": int64, "sample": int64}`` in exactly that order."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    units = read_units(plan, stream)

    class _Source(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            tasks = []
            for unit in units:
                mine = {s: entries[s] for s in unit.shards}  # only this unit's shards travel with it
                tasks.append(
                    ReadTask(
                        functools.partial(lambda u, e: [_read_unit(u, e, fs, num_classes)], unit, mine),
                        BlockMetadata(
                            num_rows=len(unit.sample_of), size_bytes=None, exec_stats=None, input_files=None
                        ),
                    )
                )
            return tasks

    args = task_args or {}
    ds = ray.data.read_datasource(_Source(), override_num_blocks=max(1, len(units)), **args)
    fn = functools.partial(
        _decode_samples,
        t=transform,
        seed=plan.seed,
        epoch=plan.epoch,
        skips_name=skips_name,
        max_image_pixels=max_image_pixels,
    )
    ds = ds.map_batches(fn, batch_size=decode_rows, batch_format="numpy", zero_copy_batch=True, **args)
    ds.context.execution_options.preserve_order = True
    return ds
