"""Batch prediction's model actor on the CPU: the torch runtime against ONNX Runtime (``--runtime onnx``).

    python benchmarks/onnx_vs_torch.py --archs cifar_resnet20,resnet18,resnet50 --threads 1,2

For each network (random weights; a model directory saved and exported with the platform's own
``export_model``, parity checked), the two actor classes of ``serving/batch.py`` and
``serving/onnx_runtime.py`` classify the same uint8 crop batches (``--batch-size``), in this process,
with the same thread count (a Ray actor gets ``--cpus-per-actor`` threads). Steady state: ``--warmup``
batches untimed, then ``--batches`` timed. Passes run torch, onnx, torch, onnx: the two torch passes
show how much the machine moved during the measurement. The 1-minute load average is printed beside
each figure. Decoding and Ray Data are the same for both runtimes and are not measured here.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        (folder / f"img{i}.jpg").write_bytes(buf.getvalue())


def _model(arch: str, workdir: Path) -> tuple[Path, Path, int]:
    """(model directory, export directory, input size) of a randomly initialised ``arch``."""
    import torch

    from resnet_platform.models import build_model
    from resnet_platform.serving.export import ExportConfig, export_model
    from resnet_platform.tracking import ModelSpec, save_resnet_model

    torch.manual_seed(0)
    spec = ModelSpec.for_arch(arch)
    model_dir = workdir / arch / "model"
    save_resnet_model(model_dir, build_model(arch, spec.num_classes).eval().state_dict(), spec)
    _images(workdir / "images", 8, 256)
    result = export_model(
        ExportConfig(
            model=str(model_dir), images=str(workdir / "images"), output=str(workdir / arch / "export")
        )
    )
    print(result.format().splitlines()[1], flush=True)
    return model_dir, workdir / arch / "export", spec.image_size


def _rate(predictor, batch: dict, warmup: int, batches: int) -> float:
    for _ in range(warmup):
        predictor(batch)
    start = time.perf_counter()
    for _ in range(batches):
        predictor(batch)
    return batches * len(batch["key"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="cifar_resnet20,resnet18,resnet50")
    parser.add_argument("--threads", default="1,2", help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()

    import torch

    from resnet_platform.serving.batch import OnnxTopKPredictor, TopKPredictor

    print(f"torch {torch.__version__}, cpus {os.cpu_count()}, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            model_dir, export_dir, size = _model(arch, Path(tmp))
            rng = np.random.default_rng(1)
            n = args.batch_size
            batch = {
                "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                "key": np.asarray([f"k{i}" for i in range(n)], dtype=object),
                "label": np.zeros(n, np.int64),
                "error": np.full(n, "", dtype=object),
            }
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                runtimes = {
                    "torch": TopKPredictor(str(model_dir), "", 5, use_gpu=False),
                    "onnx": OnnxTopKPredictor(str(export_dir), "", 5, threads=threads),
                }
                rates: dict[str, list[float]] = {"torch": [], "onnx": []}
                for name in ("torch", "onnx", "torch", "onnx"):
                    rate = _rate(runtimes[name], batch, args.warmup, args.batches)
                    rates[name].append(rate)
                    print(
                        f"{arch:>15} {size:>3}px threads {threads} {name:>5}: {rate:8.1f} img/s  "
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                t, o = np.mean(rates["torch"]), np.mean(rates["onnx"])
                drift = abs(rates["torch"][1] - rates["torch"][0]) / rates["torch"][0]
                print(
                    f"{arch:>15} threads {threads}: onnx / torch = {o / t:.2f}  "
                    f"(torch passes differ by {100 * drift:.0f}%)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
