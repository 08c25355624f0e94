"""Time the training loop spends in ``report`` per epoch: synchronous against asynchronous uploads.

The platform's own code path (``run_training``: Ray Train DDP, Ray Data, rank 0's checkpoint
through ``train/uploads.py``) on the local Ray runtime, with checkpoints stored in a real
S3-compatible server (moto on 127.0.0.1, started here). The same run twice, ``--checkpoint-upload
sync`` then ``async``, on scikit-learn's digits with a network whose checkpoint is large
(ResNet-18 by default: weights + momentum, ~90 MB), so the upload is what ``report`` waits for.

``report_s`` is measured inside the loop on rank 0 (the wait for the previous upload included) and
read back from the final checkpoint's history (every epoch but the last carries it).
``--upload-delay-s`` holds each ``state.pt`` upload that long in a loopback proxy (a slower store).

    .venv/bin/python benchmarks/checkpoint_upload.py [--arch resnet18 --epochs 4 --workers 2 --upload-delay-s 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "tests"))  # the loopback fault proxy of the test suite
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
            return proc, endpoint
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--upload-delay-s", type=float, default=0.0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    moto, endpoint = start_moto()
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    proxy = None
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3
        import ray

        from resnet_platform.data.digits import write_digits_imagenet
        from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet
        from resnet_platform.train import TrainConfig
        from resnet_platform.train.runner import run_training

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
        layout = write_digits_imagenet(work / "digits-imagenet")
        shards = str(work / "digits-shards")
        prepare_imagenet(PrepareConfig(source=str(layout.root), output=shards, shard_size_mb=0.25))
        if args.upload_delay_s > 0:
            from fixtures.s3_faults import S3FaultProxy

            proxy = S3FaultProxy(endpoint)
            proxy.add(r"PUT /[^ ]*/state\.pt", delay_s=args.upload_delay_s)
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint  # the storage filesystem the driver builds

        rows = {}
        for mode in ("sync", "async"):
            config = TrainConfig(
                data=shards, arch=args.arch, image_size=32, epochs=args.epochs, batch_size=64, lr=0.1,
                augmentation="none", num_workers=args.workers, cpus_per_worker=0.5, shuffle_buffer=256,
                storage="s3://bench/runs", name=f"{mode}-{int(time.time())}", checkpoint_upload=mode, seed=0,
            )  # fmt: skip
            t0 = time.perf_counter()
            outcome = run_training(config)
            wall = time.perf_counter() - t0
            timed = outcome.history[:-1]  # the final checkpoint holds the earlier epochs' timings
            rows[mode] = {
                "report_s": statistics.mean(h["report_s"] for h in timed),
                "checkpoint_upload_s": statistics.mean(h["checkpoint_upload_s"] for h in timed),
                "checkpoint_save_s": statistics.mean(h["checkpoint_save_s"] for h in timed),
                "epoch_time_s": statistics.mean(h["epoch_time_s"] for h in timed),
                "wall_s": wall,
                "epochs_timed": len(timed),
            }
        size_mb = (
            boto3.client("s3", endpoint_url=endpoint).head_object(
                Bucket="bench",
                Key=f"runs/{config.name}/checkpoint_epoch_{args.epochs:04d}/state.pt",  # the last is always kept
            )["ContentLength"]
            / 1e6
        )
    finally:
        if proxy is not None:
            proxy.close()
        moto.terminate()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.arch}, {args.workers} workers, checkpoint {size_mb:.0f} MB, upload delay {args.upload_delay_s} s"
    )
    print(f"{'mode':>6} {'report s/epoch':>15} {'upload s':>9} {'save s':>7} {'epoch s':>8} {'wall s':>7}")
    for mode, r in rows.items():
        print(
            f"{mode:>6} {r['report_s']:>15.2f} {r['checkpoint_upload_s']:>9.2f} {r['checkpoint_save_s']:>7.2f} "
            f"{r['epoch_time_s']:>8.1f} {r['wall_s']:>7.0f}"
        )
    ratio = rows["async"]["report_s"] / rows["sync"]["report_s"]
    print(f"time in report per epoch, async / sync: {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "checkpoint_mb": size_mb, "rows": rows, "ratio": ratio}, indent=1)
        )


if __name__ == "__main__":
    main()
