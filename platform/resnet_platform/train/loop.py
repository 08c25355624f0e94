"""The entry point Ray Train calls in every worker: build the run, restore it, run it.

The run itself is :class:`~resnet_platform.train.worker_run.WorkerRun` (``train/worker_run.py``),
whose module docstring says which module holds each part of the loop.
"""

from __future__ import annotations

from resnet_platform.console import quiet_train_worker

from .config import TrainConfig
from .loss_guard import NonFiniteLossError
from .worker_run import WorkerRun

NON_FINITE_LOSS = "non_finite_loss"  # the key of the return value the driver raises from


def train_loop_per_worker(config_dict: dict) -> dict | None:
    quiet_train_worker()
    run = WorkerRun.build(TrainConfig.from_dict(config_dict))
    run.restore()
    try:
        run.run()
    except NonFiniteLossError as err:
        # Every rank raised at the same check (train/loss_guard.py): all return, so the run ends
        # without a restart that would only replay the divergence; rank 0's value reaches the driver.
        if run.logger is not None:
            run.logger.close()  # the steps up to the divergence reach MLflow
        return {NON_FINITE_LOSS: str(err)}
    return None
