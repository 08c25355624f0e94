"""A non-finite loss stops the run with one line naming the epoch and step, without a host sync per step.

A NaN or infinite loss (a learning rate too high for bf16 without warm-up, a bad batch) poisons the
weights at the next optimizer step; every later step is wasted GPU time, and the run used to go on
to its last epoch reporting ``nan``. Checking ``loss.item()`` each step would stall the GPU queue
once per step. Instead :meth:`LossGuard.observe` keeps, on the loss's device, the first step whose
loss was not finite (a few tiny kernels, queued like the step's own), and :meth:`LossGuard.check`
reads that one number where the loop already waits for the device: its per-epoch reductions and
its logging-step reads. A run fails at most ``log_every_steps`` steps after the first bad one.
"""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message is one line naming the epoch and step."""


class LossGuard:
    """One per training worker. ``observe`` each step's loss; ``check`` where the loop syncs."""

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # on the loss's device; -1 while all is finite
        self._epoch_of_first: torch.Tensor | None = None

    def observe(self, loss: torch.Tensor, *, epoch: int, step: int) -> None:
        """Remember ``step`` (and ``epoch``) if ``loss`` is not finite and no earlier step was bad.
        Queues device work only: no host synchronization."""
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._epoch_of_first = torch.full((), -1, dtype=torch.int64, device=loss.device)
        newly_bad = (self._first_bad < 0) & ~torch.isfinite(loss.detach()).all()
        self._first_bad = torch.where(newly_bad, step, self._first_bad)
        self._epoch_of_first = torch.where(newly_bad, epoch, self._epoch_of_first)

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` if an observed loss was not finite. Reads two numbers
        from the device: call it only where the loop already waits for it."""
        if self._first_bad is None:
            return
        step, epoch = torch.stack([self._first_bad, self._epoch_of_first]).tolist()
        if step >= 0:
            raise NonFiniteLossError(
                f"the training loss became non-finite (NaN or inf) at epoch {epoch} step {step}: "
                "lower --lr, add --warmup-epochs, or train with --amp off to find the cause"
            )
