"""How the training ingest's cost grows with the data set, consumed the way Ray Train consumes it.

    python benchmarks/data_scaling.py                          # sizes 4000,32000,128000
    python benchmarks/data_scaling.py --sizes 4000,16000 --workdir /tmp/bench/scale

For each size: one epoch of the platform's CPU-decode pipeline (``build_split_dataset``, the
ingest budget ``--budget-gib`` as ``--ingest-object-store-gib`` sets it) split with
``streaming_split(equal=True)`` (one SplitCoordinator actor) and read by ``--consumers`` actor
processes (0.5 CPU each, as training workers) with ``iter_torch_batches`` as the loop reads epoch 1.
Reported per size: steady img/s (after each consumer's first 20% of rows), time to the first batch,
the private memory (``RssAnon``: not the object-store pages a process maps) of the driver, the
coordinator and the consumers, object-store peak and bytes spilled, and the pickled bytes of the
epoch's read tasks (what Ray Data ships per epoch).

Two comparisons at the first size: time to first batch with the 1,024-row local shuffle buffer
(what epoch 1 used before) and without it (epoch 1 now); at the last size: object-store peak with
Ray Data's default budget (half the store) and with the platform's.

Images: ``data_throughput.py``'s 500x375 JPEGs, 2,000 distinct ones hard-linked under more names,
prepared with the platform's own prepare step into small shards (``--shard-size-mb``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

DISTINCT = 2000


def link_tree(distinct: Path, out: Path, n: int) -> None:
    """``out/train/<wnid>/*.JPEG``: ``n`` names over the distinct files (hard links, no copies)."""
    files = sorted(distinct.glob("train/*/*.JPEG"))
    for i in range(n):
        f = files[i % len(files)]
        target = out / "train" / f.parent.name / f"{f.stem}_{i}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(f, target)


def rss_anon_mb(pid: int) -> float:
    """Private resident memory of a process (``RssAnon``), MiB; 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"RssAnon:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


class PeakMemory:
    """Every 0.5 s: private memory of the driver, the SplitCoordinator and each consumer (by their
    process titles, among this driver's Ray processes), and object-store use; keeps the peaks."""

    def __init__(self) -> None:
        self.peak = {"driver": 0.0, "coordinator": 0.0, "consumer": 0.0, "object_store": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil
        import ray

        me = psutil.Process()
        self.peak["driver"] = max(self.peak["driver"], rss_anon_mb(me.pid))
        for proc in me.children(recursive=True):
            try:
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for key, name in (("coordinator", "SplitCoordinator"), ("consumer", "Consumer")):
                if f"ray::{name}" in title:
                    self.peak[key] = max(self.peak[key], rss_anon_mb(proc.pid))
        total = ray.cluster_resources().get("object_store_memory", 0)
        free = ray.available_resources().get("object_store_memory", total)
        self.peak["object_store"] = max(self.peak["object_store"], (total - free) / 2**20)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a sample may race a process exit
                pass
            self._stop.wait(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def spilled_mb() -> float:
    """Bytes Ray has spilled to disk so far (Ray's memory summary), in MiB."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    match = re.search(r"Spilled (\d+) MiB", text)
    return float(match.group(1)) if match else 0.0


def read_task_bytes(uri: str) -> tuple[int, int, int]:
    """(read tasks, their pickled bytes per epoch, the bytes a shard table in each task would add)."""
    import pickle

    from ray import cloudpickle

    from resnet_platform.data.manifest import read_manifest
    from resnet_platform.data.shard_reader import verified_shard_source

    manifest = read_manifest(uri)
    source = verified_shard_source(
        uri, manifest, "train", shuffle=None, max_image_pixels=None, skips_name="b"
    )
    tasks = source.get_read_tasks(len(manifest.splits["train"].shards))
    table = {s.path: (uri + "/" + s.path, s.sha256, s.bytes) for s in manifest.splits["train"].shards}
    return len(tasks), sum(len(cloudpickle.dumps(t)) for t in tasks), len(tasks) * len(pickle.dumps(table))


def make_consumer():
    import ray

    @ray.remote(num_cpus=0.5)
    class Consumer:
        """A training worker's ingest: ``iter_torch_batches`` of its split, nothing else."""

        def run(self, it, batch_size: int, buffer: int | None) -> dict:
            start = time.perf_counter()
            first, rows, marks = None, 0, []
            for b in it.iter_torch_batches(
                batch_size=batch_size, prefetch_batches=2, local_shuffle_buffer_size=buffer
            ):
                now = time.perf_counter() - start
                first = now if first is None else first
                rows += len(b["label"])
                marks.append((now, rows))
            return {"first_s": first, "rows": rows, "marks": marks, "seconds": time.perf_counter() - start}

    return Consumer


def one_pass(uri: str, a, budget_gib: float | None, buffer: int | None, consumers) -> dict:
    import ray
    from ray.data import ExecutionResources

    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset

    ds = build_split_dataset(
        uri, "train", train=True, transform=TransformConfig(image_size=a.image_size), run="b"
    )
    if budget_gib:
        ds.context.execution_options.resource_limits = ExecutionResources(
            object_store_memory=budget_gib * 2**30
        )
    spilled0 = spilled_mb()
    with PeakMemory() as mem:
        splits = ds.streaming_split(len(consumers), equal=True)
        out = ray.get([c.run.remote(s, a.batch_size, buffer) for c, s in zip(consumers, splits, strict=True)])
    steady = 0.0
    for r in out:  # each consumer's rate after its first 20% of rows, summed
        t20, n20 = next((t, n) for t, n in r["marks"] if n >= 0.2 * r["rows"])
        steady += (r["rows"] - n20) / max(r["seconds"] - t20, 1e-9)
    return {
        "rows": sum(r["rows"] for r in out),
        "first_s": max(r["first_s"] for r in out),
        "steady": steady,
        "mem": dict(mem.peak),
        "spilled": spilled_mb() - spilled0,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4000,32000,128000")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--shard-size-mb", type=float, default=8.0)
    p.add_argument(
        "--budget-gib", type=float, default=2.0, help="the ingest budget (--ingest-object-store-gib)"
    )
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]

    import ray
    from data_throughput import generate, start_quiet_ray

    from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet

    work = Path(a.workdir or tempfile.mkdtemp(prefix="data-scaling-"))
    generate(work / "distinct", DISTINCT, 10)
    for n in sizes:
        link_tree(work / "distinct", work / f"tree-{n}", n)
    start_quiet_ray(a.cpus)
    rows, extra = [], []
    try:
        for n in sizes:
            prepare_imagenet(
                PrepareConfig(
                    source=str(work / f"tree-{n}"), output=str(work / f"shards-{n}"), splits=("train",),
                    shard_size_mb=a.shard_size_mb, progress=False,
                )
            )  # fmt: skip
        consumers = [make_consumer().remote() for _ in range(a.consumers)]
        first = str(work / f"shards-{sizes[0]}")
        one_pass(first, a, a.budget_gib, None, consumers)  # warm-up: worker processes
        for n in sizes:
            uri = str(work / f"shards-{n}")
            r = one_pass(uri, a, a.budget_gib, None, consumers)
            r["tasks"], r["task_bytes"], r["table_bytes"] = read_task_bytes(uri)
            rows.append((n, r))
            print(f"{n}: {r}", flush=True)
        before = one_pass(first, a, a.budget_gib, 1024, consumers)
        extra.append(("first size, 1,024-row shuffle buffer (epoch 1 before)", sizes[0], before))
        extra.append(("first size, no buffer (epoch 1 now)", sizes[0], rows[0][1]))
        default = one_pass(str(work / f"shards-{sizes[-1]}"), a, None, None, consumers)
        extra.append(("last size, Ray Data's default budget", sizes[-1], default))
        extra.append((f"last size, {a.budget_gib:g} GiB budget", sizes[-1], rows[-1][1]))
    finally:
        ray.shutdown()
    print(f"\n{a.cpus} cores, {a.consumers} consumers, CPU decode at {a.image_size}px, batch {a.batch_size}")
    print(
        "| images | shards | steady img/s | first batch s | driver MiB | coordinator MiB | consumer MiB "
        "| object store peak MiB | spilled MiB | read-task KiB/epoch (a table in each: +KiB) | load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        m = r["mem"]
        print(
            f"| {n:,} | {r['tasks']} | {r['steady']:,.0f} | {r['first_s']:.1f} | {m['driver']:,.0f} | "
            f"{m['coordinator']:,.0f} | {m['consumer']:,.0f} | {m['object_store']:,.0f} | {r['spilled']:,.0f} | "
            f"{r['task_bytes'] / 1024:,.0f} (+{r['table_bytes'] / 1024:,.0f}) | {r['load']:.0f} |"
        )
    steady = [r["steady"] for _, r in rows]
    print(f"\nsteady img/s spread: {max(steady) / min(steady) - 1:.1%} (goal: within 10%)")
    print("\n| pass | images | first batch s | steady img/s | object store peak MiB | load |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, r in extra:
        print(
            f"| {name} | {n:,} | {r['first_s']:.1f} | {r['steady']:,.0f} | {r['mem']['object_store']:,.0f} "
            f"| {r['load']:.0f} |"
        )
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
