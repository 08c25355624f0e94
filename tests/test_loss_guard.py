"""The loss guard (``train/loss_guard.py``): the first non-finite step is named, and observing a step
never synchronizes with the device."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnet_platform.train.loss_guard import LossGuard, NonFiniteLossError


class HostReads(TorchDispatchMode):
    """Counts the ops that copy a device value to the host (``.item()``, ``bool(t)``, ``.tolist()``)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_the_first_non_finite_step_is_named_in_one_line():
    guard = LossGuard()
    losses = [2.3, 2.1, float("nan"), float("inf"), 1.9]
    with HostReads() as mode:
        for step, value in enumerate(losses, start=40):
            guard.observe(torch.tensor(value), epoch=3, step=step)
    assert mode.reads == 0  # no host sync per step
    with pytest.raises(NonFiniteLossError) as caught:
        guard.check()
    message = str(caught.value)
    assert "epoch 3 step 42" in message and "\n" not in message


def test_finite_losses_pass_and_a_later_epoch_is_reported():
    guard = LossGuard()
    guard.check()  # nothing observed yet
    for step in range(5):
        guard.observe(torch.tensor(1.0 / (step + 1)), epoch=1, step=step)
    guard.check()
    guard.observe(torch.tensor([1.0, float("-inf")]), epoch=2, step=7)  # any element counts
    guard.observe(torch.tensor(float("nan")), epoch=2, step=8)
    with pytest.raises(NonFiniteLossError, match="epoch 2 step 7"):
        guard.check()


def test_the_group_check_all_reduces_the_earliest_bad_step(tmp_path):
    """``check_all`` through a real (one-process gloo) group: the path every DDP rank takes."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        guard = LossGuard()
        guard.check_all(torch.device("cpu"))  # nothing observed: every rank sends "no bad step"
        guard.observe(torch.tensor(0.5), epoch=2, step=30)
        guard.check_all(torch.device("cpu"))
        guard.observe(torch.tensor(float("inf")), epoch=2, step=31)
        with pytest.raises(NonFiniteLossError, match="at epoch 2 step 31;"):
            guard.check_all(torch.device("cpu"))
    finally:
        dist.destroy_process_group()
