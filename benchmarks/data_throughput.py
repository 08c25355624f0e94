"""Training-pipeline throughput: the platform's Ray Data pipeline vs torchvision ImageFolder + DataLoader.

    python benchmarks/data_throughput.py --images 10000

Generates ImageNet-like JPEGs (500x375, about 110 KB), prepares them into Parquet shards with the
platform's own prepare step, then streams one epoch per pass through each side on the same cores,
with the training transform (RandomResizedCrop 224 + flip, uint8) and the training loop's consumer
settings (local shuffle buffer 1024, 2 batches prefetched). Each pass reports:

- whole epoch: images / seconds from the iterator's creation to its last batch (start-up included);
- steady state: images / seconds over the epoch after its first 20% of images;
- start-up: seconds to the first batch.

The baseline runs before and after the platform's passes (the machine drifts). The GPU-decode
path's CPU side (``--decode gpu``: Ray Data only reads bytes and labels) is measured too, as img/s
and CPU-milliseconds per image over Ray's processes. Not a test; takes a few minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
STEADY_AFTER = 0.2  # steady state: the epoch after its first 20% of images


def _make_image(seed: int) -> bytes:
    """Natural-ish content: smoothed noise at a few scales over colour gradients, JPEG quality 90."""
    rng = np.random.default_rng(seed)
    h, w = 375, 500
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, off = rng.uniform(-0.3, 0.3, 2).tolist() + [rng.uniform(40, 200)]
        img[..., c] = off + a * gx + b * gy
    for scale, amp in ((48, 50), (12, 35), (3, 38)):
        small = rng.standard_normal((h // scale + 2, w // scale + 2, 3), dtype=np.float32)
        up = Image.fromarray(((small * 40 + 128).clip(0, 255)).astype(np.uint8)).resize(
            ((w // scale + 2) * scale, (h // scale + 2) * scale), Image.BICUBIC
        )
        img += (np.asarray(up, np.float32)[:h, :w] - 128) / 40 * amp
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * 14
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(root: Path, n: int, classes: int) -> int:
    paths = [root / "train" / f"n{c:08d}" / f"n{c:08d}_{i}.JPEG" for i in range(n) for c in [i % classes]]
    for p in {p.parent for p in paths}:
        p.mkdir(parents=True, exist_ok=True)
    todo = [(i, p) for i, p in enumerate(paths) if not p.exists()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for (_, p), data in zip(todo, pool.map(_make_image, [i for i, _ in todo], chunksize=32), strict=True):
            p.write_bytes(data)
    return sum(p.stat().st_size for p in paths)


@dataclass
class Pass:
    images: int
    whole_s: float  # iterator creation -> last batch
    startup_s: float  # iterator creation -> first batch
    steady_ips: float  # after the first STEADY_AFTER of the images
    cpu_ms_per_image: float | None = None

    @property
    def whole_ips(self) -> float:
        return self.images / self.whole_s


def timed_pass(make_batches, expected: int) -> Pass:
    """One epoch, timed whole and in steady state (see the module docstring)."""
    t0 = time.perf_counter()
    n, first, mark = 0, None, None
    for batch in make_batches():
        x = batch["image"] if isinstance(batch, dict) else batch[0]
        n += len(x)
        now = time.perf_counter()
        if first is None:
            first = now - t0
        if mark is None and n >= STEADY_AFTER * expected:
            mark = (now, n)
    end = time.perf_counter()
    steady = (n - mark[1]) / (end - mark[0]) if mark and end > mark[0] else float("nan")
    return Pass(n, end - t0, first or 0.0, steady)


def start_quiet_ray(cpus: int) -> None:
    """A local Ray of ``cpus`` cores for a benchmark: no dashboard, no worker logs, no progress bars."""
    import ray
    import ray.data

    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    ray.data.DataContext.get_current().enable_progress_bars = False


def ray_cpu_seconds() -> float:
    """CPU seconds used so far by this process and every Ray process of this user."""
    import psutil

    total = sum(psutil.Process().cpu_times()[:2])
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and ("ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd):
                total += sum(proc.cpu_times()[:2])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def baseline(root: Path, workers: int, batch_size: int, expected: int) -> Pass:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)

    def batches():
        return torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=False
        )

    return timed_pass(batches, expected)


def ray_pass(uri: str, batch_size: int, expected: int, decode: str = "cpu") -> Pass:
    """One epoch of the platform's pipeline, consumed as the training loop consumes it."""
    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset

    ds = build_split_dataset(uri, "train", train=True, transform=TransformConfig(), decode=decode)

    def batches():
        it = ds.iterator()
        if decode == "gpu":
            return it.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2,
                                   local_shuffle_buffer_size=1024)  # fmt: skip
        return it.iter_torch_batches(
            batch_size=batch_size, prefetch_batches=2, local_shuffle_buffer_size=1024
        )

    cpu0 = ray_cpu_seconds()
    result = timed_pass(batches, expected)
    result.cpu_ms_per_image = 1000 * (ray_cpu_seconds() - cpu0) / max(result.images, 1)
    return result


def region_decode_batch(batch: dict) -> dict:
    """The CPU path with region decode (a candidate, not the platform's path): nvImageCodec's CPU
    backend decodes only each image's RandomResizedCrop window (the platform's draws), then the
    CPU path's own uint8 resize and flip per image (``transforms.crop_resize``, the fast CPU kernel;
    the batched matmul resize of ``--decode gpu`` is for GPUs)."""
    import numpy as np

    from resnet_platform.data import transforms
    from resnet_platform.data.nvimgcodec_adapter import region_decoder
    from resnet_platform.data.pipeline import TransformConfig, _one_thread, draw_crop_for

    _one_thread()
    t, rng, codec = TransformConfig(), np.random.default_rng(), region_decoder("cpu", cpu_threads=1)
    parsed = codec.parse(batch["image"])
    crops = [draw_crop_for(rng, q.width, q.height, t, True) for q in parsed]
    windows, _ = codec.decode(parsed, [c.box for c in crops])
    images = [
        transforms.crop_resize(
            w.permute(2, 0, 1), transforms.Crop((0, 0, w.shape[1], w.shape[0]), c.flip), 224
        )
        for w, c in zip(windows, crops, strict=True)
    ]
    return {"image": np.stack([im.permute(1, 2, 0).numpy() for im in images]), "label": batch["label"]}


def region_pass(uri: str, batch_size: int, expected: int) -> Pass:
    """:func:`region_decode_batch` as the pipeline's map_batches stage, consumed as the loop does."""
    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset

    ds = build_split_dataset(uri, "train", train=True, transform=TransformConfig(), decode="gpu")
    ds = ds.map_batches(
        region_decode_batch, batch_size=batch_size, batch_format="numpy", zero_copy_batch=True
    )

    def batches():
        return ds.iterator().iter_torch_batches(
            batch_size=batch_size, prefetch_batches=2, local_shuffle_buffer_size=1024
        )

    cpu0 = ray_cpu_seconds()
    result = timed_pass(batches, expected)
    result.cpu_ms_per_image = 1000 * (ray_cpu_seconds() - cpu0) / max(result.images, 1)
    return result


def row(name: str, p: Pass, base: Pass | None) -> str:
    ratio = (
        f"{p.steady_ips / base.steady_ips:.2f}x | {p.whole_ips / base.whole_ips:.2f}x"
        if base
        else "1.00x | 1.00x"
    )
    cpu = f"{p.cpu_ms_per_image:.2f}" if p.cpu_ms_per_image is not None else "-"
    return f"| {name} | {p.images} | {p.startup_s:.1f} | {p.whole_ips:,.0f} | {p.steady_ips:,.0f} | {ratio} | {cpu} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--cpus", type=int, default=2, help="cores for both the DataLoader workers and Ray")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size-mb", type=float, default=64.0)
    p.add_argument("--workdir", default=None, help="keep generated data here (default: a temp dir)")
    p.add_argument("--region-decode", action="store_true", help="add the region-decode CPU path's pass")
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="data-bench-"))
    src = work / "src"
    t = time.perf_counter()
    total = generate(src, a.images, a.classes)
    print(
        f"{a.images} JPEGs, 500x375, mean {total / a.images / 1024:.0f} KB ({time.perf_counter() - t:.0f}s)"
    )

    import ray
    import ray.data

    from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet

    shards = str(work / "shards")
    start_quiet_ray(a.cpus)
    t = time.perf_counter()
    prepare_imagenet(
        PrepareConfig(
            source=str(src), output=shards, splits=("train",), shard_size_mb=a.shard_size_mb, progress=False
        )
    )
    print(f"prepared {shards} ({time.perf_counter() - t:.0f}s)")
    ray.shutdown()  # the baseline gets the cores to itself

    rows: list[tuple[str, Pass]] = []
    before = baseline(src, a.cpus, a.batch_size, a.images)
    rows.append((f"ImageFolder + DataLoader({a.cpus} workers), before", before))
    print(
        rows[-1][0],
        f"{before.whole_ips:,.0f} whole, {before.steady_ips:,.0f} steady img/s (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    start_quiet_ray(a.cpus)
    try:
        for label, decode in (("platform, decode cpu, epoch 1", "cpu"), ("platform, decode cpu, epoch 2", "cpu"),
                              ("platform, decode gpu: CPU side (bytes + labels only)", "gpu")):  # fmt: skip
            r = ray_pass(shards, a.batch_size, a.images, decode)
            rows.append((label, r))
            print(
                label,
                f"{r.whole_ips:,.0f} whole, {r.steady_ips:,.0f} steady img/s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        if a.region_decode:
            label = "CPU path with nvImageCodec region decode (candidate)"
            r = region_pass(shards, a.batch_size, a.images)
            rows.append((label, r))
            print(
                label,
                f"{r.whole_ips:,.0f} whole, {r.steady_ips:,.0f} steady img/s (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        ray.shutdown()
    after = baseline(src, a.cpus, a.batch_size, a.images)
    rows.append((f"ImageFolder + DataLoader({a.cpus} workers), after", after))
    base = Pass(
        before.images, (before.whole_s + after.whole_s) / 2, (before.startup_s + after.startup_s) / 2,
        (before.steady_ips + after.steady_ips) / 2,
    )  # fmt: skip
    print(f"\n{a.images} images, {a.cpus} cores; ratios against the mean of the two baseline passes")
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(
        "| pass | images | start-up s | whole epoch img/s | steady img/s | vs DataLoader steady | vs whole | CPU ms/img |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(row(name, r, base))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
