"""ResNet-50 training throughput on one GPU: synthetic batches against the full pipeline from shards.

    python benchmarks/gpu_throughput.py                      # on a GPU machine (bf16 AMP, channels_last)
    python benchmarks/gpu_throughput.py --device cpu --arch resnet18 --images 256 --steps 4 --batch 16

Both rows run the identical training step of the platform's loop (uint8 NHWC batch -> normalize
on the device -> channels_last -> forward/backward/SGD under autocast). "synthetic" feeds one
batch already on the device, the model's ceiling; "pipeline" streams ImageNet-like JPEGs from
Parquet shards through Ray Data (decode + RandomResizedCrop on the CPUs). Their ratio says how
far the data path keeps the GPU fed on this machine. Not a test: a short script for the device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def make_step(model, device, amp_dtype, channels_last: bool):
    from resnet_platform.train.loop import Normalizer

    normalize = Normalizer(device, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images_u8: torch.Tensor, labels: torch.Tensor) -> None:
        x = normalize(images_u8.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), labels.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, batches, steps: int, warmup: int, device) -> float:
    """images/s over ``steps`` batches after ``warmup``."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--images", type=int, default=6000, help="JPEGs generated for the pipeline row")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default="bf16")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()

    import ray
    from data_throughput import generate

    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset
    from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet
    from resnet_platform.models import build_model

    device = torch.device(a.device)
    amp = (
        {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[a.amp] if device.type == "cuda" else None
    )
    channels_last = not a.no_channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(a.arch).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = make_step(model, device, amp, channels_last)
    rows = []

    # 1. synthetic: one uint8 batch resident on the device, the model's ceiling
    x = torch.randint(0, 256, (a.batch, 224, 224, 3), dtype=torch.uint8, device=device)
    y = torch.randint(0, 1000, (a.batch,), device=device)
    synthetic = timed(step, iter(lambda: (x, y), None), a.steps, a.warmup, device)
    rows.append(("synthetic batches on device", synthetic))
    print(f"synthetic: {synthetic:,.0f} img/s", flush=True)

    # 2. the full pipeline: JPEG shards -> Ray Data decode + RandomResizedCrop -> device
    work = Path(a.workdir or tempfile.mkdtemp(prefix="gpubench-"))
    generate(work / "jpeg", a.images, 10)  # train/<wnid>/*.JPEG; reruns reuse the files
    for path in sorted((work / "jpeg" / "train").glob("*/*.JPEG"))[:20]:  # a token val split
        (work / "jpeg" / "val" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, work / "jpeg" / "val" / path.parent.name / path.name)
    ray.init(include_dashboard=False, log_to_driver=False)
    prepare_imagenet(PrepareConfig(source=str(work / "jpeg"), output=str(work / "shards"), shard_size_mb=64))
    ds = build_split_dataset(
        str(work / "shards"), "train", train=True, transform=TransformConfig(image_size=224)
    )
    needed = (a.warmup + a.steps) * a.batch
    epochs = max(1, -(-needed // a.images))

    def batches():
        for _ in range(epochs):
            for b in ds.iter_torch_batches(
                batch_size=a.batch,
                prefetch_batches=4,
                drop_last=True,
                device="cpu",
                pin_memory=device.type == "cuda",
            ):
                yield b["image"], b["label"] % 1000

    pipeline = timed(step, batches(), a.steps, a.warmup, device)
    rows.append((f"Ray Data pipeline from shards ({os.cpu_count()} CPUs)", pipeline))
    ray.shutdown()

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"\n{a.arch}, batch {a.batch}, {'AMP ' + a.amp if amp else 'fp32'}, "
        f"{'channels_last' if channels_last else 'NCHW'}, {name}"
    )
    print("| input | images/s | vs synthetic |")
    print("|---|---:|---:|")
    for label, ips in rows:
        print(f"| {label} | {ips:,.0f} | {ips / synthetic:.2f} |")


if __name__ == "__main__":
    main()
