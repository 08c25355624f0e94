"""Spot preemption: a checkpoint at the next step boundary, and a restart that costs no failure.

What Ray 2.60 does (``ray/train/v2/_internal/execution/preemption.py``, ``controller.py``): a
watcher polls Ray Core's drain state (every ``RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S``, 5 s) and, when
a node hosting one of the run's workers is being drained for preemption (a cloud's spot notice
through the autoscaler, or ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``), tells every
worker; ``ray.train.get_preemption_info()`` then returns it (a collective: every rank calls it at
the same steps). The controller waits until the drain's deadline (120 s when it has none), then
restarts the group from the latest checkpoint and charges ``FailureConfig.max_preemption_failures``
(``--max-preemptions``, unlimited by default), never ``max_failures``.

What the platform adds (:class:`PreemptionWatch`, used by the loop): every
``--preemption-check-steps`` steps the workers ask; on a new preemption, rank 0 writes a checkpoint
right there, mid-epoch if need be, waits until it is stored, and training goes on until Ray restarts
the group. The checkpoint (``checkpoint_preempt_eEEEE_sSSSSSSS``) holds, besides the usual state,
the position in the epoch (:class:`EpochPosition`): steps and images done, and the epoch's running
sums (loss, top-k counts, time) all-reduced over the workers, so the resumed epoch reports metrics
over all of its images.

Data position, as far as Ray Data allows: a streaming split cannot seek, and a new worker group gets
a new split (possibly of another size) with a new shuffle. So the resumed epoch trains on the
*number* of images the epoch had left, drawn from a fresh pass: some images of that epoch are seen
twice and some not at all (with shuffled data the epoch is still an unbiased sample). Deterministic
runs (``--deterministic``: stored order) with the same worker count skip exactly the batches already
trained on (read and discarded) and resume bit-exact.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREEMPT_CHECKPOINT_PREFIX = "checkpoint_preempt"


def preempt_checkpoint_name(epoch_index: int, step: int) -> str:
    """``epoch_index``: 0-based index of the epoch in progress; ``step``: the global step."""
    return f"{PREEMPT_CHECKPOINT_PREFIX}_e{epoch_index + 1:04d}_s{step:08d}"


def failure_config(config):
    """Worker failures and preemptions, each with its own budget."""
    from ray.train import FailureConfig

    return FailureConfig(max_failures=config.max_failures, max_preemption_failures=config.max_preemptions)


@dataclass
class EpochPosition:
    """Where in an epoch a mid-epoch checkpoint was taken, and the epoch's sums up to there (global)."""

    epoch: int  # 0-based index of the epoch in progress
    steps: int  # steps each worker had done in it
    images: int  # images trained on in it, all workers
    world_size: int
    loss_sum: float
    correct1: float
    correct5: float
    seconds: float  # slowest worker's training time in the epoch so far
    data_wait_s: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EpochPosition | None:
        if not d:
            return None
        return cls(**{k: type_(d[k]) for k, type_ in _FIELD_TYPES.items()})


_FIELD_TYPES = {
    "epoch": int,
    "steps": int,
    "images": int,
    "world_size": int,
    "loss_sum": float,
    "correct1": float,
    "correct5": float,
    "seconds": float,
    "data_wait_s": float,
}


@dataclass(frozen=True)
class ResumePlan:
    """How the epoch in progress continues after a mid-epoch checkpoint."""

    start_step: int = 0  # step-in-epoch index of the first batch trained (fault injection counts from it)
    skip_batches: int = 0  # batches read and discarded first (deterministic, same worker count)
    max_steps: int | None = None  # stop after this many trained steps (None: the whole pass)
    start_sample: int = 0  # epoch plan: the plan position the epoch continues from


def resume_plan(position: EpochPosition | None, config, world_size: int) -> ResumePlan:
    if position is None:
        return ResumePlan()
    if config.uses_epoch_plan:  # exact on any worker count: the epoch continues its own order
        return ResumePlan(start_step=position.steps, start_sample=position.images)
    if config.deterministic and position.world_size == world_size:
        return ResumePlan(start_step=position.steps, skip_batches=position.steps)
    if not config.train_images:
        return ResumePlan(start_step=position.steps)  # unknown epoch size: a whole fresh pass
    left = max(0, config.train_images - position.images)
    return ResumePlan(
        start_step=position.steps,
        max_steps=math.ceil(left / (world_size * config.micro_batch_size)),  # micro-batches
    )


def _injected(config, rank: int, epoch_index: int, step_in_epoch: int) -> bool:
    """Fault injection (tests): rank 0 decides, once (marker file), and broadcasts."""
    import ray.train.collective

    fault = config.fault
    fire = False
    if rank == 0 and fault.epoch == epoch_index and fault.step == step_in_epoch:
        fire = not (fault.marker and Path(fault.marker).exists())
        if fire and fault.marker:
            Path(fault.marker).write_text(
                f"preemption injected at epoch {epoch_index} step {step_in_epoch}\n"
            )
    return bool(ray.train.collective.broadcast_from_rank_zero(fire))


class PreemptionWatch:
    """Asks Ray every ``every_steps`` steps (the same steps on every rank) whether a preemption is
    pending; :meth:`check` returns it once per new preemption, else None."""

    def __init__(self, config, rank: int) -> None:
        self.every = config.preemption_check_steps
        self.config = config
        self.rank = rank
        self.handled = None
        self.injected = False
        self.inject = config.fault is not None and config.fault.kind == "preempt"

    def due(self, step_in_epoch: int) -> bool:
        return self.every > 0 and (step_in_epoch + 1) % self.every == 0

    def check(self, epoch_index: int, step_in_epoch: int):
        import ray.train

        info = ray.train.get_preemption_info()  # a collective: every rank, same steps
        if info is None and self.inject and _injected(self.config, self.rank, epoch_index, step_in_epoch):
            from ray.train.v2.api.preemption import PreemptionInfo

            info = PreemptionInfo(
                deadline_ms=None, preempted_node_to_ranks={"injected": [self.config.fault.rank]}
            )
            self.injected = True
        if info is None or info == self.handled:
            return None
        self.handled = info
        return info

    def after_checkpoint(self) -> None:
        """Fault injection: the preempted rank goes away once the checkpoint is stored (rank 0 has
        waited for it; the barrier holds everyone until then)."""
        if not self.injected:
            return
        import ray.train.collective

        self.injected = False
        ray.train.collective.barrier()
        if self.rank == self.config.fault.rank:
            log.warning("fault injection: rank %d leaves after the preemption checkpoint", self.rank)
            # A real node leaves at the drain's deadline; leave only after Ray Train's controller has
            # polled the workers' reports (every 2 s in Ray 2.60), or the checkpoint is stored but
            # never registered and a later resume starts from the one before.
            time.sleep(5)
            os._exit(1)


def describe(info) -> str:
    deadline = f", deadline in {info.deadline_ms / 1000 - _now():.0f} s" if info.deadline_ms else ""
    return (
        f"nodes {', '.join(n[:12] for n in info.preempted_node_ids)} (ranks {info.preempted_ranks}{deadline})"
    )


def _now() -> float:
    return time.time()
