"""Decode-only throughput of ``--decode gpu``'s decoder, per nvImageCodec backend, with and without
region (crop-window) decode, against the decoder it replaced (torchvision's batched nvJPEG + a
crop/resize per image), on the same batches of ImageNet-like JPEGs.

    python benchmarks/decode_backends.py                        # GPU machine: hardware, cuda, cpu
    python benchmarks/decode_backends.py --device cpu --images 512 --batch 64

Each row decodes, RandomResizedCrop-crops (the platform's draws) and resizes to 224 uint8 NHWC the
same batches, synchronizing once per row, and prints img/s with the load average. The first line
says whether the hardware JPEG engines are usable here (a hardware-only decoder built and decoded a
baseline JPEG). Not a test: ``benchmarks/gpu_session.sh`` runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rows(rows, batches, device, repeats: int) -> list[tuple[str, float]]:
    out = []
    for label, fn in rows:
        fn(batches[0])  # warm-up: decoders built, kernels loaded
        _sync(device)
        start, n = time.perf_counter(), 0
        for _ in range(repeats):
            for batch in batches:
                n += fn(batch)
        _sync(device)
        ips = n / (time.perf_counter() - start)
        out.append((label, ips))
        print(f"{label}: {ips:,.0f} img/s (load average {os.getloadavg()[0]:.1f})", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", default=None, help="reuse generated JPEGs (data_throughput.generate)")
    a = p.parse_args()

    from data_throughput import generate

    from resnet_platform.data import transforms
    from resnet_platform.data.batched_resize import crop_resize_batch
    from resnet_platform.data.nvimgcodec_adapter import RegionDecoder, nvimgcodec
    from resnet_platform.data.pipeline import TransformConfig, draw_crop_for

    device = torch.device(a.device)
    work = Path(a.workdir or f"/tmp/decode-backends-{os.getpid()}")
    generate(work / "jpeg", a.images, 10)
    files = sorted((work / "jpeg" / "train").glob("*/*.JPEG"))[: a.images]
    datas = [f.read_bytes() for f in files]
    batches = [datas[i : i + a.batch] for i in range(0, len(datas), a.batch)]
    t = TransformConfig(image_size=224)
    n = nvimgcodec()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; nvImageCodec {n.__version__}; {len(datas)} JPEGs in batches of {a.batch}")

    def nvimgcodec_row(stage: str, region: bool):
        codec = RegionDecoder(device)
        codec._stages = [s for s in codec._stages if s[0] == stage]  # one backend, no fallback
        codec.first = stage

        def run(batch) -> int:
            rng = np.random.default_rng(0)
            parsed = codec.parse(batch)
            crops = [draw_crop_for(rng, q.width, q.height, t, True) for q in parsed]
            stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
            windows, _ = codec.decode(parsed, [c.box if region else None for c in crops], cuda_stream=stream)
            ok = [i for i, w in enumerate(windows) if w is not None]
            boxes = [(0, 0, windows[i].shape[1], windows[i].shape[0]) if region else crops[i].box for i in ok]
            crop_resize_batch([windows[i] for i in ok], boxes, [crops[i].flip for i in ok], 224)
            return len(ok)

        return run, codec

    def torchvision_row(batch) -> int:
        """The decoder ``--decode gpu`` used before nvImageCodec: torchvision's batched decode, then
        a crop + resize + flip per image."""
        rng = np.random.default_rng(0)
        images = transforms.decode_rgb_batch(batch, device)
        outs = []
        for image in images:
            crop = draw_crop_for(rng, image.shape[2], image.shape[1], t, True)
            outs.append(transforms.crop_resize(image, crop, 224))
        torch.stack(outs).permute(0, 2, 3, 1).contiguous()
        return len(outs)

    stages = ["hardware", "cuda", "cpu"] if device.type == "cuda" else ["cpu"]
    rows = [("torchvision decode + per-image crop/resize (before)", torchvision_row)]
    for stage in stages:
        for region in (True, False):
            run, codec = nvimgcodec_row(stage, region)
            try:
                decoded = run(batches[0][:8])
            except Exception as e:  # noqa: BLE001 - a backend this machine lacks is a row saying so
                decoded, codec.unavailable[stage] = 0, f"{type(e).__name__}: {e}"
            if decoded == 0:
                why = codec.unavailable.get(stage, "decoded no image")
                print(f"nvImageCodec {stage}: unavailable here ({why})", flush=True)
                break
            if stage == "hardware" and region:
                print("hardware JPEG engines: usable (a hardware-only decoder decoded these JPEGs)")
            window = "crop window (region decode)" if region else "whole image, cropped after"
            rows.append((f"nvImageCodec {stage}, {window} + batched resize", run))
    results = time_rows(rows, batches, device, a.repeats)
    base = results[0][1]
    print(f"\n{name}, {len(datas)} JPEGs 500x375, batch {a.batch}, RandomResizedCrop 224")
    print("| decoder | img/s | vs torchvision |\n|---|---:|---:|")
    for label, ips in results:
        print(f"| {label} | {ips:,.0f} | {ips / base:.2f}x |")


if __name__ == "__main__":
    main()
