"""A non-finite loss stops the run with one line naming the epoch and step, without a host sync per step.

A NaN or infinite loss (a learning rate too high for bf16 without warm-up, a bad batch) poisons the
weights at the next optimizer step; every later step is wasted GPU time, and the run used to go on
to its last epoch reporting ``nan``. Checking ``loss.item()`` each step would stall the GPU queue
once per step. Instead :meth:`LossGuard.observe` keeps, on the loss's device, the first step whose
loss was not finite (a few tiny kernels, queued like the step's own), and :meth:`LossGuard.check`
reads that one number where the loop already waits for the device: its per-epoch reductions and
its logging-step reads. A run fails at most ``log_every_steps`` steps after the first bad one.

In a DDP group every rank checks at the same points and :meth:`LossGuard.check_all` all-reduces
what they saw (the earliest bad step of any rank): a rank raising alone would leave the others
waiting in their next collective. The points (``train/worker_run.py``): each ``log_every_steps``-th
optimizer step, and before every report, so a checkpoint never holds weights trained on a
non-finite loss (the epoch's report follows its all-reduced sums).

The run then *fails*, without a restart: every rank returns from the training function with the
error's line (``train/loop.py``) and the driver raises :class:`NonFiniteLossError` from it
(``train/runner.py``), one line naming the epoch and step. A restart from the last checkpoint would
replay the same steps at the same rate and, most of the time, diverge again: it would spend
``--max-failures`` and GPU hours for nothing. The checkpoints kept are finite; continuing one with
other settings is a new run (``--init-from`` a checkpoint folder, under another ``--name``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from resnet_platform.errors import UserError

_NONE = 2**62  # "no bad step" in the all-reduce of the earliest one


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message is one line naming the epoch and step."""

    @classmethod
    def at(cls, epoch: int, step: int) -> NonFiniteLossError:
        return cls(
            f"the training loss became non-finite (NaN or inf) at epoch {epoch} step {step}; the run "
            "stopped without checkpointing it: rerun under a new --name with a lower --lr, --warmup-epochs, "
            "or --amp off to find the cause"
        )


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
            raise NonFiniteLossError.at(epoch, step)

    def check_all(self, device: torch.device) -> None:
        """:meth:`check` over the whole group (a collective: every rank calls it at the same point):
        every rank raises, naming the earliest bad step any rank saw. One all-reduce of two numbers."""
        if not (dist.is_available() and dist.is_initialized()):
            self.check()
            return
        seen = torch.full((2,), _NONE, dtype=torch.int64, device=device)
        if self._first_bad is not None:
            bad = self._first_bad >= 0
            seen = torch.stack(
                [torch.where(bad, self._first_bad, _NONE), torch.where(bad, self._epoch_of_first, _NONE)]
            ).to(device)
        dist.all_reduce(seen, op=dist.ReduceOp.MIN)  # steps are global: the earliest step, its epoch
        step, epoch = seen.tolist()
        if step != _NONE:
            raise NonFiniteLossError.at(epoch, step)
