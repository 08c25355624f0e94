"""Rank 0's progress inside an epoch (``train/progress.py``): lines to a file on a time or step
period, a Ray tqdm bar on a terminal, nothing in a short run at the defaults."""

from __future__ import annotations

import logging

import pytest
import torch

from resnet_platform import console
from resnet_platform.train import TrainConfig
from resnet_platform.train.progress import EpochProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _config(**fields) -> TrainConfig:
    # 2 workers x 8 rows per micro-batch, 160 images: 10 steps per epoch.
    return TrainConfig(
        data="x", arch="resnet18", batch_size=16, num_workers=2, epochs=3, train_images=160, **fields
    )


def test_file_lines_come_every_period_with_rate_and_eta(caplog):
    clock = Clock()
    progress = EpochProgress(_config(progress_every_s=30.0), epoch=1, world=2, terminal=False, clock=clock)
    lines = []
    with caplog.at_level(logging.INFO, logger="resnet_platform.train.progress"):
        for step in range(10):
            clock.now += 10.0  # 16 images (8 per worker) every 10 s: 1.6 img/s
            lines.append(progress.update(step, 8, torch.tensor(2.5)))
    printed = [line for line in lines if line]
    assert len(printed) == 3  # at 30, 60 and 90 s
    assert printed[0] == "epoch 2/3  step 3/10 (30%)  2 img/s  ETA 0:01:10  loss 2.5000"
    assert [r.getMessage() for r in caplog.records] == printed  # through the platform logger


def test_a_step_period_adds_lines_and_the_default_keeps_short_runs_quiet():
    clock = Clock()
    every_4 = EpochProgress(_config(progress_every_steps=4), epoch=0, world=2, terminal=False, clock=clock)
    default = EpochProgress(_config(), epoch=0, world=2, terminal=False, clock=clock)
    assert default.every_s == 60.0
    steps, quiet = [], []
    for step in range(10):
        clock.now += 1.0
        steps.append(every_4.update(step, 8) is not None)
        quiet.append(default.update(step, 8))
    assert [i for i, printed in enumerate(steps) if printed] == [3, 7]
    assert quiet == [None] * 10


def test_a_resumed_epoch_counts_from_its_first_step():
    clock = Clock()
    progress = EpochProgress(
        _config(progress_every_steps=1), epoch=0, world=2, start_step=5, terminal=False, clock=clock
    )
    clock.now = 10.0  # one step in 10 s, four left
    line = progress.update(5, 8)
    assert "step 6/10 (60%)" in line and "ETA 0:00:40" in line


def test_on_a_terminal_the_bar_counts_every_workers_images(monkeypatch):
    monkeypatch.setenv(console.TERMINAL_ENV, "1")
    progress = EpochProgress(_config(), epoch=0, world=2)
    assert progress.bar is not None and progress.bar.total == 160
    assert progress.update(0, 8) is None  # the bar, no line
    assert progress.bar.n == 16
    progress.close()


@pytest.mark.parametrize("terminal", ["0", "1"])
def test_the_driver_tells_its_workers_whether_it_has_a_terminal(monkeypatch, terminal):
    monkeypatch.setenv(console.TERMINAL_ENV, terminal)
    assert console.on_terminal() is (terminal == "1")
    assert console.inherited_env(False)[console.TERMINAL_ENV] == terminal
