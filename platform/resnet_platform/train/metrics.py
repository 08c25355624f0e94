"""Top-k counts summed exactly across workers (counts, not averages, so uneven shards are exact).

Counts stay on the device while an epoch runs: reading one back (``int(...)``, ``float(...)``)
makes the host wait for the GPU, which would serialize data loading and training every step.
They are read once per epoch, after the all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many of the batch have the label among the top k predictions, for each k: a float64
    tensor on the logits' device (no host sync)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]).double()


def all_reduce_sum(values: list[float | torch.Tensor], device: torch.device) -> list[float]:
    """Sum a few numbers (host floats or device scalars) over all workers; the one host sync."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
