"""Batch inference throughput: jobs/batch_predict.py (Ray Data) vs a plain loop of load_model(...).predict_topk.

    python benchmarks/batch_predict.py --images 4000 --workdir /tmp/bpbench

Generates JPEGs (``--source-size`` square, natural-ish content), registers a randomly initialised
``--arch`` in a local MLflow store (SQLite + local artifacts), then on the same images and the same
``--cpus`` cores measures:

* loop: ``load_model(models:/NAME/1)`` then ``predict_topk`` over the files in batches of ``--batch-size``
  (one process, torch using ``--cpus`` threads);
* batch predict: ``serving.batch.batch_predict`` on a local Ray with ``num_cpus=--cpus`` (decode tasks and
  model actors share them), Parquet written to disk.

Whole run: wall time of everything the user waits for (model pull, and for batch predict the Ray Data
start-up, actor start and Parquet write; ``ray.init`` itself is reported separately). Steady state:
the loop's second half (time stamps at N/2 and N); batch predict's rows after its first output file
over the time from the first file to the last (Parquet files land as blocks finish). Not a test;
takes a few minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _image(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    img = (
        base
        + 50 * np.sin(gx[..., None] / rng.uniform(3, 12))
        + 40 * np.cos(gy[..., None] / rng.uniform(3, 12))
    )
    img += rng.normal(0, 12, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(root: Path, n: int, size: int) -> list[Path]:
    paths = [root / f"part{i % 8}" / f"img_{i:06d}.jpg" for i in range(n)]
    for p in paths:
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_image(int(p.stem[4:]), size))
    return paths


def subset(src: list[Path], dst: Path) -> Path:
    """A folder holding exactly ``src`` (hard links), whatever else the workdir holds."""
    if dst.exists():
        shutil.rmtree(dst)
    for p in src:
        target = dst / p.parent.name / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, target)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--source-size", type=int, default=96, help="generated JPEG side")
    ap.add_argument("--arch", default="cifar_resnet20")
    ap.add_argument("--image-size", type=int, default=32, help="model input crop")
    ap.add_argument("--resize-size", type=int, default=36, help="shorter side before the crop")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument(
        "--loop-threads",
        type=int,
        default=None,
        help="torch threads of the loop (default: --cpus); on a loaded machine 1 can be faster",
    )
    ap.add_argument("--concurrency", type=int, default=1, help="model actors")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--decode-cpus", type=float, default=1.0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import ray
    import torch

    from resnet_platform.models import build_model
    from resnet_platform.serving.batch import BatchPredictConfig, batch_predict
    from resnet_platform.tracking import ModelSpec, end_run, load_model, log_resnet_model, start_run

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bpbench-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = generate(work / "images", args.images, args.source_size)
    full = subset(paths, work / "images-full")  # exactly these files, whatever else the workdir holds
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = ModelSpec.for_arch(args.arch, 10, image_size=args.image_size, resize_size=args.resize_size)
    torch.manual_seed(0)
    run_id = start_run(uri, "bench", "batch-predict-bench", params={}, tags={})
    name = f"bench-{args.arch}-{os.getpid()}"
    info = log_resnet_model(
        uri, run_id, build_model(args.arch, 10).eval().state_dict(), spec, registered_name=name
    )
    end_run(uri, run_id)
    model_uri = f"models:/{name}/{info.version}"
    torch.set_num_threads(args.loop_threads or args.cpus)

    # Plain loop: pull the model, predict_topk in batches.
    t0 = time.perf_counter()
    model = load_model(model_uri, tracking_uri=uri)
    t_half = None
    for i in range(0, len(paths), args.batch_size):
        model.predict_topk([str(p) for p in paths[i : i + args.batch_size]], k=5)
        if t_half is None and i + args.batch_size >= len(paths) // 2:
            t_half, n_half = time.perf_counter(), i + args.batch_size
    loop_total = time.perf_counter() - t0
    loop_whole = len(paths) / loop_total
    loop_steady = (len(paths) - n_half) / (t0 + loop_total - t_half)

    t = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - t

    out = work / "out-full"
    start = time.perf_counter()
    summary = batch_predict(
        BatchPredictConfig(
            model=model_uri,
            input=str(full),
            output=str(out),
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            cpus_per_actor=args.cpus_per_actor,
            decode_cpus=args.decode_cpus,
            overwrite=True,
            tracking_uri=uri,
        )
    )
    bp_total = time.perf_counter() - start
    assert summary.images == len(paths) and summary.failures == 0
    bp_whole = len(paths) / bp_total
    # Steady state from the streamed output itself: Parquet files land one per block as the model
    # finishes it; rows after the first file over the time from the first file to the last.
    files = sorted(out.glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    span = files[-1].stat().st_mtime - files[0].stat().st_mtime
    bp_steady = sum(rows[1:]) / span if len(files) > 1 and span > 0 else float("nan")
    ray.shutdown()

    print(
        f"{len(paths)} images {args.source_size}px -> {args.arch} @ {args.image_size}, {args.cpus} CPUs, batch {args.batch_size}, loop threads {args.loop_threads or args.cpus}"
    )
    print(f"ray.init: {ray_init:.1f}s (not counted); loop {loop_total:.1f}s, batch predict {bp_total:.1f}s")
    print("| | whole run img/s | steady img/s |")
    print("|---|---|---|")
    print(f"| loop of load_model(...).predict_topk | {loop_whole:.0f} | {loop_steady:.0f} |")
    print(f"| batch_predict (Ray Data) | {bp_whole:.0f} | {bp_steady:.0f} |")
    print(f"| ratio | {bp_whole / loop_whole:.2f}x | {bp_steady / loop_steady:.2f}x |")


if __name__ == "__main__":
    main()
