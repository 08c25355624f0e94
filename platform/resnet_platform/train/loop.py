"""The entry point Ray Train calls in every worker: build the run, restore it, run it.

The run itself is :class:`~resnet_platform.train.worker_run.WorkerRun` (``train/worker_run.py``),
whose module docstring says which module holds each part of the loop.
"""

from __future__ import annotations

from resnet_platform.console import quiet_train_worker

from .config import TrainConfig
from .worker_run import WorkerRun


def train_loop_per_worker(config_dict: dict) -> None:
    quiet_train_worker()
    run = WorkerRun.build(TrainConfig.from_dict(config_dict))
    run.restore()
    run.run()
