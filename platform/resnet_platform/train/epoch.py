"""One epoch's numbers: the training pass's running sums, exact evaluation, the epoch's metrics row.

The per-worker run (``train/worker_run.py``) drives the passes; this module holds what they count.
Sums stay on the device; the host reads them at logging steps and once at the end (after the
all-reduce), so a step never waits on a host sync it does not need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .device import unwrap
from .metrics import all_reduce_max, all_reduce_sum, topk_correct
from .preemption import EpochPosition, ResumePlan


@dataclass
class EpochStats:
    loss: float
    top1_error: float
    top5_error: float
    images: int
    seconds: float
    data_wait_s: float


class EpochSums:
    """A training pass's running sums on ``device``: images, loss, top-1/top-5 hits, data wait.

    After a mid-epoch checkpoint, ``plan`` says where the epoch continues and ``carried`` holds its
    sums so far (added to this pass's). ``warm_images``/``warm_hits`` count the images and top-1 hits
    since the last optimizer step, during ResNet-110's low-rate phase only."""

    def __init__(
        self, device: torch.device, epoch: int, world: int, plan: ResumePlan, carried: EpochPosition | None
    ) -> None:
        self.device, self.epoch, self.world, self.plan, self.carried = device, epoch, world, plan, carried
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros(2, dtype=torch.float64, device=device)
        self.images = 0
        self.trained = 0  # micro-batches trained in this pass
        self.wait = 0.0
        self.warm_images = 0
        self.warm_hits = torch.zeros((), dtype=torch.float64, device=device)
        self.start = self.tick = time.perf_counter()

    def waited(self) -> None:
        """A batch arrived: the time since :meth:`resume_clock` was spent waiting for data."""
        self.wait += time.perf_counter() - self.tick

    def resume_clock(self) -> None:
        self.tick = time.perf_counter()

    def add(self, loss: torch.Tensor, hits: torch.Tensor, n: int, warming_up: bool) -> None:
        self.images += n
        self.loss_sum += loss.detach().double() * n
        self.correct += hits
        self.trained += 1
        if warming_up:
            self.warm_images += n
            self.warm_hits += hits[0]

    def warm_error(self) -> float:
        """The global batch error since the last optimizer step (a collective), then reset."""
        seen, right = all_reduce_sum([self.warm_images, self.warm_hits], self.device)
        self.warm_images = 0
        self.warm_hits.zero_()
        return 1.0 - right / max(seen, 1.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def position(self) -> EpochPosition:
        """Where the epoch is now, summed over the workers (a collective: every rank calls it)."""
        total, loss_total, c1, c5 = all_reduce_sum(
            [self.images, self.loss_sum, self.correct[0], self.correct[1]], self.device
        )
        seconds = all_reduce_max(self.elapsed(), self.device)
        waited = all_reduce_max(self.wait, self.device)
        base = self.carried or EpochPosition(self.epoch, 0, 0, self.world, 0.0, 0.0, 0.0, 0.0, 0.0)
        return EpochPosition(
            epoch=self.epoch,
            steps=self.plan.start_step + self.trained,
            images=base.images + int(total),
            world_size=self.world,
            loss_sum=base.loss_sum + loss_total,
            correct1=base.correct1 + c1,
            correct5=base.correct5 + c5,
            seconds=base.seconds + seconds,
            data_wait_s=base.data_wait_s + waited,
        )

    def stats(self) -> EpochStats:
        """The whole epoch's numbers, the carried part included (a collective)."""
        seconds, wait = self.elapsed(), self.wait
        total, loss_total, c1, c5 = all_reduce_sum(
            [self.images, self.loss_sum, self.correct[0], self.correct[1]], self.device
        )
        carried = self.carried
        if carried is not None:  # the part of the epoch before the mid-epoch checkpoint
            total, loss_total = total + carried.images, loss_total + carried.loss_sum
            c1, c5 = c1 + carried.correct1, c5 + carried.correct5
            seconds, wait = seconds + carried.seconds, wait + carried.data_wait_s
        total = max(total, 1)
        return EpochStats(loss_total / total, 1 - c1 / total, 1 - c5 / total, int(total), seconds, wait)


@torch.no_grad()
def evaluate(model, batches, criterion, amp_dtype, normalize, device) -> EpochStats:
    """Every validation image counted once: per-worker sums, all-reduced (no padding, no drops).

    Ten-crop batches (N, 10, H, W, 3) average the softmax over the crops, as the paper does.
    """
    return evaluate_models({"": model}, batches, criterion, amp_dtype, normalize, device)[""]


@torch.no_grad()
def evaluate_models(models: dict, batches, criterion, amp_dtype, normalize, device) -> dict[str, EpochStats]:
    """:func:`evaluate` for several networks (the raw weights and their EMA) in one pass over the
    validation rows: ``{name: EpochStats}``."""
    nets = {name: unwrap(m).eval() for name, m in models.items()}
    loss_sum = {name: torch.zeros((), dtype=torch.float64, device=device) for name in nets}
    correct = {name: torch.zeros(2, dtype=torch.float64, device=device) for name in nets}
    images, wait = 0, 0.0
    start = tick = time.perf_counter()
    for batch in batches:
        wait += time.perf_counter() - tick
        images_u8, y = batch["image"], batch["label"]
        crops = images_u8.shape[1] if images_u8.ndim == 5 else 1
        x = normalize(images_u8.reshape(-1, *images_u8.shape[-3:]))
        for name, net in nets.items():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(x).float()
            if crops > 1:
                probs = logits.softmax(dim=1).view(-1, crops, logits.shape[1]).mean(dim=1)
                logits = probs.log()
            loss_sum[name] += criterion(logits, y).double() * y.shape[0]
            correct[name] += topk_correct(logits, y)
        images += y.shape[0]
        tick = time.perf_counter()
    seconds = time.perf_counter() - start
    out = {}
    for name in nets:
        total, loss_total, c1, c5 = all_reduce_sum(
            [images, loss_sum[name], correct[name][0], correct[name][1]], device
        )
        total_safe = max(total, 1)
        out[name] = EpochStats(
            loss_total / total_safe, 1 - c1 / total_safe, 1 - c5 / total_safe, int(total), seconds, wait
        )
    return out


def epoch_metrics(
    *, epoch: int, step: int, lr: float, train: EpochStats, evals: dict[str, EpochStats],
    epoch_seconds: float, data_wait_s: float, world: int,
) -> dict[str, float]:  # fmt: skip
    """The row an epoch reports (Ray Train, the checkpoint's history, MLflow): ``evals[""]`` is the
    raw weights' validation, any other key a prefix for its own (the EMA's ``ema_``)."""
    val = evals[""]
    metrics = {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "train_loss": train.loss,
        "train_top1_error": train.top1_error,
        "train_top5_error": train.top5_error,
        "train_images": train.images,
        "val_loss": val.loss,
        "val_top1_error": val.top1_error,
        "val_top5_error": val.top5_error,
        "val_images": val.images,
        "epoch_time_s": epoch_seconds,
        "images_per_s": train.images / max(epoch_seconds, 1e-9),
        "images_per_s_per_worker": train.images / max(epoch_seconds, 1e-9) / world,
        "data_wait_s": data_wait_s,
        "workers": world,
    }
    for prefix, stats in evals.items():
        if prefix:  # the EMA's validation, beside the raw weights'
            metrics.update(
                {
                    f"{prefix}val_loss": stats.loss,
                    f"{prefix}val_top1_error": stats.top1_error,
                    f"{prefix}val_top5_error": stats.top5_error,
                }
            )
    return metrics


def format_epoch(m: dict, epochs: int) -> str:
    ema = f"  EMA val top-1 err {m['ema_val_top1_error']:.4f}" if "ema_val_top1_error" in m else ""
    size = f"  at {int(m['train_image_size'])}px" if "train_image_size" in m else ""
    return (
        f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train top-1 err {m['train_top1_error']:.4f}  "
        f"val top-1 err {m['val_top1_error']:.4f}  top-5 err {m['val_top5_error']:.4f}{ema}  "
        f"({m['val_images']} val images)  {m['images_per_s']:.0f} img/s{size}  data wait {m['data_wait_s']:.1f}s  "
        f"lr {m['lr']:.4g}"
    )
