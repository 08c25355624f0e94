"""How the data pipeline's cost grows with the work: 2k, 8k and 32k images streamed from local shards.

    python benchmarks/data_scaling.py                    # sizes 2000,8000,32000
    python benchmarks/data_scaling.py --sizes 2000,8000 --plot scaling.png

For each size: one epoch of the platform's CPU-decode pipeline (``build_split_dataset`` +
``iter_torch_batches`` as the training loop consumes it), with start-up (seconds to the first
batch), whole-epoch and steady-state img/s (after the first 20%), and the peak memory of the
driver, of Ray's worker processes and of the object store, plus the bytes Ray spilled to disk.
A pipeline that streams has flat img/s, constant start-up, flat memory and nothing spilled.

The JPEGs are ``data_throughput.py``'s generated 500x375 images: 2,000 distinct ones, linked
under more names for the larger sizes (decode cost does not depend on the content being new), then
prepared into shards with the platform's own prepare step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
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


class PeakMemory:
    """Samples driver RSS, Ray worker RSS and object-store use every 0.5 s; keeps the peaks."""

    def __init__(self) -> None:
        self.peak = {"driver_mb": 0.0, "workers_mb": 0.0, "object_store_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil
        import ray

        me = psutil.Process()
        driver = me.memory_info().rss
        workers = 0
        # This Ray's workers only (ray.init started Ray under this process): other Ray instances on
        # the machine are not ours to count.
        for proc in me.children(recursive=True):
            try:
                if "ray::" in " ".join(proc.cmdline()):
                    workers += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        total = ray.cluster_resources().get("object_store_memory", 0)
        free = ray.available_resources().get("object_store_memory", total)
        for key, value in (("driver_mb", driver), ("workers_mb", workers), ("object_store_mb", total - free)):
            self.peak[key] = max(self.peak[key], value / 2**20)

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

    # This Ray's own address: other Ray instances may run on the same machine.
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    match = re.search(r"Spilled (\d+) MiB", text)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,8000,32000")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", default=None)
    p.add_argument("--plot", default=None, help="write img/s and memory against size as a PNG")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]

    import ray
    import ray.data
    from data_throughput import generate, ray_pass, start_quiet_ray

    from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet

    work = Path(a.workdir or tempfile.mkdtemp(prefix="data-scaling-"))
    generate(work / "distinct", DISTINCT, 10)
    start_quiet_ray(a.cpus)
    rows = []
    try:
        for n in sizes:
            tree, shards = work / f"tree-{n}", str(work / f"shards-{n}")
            link_tree(work / "distinct", tree, n)
            prepare_imagenet(
                PrepareConfig(
                    source=str(tree), output=shards, splits=("train",), shard_size_mb=64, progress=False
                )
            )
        ray_pass(str(work / f"shards-{sizes[0]}"), a.batch_size, sizes[0])  # warm-up: worker processes
        for n in sizes:
            spilled0 = spilled_mb()
            with PeakMemory() as mem:
                r = ray_pass(str(work / f"shards-{n}"), a.batch_size, n)
            rows.append((n, r, dict(mem.peak), spilled_mb() - spilled0))
            print(f"{n}: {r.whole_s:.1f}s, {r.steady_ips:,.0f} steady img/s, peaks {mem.peak}", flush=True)
    finally:
        ray.shutdown()
    print(f"\n{a.cpus} cores, CPU decode, RandomResizedCrop 224, batch {a.batch_size}")
    print(
        "| images | epoch s | start-up s | whole img/s | steady img/s | driver MiB | workers MiB "
        "| object store MiB | spilled MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r, m, spilled in rows:
        print(
            f"| {n} | {r.whole_s:.1f} | {r.startup_s:.1f} | {r.whole_ips:,.0f} | {r.steady_ips:,.0f} | "
            f"{m['driver_mb']:,.0f} | {m['workers_mb']:,.0f} | {m['object_store_mb']:,.0f} | {spilled:,.0f} |"
        )
    steady = [r.steady_ips for _, r, _, _ in rows]
    print(f"\nsteady img/s spread: {max(steady) / min(steady) - 1:.1%} (goal: within 10%)")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ns = [n for n, *_ in rows]
        ax1.plot(ns, [r.whole_ips for _, r, _, _ in rows], "o-", label="whole epoch")
        ax1.plot(ns, steady, "s-", label="steady state")
        ax1.set(xscale="log", xlabel="images per epoch", ylabel="img/s", title="throughput", ylim=(0, None))
        ax1.legend()
        for key in ("driver_mb", "workers_mb", "object_store_mb"):
            ax2.plot(ns, [m[key] for _, _, m, _ in rows], "o-", label=key.replace("_mb", ""))
        ax2.set(xscale="log", xlabel="images per epoch", ylabel="peak MiB", title="memory", ylim=(0, None))
        ax2.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=100)
        print(f"plot: {a.plot}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
