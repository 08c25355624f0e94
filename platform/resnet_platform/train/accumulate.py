"""Gradient accumulation: a fixed global batch on fewer (or smaller) GPUs.

``--grad-accum-steps K`` splits each worker's share of ``--batch-size`` into K micro-batches: each
is forwarded and backpropagated with its loss divided by K, and the optimizer steps once per K, so
the update is the one of the whole batch (the mean of K equal micro-batch means is the batch mean).
Under DDP the first K - 1 backward passes skip the all-reduce (``no_sync``); the K-th reduces the
summed gradients once. BatchNorm sees micro-batches: its statistics are per micro-batch, as they are
per GPU in any data-parallel run.

An epoch whose batches do not divide by K ends with a shorter group; its gradients are rescaled to
the mean over the micro-batches it has before the step. Every worker holds as many batches
(``streaming_split(equal=True)``), so all of them step, and all-reduce, at the same micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def with_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """``(item, is_last)`` for each item: one item of lookahead."""
    it = iter(items)
    try:
        current = next(it)
    except StopIteration:
        return
    for following in it:
        yield current, False
        current = following
    yield current, True


class Accumulator:
    """Runs forward + backward of one micro-batch and steps the optimizer at group ends.

    ``micro_step(is_last)`` is a context manager for the forward and backward of one micro-batch;
    :meth:`backward` backpropagates its loss; ``stepped`` says afterwards whether the optimizer
    stepped (an optimizer step = one global batch).
    """

    def __init__(self, model: nn.Module, optimizer, scaler=None, steps: int = 1) -> None:
        if steps < 1:
            raise ValueError(f"grad accumulation steps must be at least 1, got {steps}")
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.steps = steps
        self.pending = 0  # micro-batches backpropagated since the last optimizer step
        self.stepped = False
        self._boundary = True

    @contextlib.contextmanager
    def micro_step(self, is_last: bool):
        self._boundary = self.pending + 1 == self.steps or is_last
        self.stepped = False
        skip_sync = not self._boundary and hasattr(self.model, "no_sync")
        with self.model.no_sync() if skip_sync else contextlib.nullcontext():
            yield
        if self._boundary:
            self._step()

    def backward(self, loss: torch.Tensor) -> None:
        scaled = loss / self.steps if self.steps > 1 else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        self.pending += 1

    def _step(self) -> None:
        if self.pending < self.steps:  # a short last group: its gradient is the mean of what it has
            factor = self.steps / self.pending
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, factor)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        self.stepped = True
