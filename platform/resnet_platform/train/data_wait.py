"""The data-wait watchdog: a worker that waits too long for a batch fails with one line saying why.

Ray Train's health check is an actor call while the training function runs in its own thread, so
a worker blocked in ``iter_batches`` stays "healthy" forever, and Ray Data's own no-progress
timeout (30 min by default) names no split, no rank and nothing the cluster lacks. A run whose
read tasks can never be scheduled (the data nodes' CPUs taken, a resource no node has) must not
look like a run that is starting.

:func:`watch_batches` pulls the worker's batches on a background thread into a queue of one,
so the loop's wait for the next batch has a deadline: ``first_batch_s`` for an epoch's first
batch (an autoscaler may take minutes to add a data node), ``between_batches_s`` after it. Only
the time the loop spends waiting counts, not its own compute. Past the limit it raises
:class:`DataWaitTimeout` (a ``DataCheckError``, so the job prints it as its one error line) with
what Ray says is missing: free and total CPUs, the pending resource demand, and the nodes that
could serve it (:func:`cluster_shortfall`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from resnet_platform.data.checks import DataCheckError

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5  # the cluster-status call in the message: bounded, it must not hang the failure
_END = object()


class DataWaitTimeout(DataCheckError):
    """A worker waited past its limit for a batch: the message names split, rank and the shortfall."""


def _fmt_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"


def _covers(totals: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(totals.get(k, 0.0) >= v for k, v in bundle.items())


def cluster_shortfall() -> str:
    """What the cluster lacks, from Ray's own view: free/total CPUs, pending demand (tasks, actors,
    placement groups) and, per demanded shape, the nodes whose totals could ever hold it. Never
    raises: the failure it explains must still be reported when the GCS is slow."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        free, total = ray.available_resources(), ray.cluster_resources()
        parts = [f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPUs free"]
        status = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=STATUS_TIMEOUT_S)
        nodes = [n for n in status.active_nodes + status.idle_nodes if n.resource_usage is not None]
        demands = status.resource_demands
        shapes: dict[tuple, int] = {}
        for d in [*demands.ray_task_actor_demand, *demands.placement_group_demand]:
            for b in d.bundles_by_count:
                key = tuple(sorted(b.bundle.items()))
                shapes[key] = shapes.get(key, 0) + b.count
        if not shapes:
            parts.append(
                "no pending resource demand (the data tasks run but deliver nothing: see their logs)"
            )
        for shape, count in sorted(shapes.items(), key=lambda kv: -kv[1]):
            bundle = dict(shape)
            able = [n for n in nodes if _covers(n.total_resources(), bundle)]
            missing = sorted(k for k in bundle if not any(k in n.total_resources() for n in nodes))
            if missing:
                where = f"no node has {', '.join(missing)}"
            elif able:
                where = "could run on " + ", ".join(
                    f"{n.ip_address} ({n.available_resources().get('CPU', 0.0):g} CPU free)" for n in able[:4]
                )
            else:
                where = "no node is large enough"
            parts.append(f"pending {count}x {_fmt_bundle(bundle)}: {where}")
        return "; ".join(parts)
    except Exception as e:  # noqa: BLE001
        return f"cluster status unavailable ({type(e).__name__}: {e})"


def watched(batches: Iterable[Any], config, split: str, rank: int) -> Iterator[Any]:
    """:func:`watch_batches` with the run's limits (``--data-wait-s``, ``--data-wait-between-s``)."""
    return watch_batches(
        batches,
        split=split,
        rank=rank,
        first_batch_s=config.data_wait_s,
        between_batches_s=config.data_wait_between_s,
    )


def watch_batches(
    batches: Iterable[Any],
    *,
    split: str,
    rank: int,
    first_batch_s: float,
    between_batches_s: float,
    describe=cluster_shortfall,
) -> Iterator[Any]:
    """``batches`` with a deadline on every wait: one line (:class:`DataWaitTimeout`) instead of a
    silent hang. A limit of 0 turns the watchdog off (the batches are then yielded as they are).

    The producer thread holds at most one batch ahead of the loop (the queue's one slot), so the
    pipeline's own prefetching still sets the memory in flight. Errors of the stream are re-raised
    here, in the loop's thread."""
    if first_batch_s <= 0 and between_batches_s <= 0:
        yield from batches
        return
    slot: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(entry: tuple) -> bool:
        """Hand ``entry`` to the loop; False once the loop has stopped listening."""
        while not stop.is_set():
            try:
                slot.put(entry, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for item in batches:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as e:  # noqa: BLE001 (handed to the loop's thread)
            offer((_END, e))

    thread = threading.Thread(target=pull, name=f"data-wait-{split}", daemon=True)
    thread.start()
    received = 0
    try:
        while True:
            limit = first_batch_s if received == 0 else between_batches_s
            started = time.monotonic()
            try:
                item, error = slot.get(timeout=limit if limit > 0 else None)
            except queue.Empty:
                which = "the epoch's first batch" if received == 0 else "the next batch"
                flag = "--data-wait-s" if received == 0 else "--data-wait-between-s"
                raise DataWaitTimeout(
                    f"no {split} batch on rank {rank} for {time.monotonic() - started:.0f} s waiting for {which} "
                    f"({received} batches received this epoch; {flag} {limit:g}): {describe()}"
                ) from None
            if error is not None:
                raise error
            if item is _END:
                return
            received += 1
            yield item
    finally:
        stop.set()


def set_no_progress_backstop(datasets: dict, config) -> None:
    """Ray Data's own no-progress timeout, set above the watchdog's limits on every dataset: a
    backstop (its message names no split or rank), never the first to fire. Ray's default (30 min)
    stays where it is already higher, and where the watchdog is off."""
    for ds in datasets.values():
        ds.context.execution_no_progress_timeout_s = no_progress_timeout_s(
            config, ds.context.execution_no_progress_timeout_s
        )


def no_progress_timeout_s(config, current: float) -> float:
    """Ray Data's no-progress timeout for a stream of this run: twice the watchdog's longest limit,
    or ``current`` where that is higher or the watchdog is off."""
    longest = max(config.data_wait_s, config.data_wait_between_s)
    return current if longest <= 0 else max(current, 2 * longest)
