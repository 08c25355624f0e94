"""Training-pipeline throughput: Ray Data from shards vs torchvision ImageFolder + DataLoader.

    python benchmarks/data_throughput.py --images 3000

Generates ImageNet-like JPEGs (500x375, about 110 KB), prepares them into shards (original bytes,
re-encoded to max side 256, and the original bytes on a local moto S3 server), then measures
steady-state images/s per CPU core of the training transform (RandomResizedCrop 224 + flip, uint8)
for each, timed from the first batch so start-up is excluded. Ratios are against the baseline
measured in the same run. Not a test; takes a few minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


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


def measure(batches, batch_size_hint: int) -> tuple[float, int]:
    """Images/s from the first batch on (start-up excluded)."""
    it = iter(batches)
    next(it)  # start-up: the first batch is not timed
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        x = batch["image"] if isinstance(batch, dict) else batch[0]
        n += len(x)
    dt = time.perf_counter() - t0
    return n / dt, n + batch_size_hint


def baseline(root: Path, workers: int, batch_size: int) -> float:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=False
    )
    rate, _ = measure(loader, batch_size)
    return rate


def ray_pipeline(uri: str, batch_size: int, map_batch_size: int) -> float:
    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset

    ds = build_split_dataset(uri, "train", train=True, transform=TransformConfig(), batch_size=map_batch_size)
    batches = ds.iterator().iter_torch_batches(
        batch_size=batch_size, local_shuffle_buffer_size=4 * batch_size
    )
    rate, _ = measure(batches, batch_size)
    return rate


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.ports import free_port, wait_http

    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint + "/moto-api/", timeout=30, proc=proc)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    return proc, endpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--cpus", type=int, default=2, help="cores for both the DataLoader workers and Ray")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--map-batch-size", type=int, default=64, help="Ray Data map_batches batch size")
    p.add_argument("--shard-size-mb", type=float, default=32.0)
    p.add_argument("--workdir", default=None, help="keep generated data here (default: a temp dir)")
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="data-bench-"))
    src = work / "src"
    t = time.perf_counter()
    total = generate(src, a.images, a.classes)
    print(
        f"{a.images} JPEGs, 500x375, mean {total / a.images / 1024:.0f} KB ({time.perf_counter() - t:.0f}s)"
    )

    results: dict[str, float] = {}
    results["a_imagefolder"] = baseline(src, a.cpus, a.batch_size)
    print(
        f"(a) ImageFolder+DataLoader({a.cpus} workers): {results['a_imagefolder'] / a.cpus:,.0f} img/s/core"
    )

    moto, _ = start_moto()
    import ray
    import ray.data

    from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet
    from resnet_platform.storage import s3_client

    try:
        ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        s3_client().create_bucket(Bucket="bench")
        outs = {
            "b_local_original": str(work / "shards-original"),
            "c_local_max256": str(work / "shards-256"),
            "d_s3_original": "s3://bench/imagenet",
        }
        for name, out in outs.items():
            t = time.perf_counter()
            s = prepare_imagenet(
                PrepareConfig(
                    source=str(src),
                    output=out,
                    splits=("train",),
                    shard_size_mb=a.shard_size_mb,
                    max_side=256 if "256" in name else None,
                    progress=False,
                )
            )
            print(
                f"prepared {name}: {s.shards} shards, {s.bytes / 2**20:.0f} MiB ({time.perf_counter() - t:.0f}s)"
            )
        for name, out in outs.items():
            if name == "b_local_original":  # warm-up pass: worker processes, imports, page cache
                ray_pipeline(out, a.batch_size, a.map_batch_size)
            results[name] = ray_pipeline(out, a.batch_size, a.map_batch_size)
            ratio = results[name] / results["a_imagefolder"]
            print(
                f"({name[0]}) {name}: {results[name] / a.cpus:,.0f} img/s/core, {ratio:.2f}x first baseline"
            )
    finally:
        ray.shutdown()
        moto.terminate()
        moto.wait(timeout=10)
    # The baseline again after Ray stopped; the mean of both runs is the reference (a shared,
    # noisy machine drifts over minutes).
    again = baseline(src, a.cpus, a.batch_size)
    print(f"(a) again: {again / a.cpus:,.0f} img/s/core (first run {results['a_imagefolder'] / a.cpus:,.0f})")
    results["a_imagefolder"] = (results["a_imagefolder"] + again) / 2
    base = results["a_imagefolder"]
    print("\n| pipeline | img/s per core | vs (a) |\n|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate / a.cpus:,.0f} | {rate / base:.2f}x |")
    s3_vs_local = results["d_s3_original"] / results["b_local_original"]
    print(f"\nS3 vs local (original bytes): {s3_vs_local:.2f}x")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
