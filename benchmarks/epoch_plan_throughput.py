"""The epoch plan's cost: training-stream throughput of ``--epoch-order plan`` against Ray Data's
streaming split (``--epoch-order stream``), the same ranks consuming both, and their shuffle quality.

    python benchmarks/epoch_plan_throughput.py --images 8000 --ranks 2

Generates ImageNet-like JPEGs with ``data_throughput.py``'s generator, prepares them with the
platform's prepare step, then runs one epoch per pass with ``--ranks`` consumers (threads of this
driver, each iterating its stream as a training worker does, RandomResizedCrop 224 + flip):

- stream: the driver's training dataset, ``streaming_split(ranks, equal=True)``, each split read
  with the local shuffle buffer (1,024 rows), as the training loop reads it;
- plan: each rank's own plan dataset (``train/worker_data.py: PlanSource.batches``).

Passes alternate stream, plan, stream, plan; the ratio is plan over stream, whole epoch and steady
state (after the first 20% of the images), with the load average beside each pass. Shuffle quality:
of the pairs of samples sharing a batch in epoch 2, the fraction that also shared one in epoch 1
(uniform: about (batch - 1) / (n - 1)), and the mean number of source shards per batch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))
STEADY_AFTER = 0.2


def timed_ranks(iterators, expected: int) -> tuple[float, float, int, list[list[int]]]:
    """Consume every rank's iterator in its own thread; returns (whole img/s, steady img/s, images,
    the sample keys of each batch in the order consumed)."""
    lock = threading.Lock()
    stamps: list[tuple[float, int]] = []
    batches: list[list[int]] = []

    def consume(it):
        for batch in it:
            keys = batch["key"] if "key" in batch else batch["sample"]
            with lock:
                stamps.append((time.perf_counter(), len(batch["image"])))
                batches.append([int(k) for k in np.asarray(keys).tolist()])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(it,)) for it in iterators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    stamps.sort()
    n = sum(k for _, k in stamps)
    done, mark = 0, None
    for when, k in stamps:
        done += k
        if done >= STEADY_AFTER * expected:
            mark = (when, done)
            break
    steady = (n - mark[1]) / (end - mark[0]) if mark and end > mark[0] else float("nan")
    return n / (end - t0), steady, n, batches


def stream_pass(uri: str, ranks: int, batch: int, expected: int, seed: int, budget_gib: float):
    """Today's path: one training dataset split over the ranks (keys: row ids from the key column)."""
    from ray.data import ExecutionResources

    from resnet_platform.data.pipeline import build_split_dataset
    from resnet_platform.data.transform_config import TransformConfig

    ds = build_split_dataset(
        uri, "train", train=True, transform=TransformConfig(), seed=seed, include_key=True
    )
    ds = ds.map_batches(_key_ids, batch_format="numpy")
    # The run's read-ahead budget, as the trainer sets it (train/runner.py).
    ds.context.execution_options.resource_limits = ExecutionResources(object_store_memory=budget_gib * 2**30)
    splits = ds.streaming_split(ranks, equal=True)
    its = [
        s.iter_batches(batch_size=batch, prefetch_batches=2, local_shuffle_buffer_size=1024) for s in splits
    ]
    return timed_ranks(its, expected)


def _key_ids(batch: dict) -> dict:
    """Image keys (``class/name.JPEG``) -> stable integers, to compare with the plan's sample ids."""
    import zlib

    batch["key"] = np.asarray([zlib.crc32(str(k).encode()) for k in batch["key"]], np.int64)
    return batch


def plan_pass(uri: str, ranks: int, batch: int, expected: int, epoch: int, budget_gib: float):
    import torch

    from resnet_platform.train.config import TrainConfig
    from resnet_platform.train.worker_data import PlanSource

    config = TrainConfig(data=uri, seed=0, name="bench", batch_size=batch * ranks, num_workers=ranks,
                         cpus_per_worker=0.5, image_size=224, ingest_object_store_gib=budget_gib)  # fmt: skip
    source = PlanSource.open(config)
    its = [
        source.batches(config, torch.device("cpu"), epoch=epoch, start=0, rank=r, world=ranks)
        for r in range(ranks)
    ]
    return timed_ranks(its, expected), source


def stream_key_shards(uri: str, manifest) -> dict[int, int]:
    """The stream pass's key ids (crc32 of the image key) -> shard index."""
    import zlib

    import pyarrow.parquet as pq

    from resnet_platform import storage

    out = {}
    for i, shard in enumerate(manifest.splits["train"].shards):
        fs, path = storage.resolve(storage.join(uri, shard.path))
        with fs.open_input_file(path) as f:
            for key in pq.read_table(f, columns=["key"])["key"].to_pylist():
                out[zlib.crc32(str(key).encode())] = i
    return out


def shards_per_batch(batches: list[list[int]], shard_of) -> float:
    return float(np.mean([len({shard_of(k) for k in b}) for b in batches]))


def main() -> None:
    from data_throughput import generate, start_quiet_ray

    from resnet_platform.data.epoch_plan import EpochPlan, co_batch_repeat, shard_rows_of, window_shards_for

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--shard-size-mb", type=float, default=16.0)
    p.add_argument("--workdir", default=None)
    p.add_argument(
        "--budget-gib",
        type=float,
        default=0.25,
        help="read-ahead object-store budget of both schemes (--ingest-object-store-gib): small, "
        "so neither decodes the whole epoch ahead and the steady state is the pipeline's rate",
    )
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="plan-bench-"))
    src, shards = work / "src", str(work / "shards")
    if not (work / "shards" / "manifest.json").exists():
        generate(src, a.images, a.classes)
        from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet

        start_quiet_ray(a.cpus)
        prepare_imagenet(PrepareConfig(source=str(src), output=shards, splits=("train",),
                                       shard_size_mb=a.shard_size_mb, progress=False))  # fmt: skip
    else:
        start_quiet_ray(a.cpus)
    from resnet_platform.data.manifest import PreparedData

    manifest = PreparedData.open(shards).manifest
    n = manifest.splits["train"].num_rows
    print(f"{n} images in {len(manifest.splits['train'].shards)} shards, {a.ranks} ranks x {a.batch_size}")
    results = {"stream": [], "plan": []}
    keys = {}
    # A warm-up pass first (page cache, Ray's worker processes), not counted.
    stream_pass(shards, a.ranks, a.batch_size, n, seed=99, budget_gib=a.budget_gib)
    for i, kind in enumerate(("stream", "plan", "stream", "plan")):
        if kind == "stream":
            whole, steady, images, batches = stream_pass(
                shards, a.ranks, a.batch_size, n, seed=i, budget_gib=a.budget_gib
            )
        else:
            (whole, steady, images, batches), source = plan_pass(
                shards, a.ranks, a.batch_size, n, epoch=i // 2, budget_gib=a.budget_gib
            )
        results[kind].append((whole, steady))
        keys.setdefault(kind, []).append(batches)
        print(f"pass {i + 1} {kind:6s}: {images} images, whole {whole:6.1f} img/s, steady {steady:6.1f} img/s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    s_whole = np.mean([w for w, _ in results["stream"]])
    s_steady = np.mean([s for _, s in results["stream"]])
    p_whole = np.mean([w for w, _ in results["plan"]])
    p_steady = np.mean([s for _, s in results["plan"]])
    drift = abs(results["stream"][1][1] / results["stream"][0][1] - 1)
    print(f"\nplan / stream: whole {p_whole / s_whole:.2f}x, steady {p_steady / s_steady:.2f}x "
          f"(stream baseline moved {drift:.0%} between its passes; load {os.getloadavg()})")  # fmt: skip

    # Shuffle quality, epoch 1 -> epoch 2 of each scheme, over the batches as consumed.
    uniform = (a.batch_size - 1) / (n - 1)
    for kind in ("stream", "plan"):
        first = [k for b in keys[kind][0] for k in b]
        second = [k for b in keys[kind][1] for k in b]
        print(
            f"{kind}: co-batch repeat {co_batch_repeat(first, second, a.batch_size):.3f} (uniform {uniform:.4f})"
        )
    offsets = np.cumsum([s.rows for s in manifest.splits["train"].shards])
    plan_shards = shards_per_batch(keys["plan"][1], lambda k: int(np.searchsorted(offsets, k, side="right")))
    shard_of_key = stream_key_shards(shards, manifest)
    stream_shards = shards_per_batch(keys["stream"][1], shard_of_key.__getitem__)
    print(f"source shards per batch: stream {stream_shards:.1f}, plan {plan_shards:.1f} "
          f"(plan window {window_shards_for(shard_rows_of(manifest, 'train'), 0)} shards; {len(offsets)} shards)")  # fmt: skip
    # The plan's statistic by window size, from the plan itself (what the ranks train, batch by batch).
    rows = tuple(int(s.rows) for s in manifest.splits["train"].shards)
    for window in (1, 4, 8, 16, 28, 52):
        orders = [EpochPlan(rows, 0, e, window) for e in (0, 1)]
        per_step = [plan_batches(o, a.ranks, a.batch_size) for o in orders]
        repeat = co_batch_repeat(*[[k for b in batches for k in b] for batches in per_step], a.batch_size)
        print(f"plan window {window:2d} shards: co-batch repeat {repeat:.4f} (computed from the plan)")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


def plan_batches(plan, ranks: int, batch: int) -> list[list[int]]:
    """The plan's per-rank batches, step by step (rank 0's batch, rank 1's, ...)."""
    streams = [plan.rank_stream(0, r, ranks) for r in range(ranks)]
    out = []
    for i in range(0, len(streams[0]) - batch + 1, batch):
        out.extend(s[i : i + batch].tolist() for s in streams)
    return out


if __name__ == "__main__":
    main()
