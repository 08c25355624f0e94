"""Training throughput on one GPU: the synthetic ceiling, the CPU-decode and the GPU-decode pipelines.

    python benchmarks/gpu_throughput.py                      # on a GPU machine (bf16 AMP, channels_last)
    python benchmarks/gpu_throughput.py --device cpu --archs resnet18 --images 256 --steps 4 --batch 16

Every row runs the identical training step of the platform's loop (uint8 NHWC batch -> normalize
on the device -> channels_last -> forward/backward/SGD under autocast), for each of ``--archs``:

- "synthetic": one uint8 batch already on the device, the model's ceiling;
- "CPU decode": ImageNet-like JPEGs streamed from local Parquet shards through the platform's Ray
  Data pipeline (decode + RandomResizedCrop on this machine's CPUs), copied from pinned memory;
- "GPU decode": the same shards, Ray Data reading bytes and labels only, each batch decoded by
  the platform's ``DeviceDecoder`` (``--decode gpu``): nvImageCodec decodes each image's crop window
  (hardware engines first; "whole image" rows decode whole images and crop in the resize), one
  batched resize on the device;
- with ``--compile-modes off,on``: the synthetic and GPU-decode rows again with ``torch.compile``
  (its compile time, the first warm-up step, is printed).

Each pipeline is reported in img/s and as a fraction of the ceiling. Not a test: a short script
for the device machine (``benchmarks/gpu_session.sh`` runs it with the end-to-end jobs).
"""

from __future__ import annotations

import argparse
import itertools
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
    from resnet_platform.train.device import Normalizer

    normalize = Normalizer(device, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images_u8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = normalize(images_u8.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), labels.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def timed(step, batches, steps: int, warmup: int, device) -> tuple[float, float, float]:
    """(images/s over ``steps`` batches after ``warmup``, the last step's loss, seconds of the first
    warm-up step: torch.compile's compile time). The loss is read once, after the clock stops: a
    non-finite one is printed with the row."""
    it = iter(batches)
    first = time.perf_counter()
    step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - first
    for _ in range(warmup - 1):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, images, loss = time.perf_counter(), 0, None
    for _ in range(steps):
        x, y = next(it)
        loss = step(x, y)
        images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start), float(loss), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--images", type=int, default=6000, help="JPEGs generated for the pipeline rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default="bf16")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument(
        "--decode-ahead",
        default="0,2",
        help="GPU-decode rows: batches decoded ahead on the loader thread (0: in the training thread)",
    )
    p.add_argument("--compile-modes", default="off", help="off, on or off,on: torch.compile the model")
    a = p.parse_args()

    import ray
    from data_throughput import generate

    from resnet_platform.data.device_decode import DeviceDecoder
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

    work = Path(a.workdir or tempfile.mkdtemp(prefix="gpubench-"))
    generate(work / "jpeg", a.images, 10)  # train/<wnid>/*.JPEG; reruns reuse the files
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    prepare_imagenet(
        PrepareConfig(
            source=str(work / "jpeg"), output=str(work / "shards"), splits=("train",), shard_size_mb=64
        )
    )
    needed = (a.warmup + a.steps) * a.batch
    epochs = max(1, -(-needed // a.images))
    transform = TransformConfig(image_size=224)

    def cpu_batches():
        ds = build_split_dataset(str(work / "shards"), "train", train=True, transform=transform)
        for _ in range(epochs):
            for b in ds.iter_torch_batches(
                batch_size=a.batch,
                prefetch_batches=4,
                drop_last=True,
                device="cpu",
                pin_memory=device.type == "cuda",
            ):
                yield b["image"], b["label"] % 1000

    def gpu_batches(ahead: int, region: bool = True):
        ds = build_split_dataset(str(work / "shards"), "train", train=True, transform=transform, decode="gpu")
        decoder = DeviceDecoder(transform, train=True, device=device, region=region)
        for _ in range(epochs):
            raw = ds.iter_batches(
                batch_size=a.batch, batch_format="numpy", prefetch_batches=4, drop_last=True
            )
            for b in decoder.batches(raw, ahead=ahead):
                yield b["image"], b["label"] % 1000

    def pixel_stats(images: torch.Tensor) -> str:
        f = images.float()
        return f"mean {f.mean():.1f} std {f.std():.1f} min {int(images.min())} max {int(images.max())}"

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    tables = []
    aheads = [int(v) for v in a.decode_ahead.split(",") if v]
    for arch, compiled in itertools.product(
        [x for x in a.archs.split(",") if x], [m == "on" for m in a.compile_modes.split(",") if m]
    ):
        model = build_model(arch).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        step = make_step(torch.compile(model) if compiled else model, device, amp, channels_last)
        x = torch.randint(0, 256, (a.batch, 224, 224, 3), dtype=torch.uint8, device=device)
        y = torch.randint(0, 1000, (a.batch,), device=device)
        runs = [("synthetic batches on device (ceiling)", lambda x=x, y=y: itertools.repeat((x, y)))]
        if not compiled:
            runs.append((f"CPU decode: Ray Data on {os.cpu_count()} CPUs", cpu_batches))
            runs.append(
                (
                    f"GPU decode: whole images, {aheads[-1]} ahead",
                    lambda: gpu_batches(aheads[-1], region=False),
                )
            )
        for ahead in aheads if not compiled else aheads[-1:]:
            label = (
                "GPU decode: crop windows, in the training thread"
                if ahead == 0
                else f"GPU decode: crop windows, {ahead} batches ahead on the loader thread"
            )
            runs.append((label, lambda ahead=ahead: gpu_batches(ahead)))
        rows = []
        for label, batches in runs:
            ips, loss, first_s = timed(step, batches(), a.steps, a.warmup, device)
            rows.append((label, ips))
            compiled_note = f", compile + first step {first_s:.0f} s" if compiled and not rows[:-1] else ""
            print(
                f"{arch}{' compiled' if compiled else ''} {label}: {ips:,.0f} img/s (last loss {loss:.3f}{compiled_note})",
                flush=True,
            )
        tables.append((f"{arch}{', torch.compile' if compiled else ''}", rows))
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # After the timed rows: an abandoned Ray Data iterator can keep its tasks running until it is
    # collected (run 2 of 2026-11-27 did this check first, and its CPU-decode rows fell to 0.35-0.65x
    # of run 1's). Both paths crop the same shards the same way, so their pixel statistics agree
    # (garbage from a decode would not).
    first_cpu, first_gpu = cpu_batches(), gpu_batches(0)
    cpu_x, gpu_x = next(first_cpu)[0], next(first_gpu)[0]
    first_cpu.close()
    first_gpu.close()
    print(f"pixels, CPU decode: {pixel_stats(cpu_x)}; GPU decode: {pixel_stats(gpu_x)}", flush=True)

    ray.shutdown()

    for arch, rows in tables:
        print(
            f"\n{arch}, batch {a.batch}, {'AMP ' + a.amp if amp else 'fp32'}, "
            f"{'channels_last' if channels_last else 'NCHW'}, {name}"
        )
        print("| input | images/s | fraction of the ceiling |")
        print("|---|---:|---:|")
        for label, ips in rows:
            print(f"| {label} | {ips:,.0f} | {ips / rows[0][1]:.2f} |")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
