"""The degradation problem at small scale: plain-20/56 against ResNet-20/56 on scikit-learn's digits.

    python benchmarks/degradation.py --epochs 12 --out degradation.json

scikit-learn's bundled digits (1,797 8x8 images, 10 classes) upsampled to 32x32 RGB (bilinear, as
``resnet_platform.data.digits`` writes them), the same seeded 80/20 split as the demo. All four nets
(``cifar_plain20``, ``cifar_plain56``, ``cifar_resnet20``, ``cifar_resnet56``) get the same budget:
the same epochs, batch 128, the paper's CIFAR optimizer (SGD lr 0.1, momentum 0.9, weight decay 1e-4,
lr divided by 10 at 1/2 and 3/4 of training), the same seed, no augmentation (training error is what
is compared). Plain PyTorch on this process's CPU threads with the platform's own models and
optimizer: the question is about the networks, not the distribution.

Reports, per net, the training error of the last epoch (running, in train mode, as the paper's
Figure 6 plots it), the error on the whole training set in eval mode after training, and the test
error; then whether plain-56 ends above plain-20 (degradation) while ResNet-56 does not end above
ResNet-20. Not a test: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from resnet_platform.models import build_model  # noqa: E402
from resnet_platform.train.config import TrainConfig  # noqa: E402
from resnet_platform.train.optim import lr_factor  # noqa: E402

ARCHS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56")


def digits_32(seed: int = 0, val_fraction: float = 0.2):
    """(train_x, train_y, test_x, test_y): float NCHW normalized, int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(im, mode="L").resize((32, 32), Image.BILINEAR)) for im in images]
    )
    x = np.repeat(big[:, None], 3, axis=1).astype(np.float32) / 255.0
    x = (x - x.mean()) / x.std()
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(len(y) * val_fraction)
    test, train = order[:n_val], order[n_val:]
    t = torch.from_numpy
    return t(x[train]), t(y[train]), t(x[test]), t(y[test])


@torch.no_grad()
def error_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    wrong = sum(
        int((model(x[i : i + batch]).argmax(1) != y[i : i + batch]).sum()) for i in range(0, len(y), batch)
    )
    return wrong / len(y)


def train_one(arch: str, data, *, epochs: int, batch_size: int, lr: float, seed: int) -> dict:
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10)
    config = TrainConfig(
        data="digits",
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        num_workers=1,
        lr_schedule="step",
        lr_milestones=(math.ceil(epochs / 2), math.ceil(epochs * 3 / 4)),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    curve = []
    start = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        for g in optimizer.param_groups:
            g["lr"] = lr * lr_factor(epoch, config)
        model.train()
        order = torch.randperm(len(train_y), generator=gen)
        wrong = 0
        loss_sum = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            logits = model(train_x[idx])
            loss = criterion(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            wrong += int((logits.argmax(1) != train_y[idx]).sum())
            loss_sum += float(loss) * len(idx)
            step += 1
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": loss_sum / len(train_y),
            "train_top1_error": wrong / len(train_y),
            "val_top1_error": error_of(model, test_x, test_y),
        }
        curve.append(row)
        print(
            f"{arch:>15} epoch {epoch + 1:>3}/{epochs}  loss {row['train_loss']:.4f}  "
            f"train err {row['train_top1_error']:.4f}  test err {row['val_top1_error']:.4f}  "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return {
        "arch": arch,
        "final_train_error": curve[-1]["train_top1_error"],
        "final_train_error_eval": error_of(model, train_x, train_y),
        "final_test_error": curve[-1]["val_top1_error"],
        "seconds": time.perf_counter() - start,
        "curve": curve,
    }


def verdict(results: dict[str, dict], key: str = "final_train_error") -> dict:
    p20, p56 = results["cifar_plain20"][key], results["cifar_plain56"][key]
    r20, r56 = results["cifar_resnet20"][key], results["cifar_resnet56"][key]
    return {
        "metric": key,
        "plain56_above_plain20": p56 > p20,
        "resnet56_not_above_resnet20": r56 <= r20,
        "degradation_reproduced": p56 > p20 and r56 <= r20,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = digits_32(args.seed)
    print(f"digits 32x32: {len(data[1])} train / {len(data[3])} test images, {args.epochs} epochs each")
    results = {}
    for arch in args.archs.split(","):
        results[arch] = train_one(
            arch, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
        )
    print(
        f"\n{'net':>15}  {'train err (last epoch)':>22}  {'train err (eval)':>16}  {'test err':>8}  {'time':>6}"
    )
    for r in results.values():
        print(
            f"{r['arch']:>15}  {r['final_train_error']:>22.4f}  {r['final_train_error_eval']:>16.4f}  "
            f"{r['final_test_error']:>8.4f}  {r['seconds']:>5.0f}s"
        )
    summary = {}
    if set(ARCHS) <= set(results):
        summary = {"running": verdict(results), "eval": verdict(results, "final_train_error_eval")}
        for v in summary.values():
            print(
                f"[{v['metric']}] plain-56 above plain-20: {v['plain56_above_plain20']}; "
                f"resnet-56 not above resnet-20: {v['resnet56_not_above_resnet20']}; "
                f"degradation reproduced: {v['degradation_reproduced']}"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "results": results, "verdict": summary}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
