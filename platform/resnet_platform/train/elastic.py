"""Elastic worker groups: ``--num-workers MIN-MAX`` trains on whatever fits between the bounds.

Ray 2.60 does the resizing (``ScalingConfig(num_workers=(min, max))``, ``ElasticScalingPolicy`` in
``ray/train/v2/_internal/execution/scaling_policy/elastic.py``): it starts the group with as many
workers as the cluster can place, up to ``max``; every ``elastic_resize_monitor_interval_s`` it
checks whether more would fit now and, if so, restarts the group bigger from the latest checkpoint;
when a node leaves, the failed (or preempted) group restarts with what is left, never below ``min``.
A fixed ``--num-workers N`` stays N (Ray's fixed policy).

The batch and learning-rate policy (stated in the README): the per-worker batch is fixed for the
run, ``--batch-size / max`` (so ``--batch-size`` is the global batch at the full size); with ``w``
workers the global batch is ``w`` times that, and the learning rate follows it linearly (Goyal et
al.): every rate of the schedule is multiplied by ``w / max``. There is no gradient accumulation in
this platform, so the global batch is not held constant; a fixed-size run is unchanged (scale 1).
The Ray Data split follows the worker count by itself: Ray Train calls the ``DataConfig`` with the
new world size at every group start (training shards equal, validation exact; ``data_config.py``).
Each group start is logged to MLflow as the metric ``workers`` (value, step, wall time), so the
run's history shows every resize.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

WORKERS_METRIC = "workers"
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_worker_count(value: Any) -> int | tuple[int, int]:
    """``8``, ``"8"`` -> 8; ``"4-16"``, ``(4, 16)``, ``[4, 16]`` -> (4, 16); ``"8-8"`` -> 8.

    Raises ValueError with the accepted forms for anything else (fewer than 1 worker, min > max)."""
    lo: Any
    hi: Any
    if isinstance(value, bool):
        raise ValueError(f"--num-workers: expected N or MIN-MAX (e.g. 4-16), got {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, str) and (m := _RANGE.match(value)):
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
    else:
        raise ValueError(f"--num-workers: expected N or MIN-MAX (e.g. 4-16), got {value!r}")
    try:
        lo, hi = int(lo), int(hi)
    except (TypeError, ValueError):
        raise ValueError(f"--num-workers: expected N or MIN-MAX (e.g. 4-16), got {value!r}") from None
    if lo < 1 or lo > hi:
        raise ValueError(f"--num-workers {lo}-{hi}: need 1 <= MIN <= MAX")
    return lo if lo == hi else (lo, hi)


def describe(num_workers: int | tuple[int, int]) -> str:
    return f"{num_workers[0]}-{num_workers[1]}" if isinstance(num_workers, tuple) else str(num_workers)


def lr_scale(config, world_size: int) -> float:
    """The factor on every learning rate with ``world_size`` workers: the linear scaling rule for a
    global batch of ``world_size * per_worker_batch`` against the declared ``batch_size``."""
    return world_size / config.max_workers


def scaling_config(config, *, resources_per_worker: dict[str, float], label_selector: dict | None):
    """Ray's ScalingConfig: fixed for ``N``, elastic ``(min, max)`` for ``MIN-MAX``."""
    from ray.train import ScalingConfig

    kwargs: dict[str, Any] = {}
    if config.elastic:
        kwargs["elastic_resize_monitor_interval_s"] = config.elastic_resize_interval_s
    return ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=config.use_gpu,
        resources_per_worker=resources_per_worker,
        label_selector=label_selector,
        **kwargs,
    )


def log_world_size(logger, world_size: int, step: int, config) -> None:
    """Rank 0, at every start of the worker group: ``workers`` = world size at the current step.

    Also one log line when it differs from the configured maximum (an elastic run below its full size)."""
    if config.elastic and world_size != config.max_workers:
        log.warning(
            "elastic run: %d workers of %s (global batch %d, lr x %.3g)",
            world_size,
            describe(config.num_workers),
            world_size * config.per_worker_batch,
            lr_scale(config, world_size),
        )
    if logger is not None:
        logger.log_event({WORKERS_METRIC: world_size}, step=step)
