"""The images a run could not use (undecodable, above the pixel limit): recorded per run, bounded,
never blocking a data task for long.

One small named actor per (run, split) holds a deduplicated ``{key: reason}``, per-shard counts and
the first few examples; the epoch's budget check (``data/checks.py``) reads a summary, not the list.
Keyed by the run, not the data set, so a later run on re-prepared data at the same URI starts from
zero; the driver closes the run's ledgers when the run ends (``close_ledgers``).

This module imports nothing else from ``data/``: the read stage (``shard_reader``), the decode stage
(``pipeline``, ``device_decode``) and the checks all record or read through it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NAMESPACE = "resnet_platform"
EXAMPLES = 5  # examples kept and reported per split
RECORD_TIMEOUT_S = 10.0  # a data task waits at most this for its record to land


@dataclass
class SkipSummary:
    """What the budget check needs: distinct images skipped, where, and a few examples."""

    count: int = 0
    per_shard: dict[str, int] = field(default_factory=dict)  # shard uri -> distinct images
    unlocated: int = 0  # skipped at decode time, where the shard is not known
    examples: list[dict] = field(default_factory=list)


def ledger_name(run: str, split: str) -> str:
    """The actor name of ``run``'s ledger for ``split`` (``run``: any string unique to the run)."""
    return "skips-" + hashlib.sha1(f"{run}\0{split}".encode()).hexdigest()[:16]


@functools.cache
def _ledger_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class SkipLedger:
        def __init__(self) -> None:
            self.reasons: dict[str, str] = {}
            self.shards: dict[str, str] = {}  # key -> shard uri, where known
            self.examples: list[dict] = []

        def record(self, items: list[dict]) -> None:
            for item in items:
                key = item["key"]
                if key not in self.reasons and len(self.examples) < EXAMPLES:
                    self.examples.append(dict(item))
                self.reasons.setdefault(key, item["reason"])
                if item.get("shard"):
                    self.shards[key] = item["shard"]

        def summary(self) -> SkipSummary:
            per_shard: dict[str, int] = {}
            for shard in self.shards.values():
                per_shard[shard] = per_shard.get(shard, 0) + 1
            return SkipSummary(
                len(self.reasons), per_shard, len(self.reasons) - len(self.shards), self.examples
            )

        def unlocated_keys(self, limit: int) -> list[str]:
            return [k for k in self.reasons if k not in self.shards][:limit]

        def entries(self) -> list[dict]:
            return [{"key": k, "reason": r, "shard": self.shards.get(k)} for k, r in self.reasons.items()]

    return SkipLedger


def _ledger(name: str, *, create: bool):
    import ray

    if not create:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
    # Detached: a data task's worker may be reaped while the run goes on; the driver closes it.
    options = dict(name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached")
    return _ledger_class().options(**options).remote()


def record_skips(name: str, items: list[dict]) -> None:
    """Add skipped images (``{"key", "reason"[, "shard"]}``) to the ledger ``name``. Waits at most
    ``RECORD_TIMEOUT_S`` (the record is then still on its way): a data task never blocks for long."""
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        ray.get(_ledger(name, create=True).record.remote(items), timeout=RECORD_TIMEOUT_S)
    except GetTimeoutError:
        log.warning(
            "the skip record of %d image(s) is taking over %gs; not waiting", len(items), RECORD_TIMEOUT_S
        )


def skip_summary(name: str) -> SkipSummary:
    """The ledger's summary; empty when nothing was skipped (no ledger was made)."""
    import ray

    actor = _ledger(name, create=False)
    return SkipSummary() if actor is None else ray.get(actor.summary.remote(), timeout=60)


def unlocated_keys(name: str, limit: int) -> list[str]:
    """Up to ``limit`` skipped keys whose shard the ledger does not know (decode-time skips)."""
    import ray

    actor = _ledger(name, create=False)
    return [] if actor is None else ray.get(actor.unlocated_keys.remote(limit), timeout=60)


def skipped_images(name: str) -> list[dict]:
    """Every distinct skipped image ``{"key", "reason", "shard"}`` (for inspection and tests)."""
    import ray

    actor = _ledger(name, create=False)
    return [] if actor is None else ray.get(actor.entries.remote(), timeout=60)


def close_ledgers(run: str, splits: Iterable[str]) -> dict[str, int]:
    """End ``run``'s ledgers; returns the distinct images each split skipped. Never raises."""
    import ray

    counts = {}
    for split in splits:
        try:
            actor = _ledger(ledger_name(run, split), create=False)
            if actor is None:
                counts[split] = 0
                continue
            counts[split] = ray.get(actor.summary.remote(), timeout=30).count
            ray.kill(actor)
        except Exception as e:  # noqa: BLE001 (a cleanup: the run's result stands)
            log.warning("could not close the skip ledger of %s: %s", split, e)
    return counts
