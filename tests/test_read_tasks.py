"""What a Ray Data read task carries: its own work, not the manifest. Ray Data pickles the
datasource into every read task, so a shard table held by it would cost O(shards) bytes per task
and O(shards^2) per epoch."""

from __future__ import annotations

from ray import cloudpickle

from resnet_platform.data.manifest import Manifest, ShardInfo, SplitManifest
from resnet_platform.data.shard_reader import verified_shard_source

SHARDS = 2000


def test_a_read_task_of_a_2000_shard_manifest_pickles_under_64_kib(tmp_path, ray_local):
    (tmp_path / "train").mkdir()
    entries = []
    for i in range(SHARDS):
        rel = f"train/train-{i:05d}-of-{SHARDS:05d}.parquet"
        (tmp_path / rel).write_bytes(b"x")
        entries.append(ShardInfo(rel, rows=640, bytes=64 * 2**20, sha256=f"{i:064x}"))
    manifest = Manifest(["n0"], ["n0"], {"train": SplitManifest(640 * SHARDS, entries)})
    source = verified_shard_source(
        str(tmp_path), manifest, "train", shuffle=None, max_image_pixels=None, skips_name="run"
    )
    tasks = source.get_read_tasks(SHARDS)
    assert len(tasks) == SHARDS
    sizes = [len(cloudpickle.dumps(t)) for t in (tasks[0], tasks[-1])]
    # The whole table would be about 170 bytes per shard: 330 KiB here.
    assert max(sizes) < 64 * 1024, sizes
