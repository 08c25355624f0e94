"""Fault injection: how the recovery tests make a real failure inside a training worker.

``TrainConfig.fault`` (:class:`~resnet_platform.train.config.FaultInjection`) names the rank, epoch
and step; the training pass calls :func:`maybe_inject_fault` before every micro-batch. Preemptions
are injected by ``train/preemption.py``'s ``PreemptionWatch`` instead (they checkpoint first).
A ``nan`` fault makes that micro-batch's loss NaN (what a diverging run does), through the real
backward and optimizer step: the loss guard (``train/loss_guard.py``) must stop the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def maybe_inject_fault(config, rank: int, epoch: int, step_in_epoch: int) -> bool:
    """Kill this process (``exit``) or raise (``raise``) when ``config.fault`` names this point;
    once only when the fault has a marker file (the restarted group then runs on). Returns True
    when the caller must make this micro-batch's loss NaN (``nan``)."""
    fault = config.fault
    if fault is None or fault.kind == "preempt":  # preemptions are injected by the PreemptionWatch
        return False
    if fault.rank != rank or fault.epoch != epoch or fault.step != step_in_epoch:
        return False
    if fault.marker:
        if Path(fault.marker).exists():
            return False
        Path(fault.marker).write_text(f"fault fired at epoch {epoch} step {step_in_epoch}\n")
    log.warning("fault injection: %s at epoch %d step %d on rank %d", fault.kind, epoch, step_in_epoch, rank)
    if fault.kind == "nan":
        return True
    if fault.kind == "exit":
        os._exit(1)
    raise RuntimeError(f"injected fault at epoch {epoch} step {step_in_epoch}")
