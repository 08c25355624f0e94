"""The epoch plan: each epoch's order of a split, a seeded permutation any run can seek into.

Ray Data's streaming split cannot seek (ray-project/ray#48224): after an interruption a resumed
epoch used to draw a fresh shuffle, seeing some images twice and others not at all. The plan makes
the order a pure function of (seed, epoch, the split's shard table), computed the same in every
process, so a checkpoint needs only how many samples of the epoch were trained.

The order, as MosaicML Streaming's block shuffles do it (``py1b``): the shards are permuted, cut
into windows of ``window_shards`` consecutive shards (by default enough for 4,096 samples), and the
samples of each window are permuted together. Prepare shuffles the split once globally, so every shard is already a random mix of
classes; the window permutation makes every epoch's order differ at the sample level too. A window
is also the unit one read task reads: its shards once, keeping the rows one rank trains on.

Ranks take the epoch's samples from a position on, interleaved: rank ``r`` of ``W`` trains
``order[start + r :: W]`` (its micro-batch ``j`` holds global positions ``start + (j*b + i)*W + r``),
so the set trained by every step is independent of the worker count, and a resume at position ``p``
on any number of workers trains exactly ``order[p:]``. The tail of fewer than ``W`` samples is left
out of the epoch (as Ray's ``streaming_split(equal=True)`` drops rows), so every rank trains the same
number of steps. Sample ids are ``shard offset + row`` in the manifest's shard order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW_SHARDS = 4
WINDOW_SAMPLES = 4096  # the default window: enough shards to hold this many samples


def window_shards_for(shard_rows: tuple[int, ...], requested: int) -> int:
    """``requested`` shards per window, or (0) enough for :data:`WINDOW_SAMPLES` samples: what decides
    how close an epoch's order comes to a uniform permutation is the window's sample count (measured
    in BENCHMARKS.md, "Epoch plan"), and a read task holds a window's rows for its rank."""
    if requested > 0:
        return requested
    mean = max(1.0, sum(shard_rows) / max(1, len(shard_rows)))
    return max(1, -(-WINDOW_SAMPLES // int(mean)))


def plan_seed(seed: int | None, run_name: str) -> int:
    """The plan's seed: ``--seed``, else one derived from the run's name, so a resubmitted or
    restarted run (same name) continues the same orders while different runs differ."""
    if seed is not None:
        return int(seed)
    import hashlib

    return int.from_bytes(hashlib.sha256(run_name.encode()).digest()[:4], "little")


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order of a split. ``shard_rows``: rows per shard, in the manifest's order."""

    shard_rows: tuple[int, ...]
    seed: int
    epoch: int  # 0-based
    window_shards: int = DEFAULT_WINDOW_SHARDS

    @property
    def num_samples(self) -> int:
        return int(sum(self.shard_rows))

    def _generator(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *stream])

    def windows(self) -> list[np.ndarray]:
        """The epoch's windows in order: each an array of shard indices."""
        shards = self._generator(0).permutation(len(self.shard_rows))
        w = max(1, self.window_shards)
        return [shards[i : i + w] for i in range(0, len(shards), w)]

    def order(self) -> np.ndarray:
        """Every sample id of the split, in this epoch's order (int64)."""
        offsets = np.concatenate([[0], np.cumsum(self.shard_rows, dtype=np.int64)])
        parts = []
        for k, window in enumerate(self.windows()):
            ids = np.concatenate([np.arange(offsets[s], offsets[s + 1], dtype=np.int64) for s in window])
            parts.append(self._generator(1, k).permutation(ids))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def trained_length(self, start: int, world: int) -> int:
        """How many samples each rank trains from position ``start`` on (the same on every rank)."""
        return max(0, self.num_samples - start) // world

    def rank_stream(self, start: int, rank: int, world: int) -> np.ndarray:
        """Rank ``rank``'s samples from global position ``start`` on: ``order[start + rank :: world]``,
        cut to :meth:`trained_length`."""
        return self.order()[start + rank :: world][: self.trained_length(start, world)]


@dataclass(frozen=True)
class ReadUnit:
    """What one read task produces: ``rows[i]`` of shard ``shards[i]`` taken, in this order."""

    shards: tuple[int, ...]  # shard indices read (each once)
    shard_of: np.ndarray  # per output row: its shard index
    row_of: np.ndarray  # per output row: its row in that shard
    sample_of: np.ndarray  # per output row: its sample id


def read_units(plan: EpochPlan, stream: np.ndarray, *, max_rows: int | None = None) -> list[ReadUnit]:
    """Cut a rank's ``stream`` (sample ids in training order) into read tasks: consecutive samples
    of one window go together (a window's shards are read once per rank), at most ``max_rows``
    per task."""
    offsets = np.concatenate([[0], np.cumsum(plan.shard_rows, dtype=np.int64)])
    shard_of = np.searchsorted(offsets, stream, side="right") - 1
    window_of_shard = np.empty(len(plan.shard_rows), np.int64)
    for k, window in enumerate(plan.windows()):
        window_of_shard[window] = k
    window_of = window_of_shard[shard_of] if len(stream) else np.zeros(0, np.int64)
    cuts = np.flatnonzero(np.diff(window_of)) + 1
    units = []
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(stream)]]), strict=True):
        step = max_rows or (hi - lo) or 1
        for a in range(int(lo), int(hi), step):
            b = min(int(hi), a + step)
            s = shard_of[a:b]
            units.append(
                ReadUnit(
                    shards=tuple(int(x) for x in np.unique(s)),
                    shard_of=s,
                    row_of=stream[a:b] - offsets[s],
                    sample_of=stream[a:b],
                )
            )
    return units


def shard_rows_of(manifest, split: str) -> tuple[int, ...]:
    return tuple(int(s.rows) for s in manifest.splits[split].shards)


def co_batch_repeat(first: Sequence[int], second: Sequence[int], batch: int) -> float:
    """Shuffle quality: of the pairs of samples sharing a batch in ``second``, the fraction that
    also shared one in ``first`` (a uniform permutation: about ``(batch - 1) / (n - 1)``)."""
    where = {int(s): i // batch for i, s in enumerate(first)}
    same = pairs = 0
    for i in range(0, len(second) - batch + 1, batch):
        groups: dict[int, int] = {}
        for s in second[i : i + batch]:
            g = where.get(int(s))
            if g is not None:
                groups[g] = groups.get(g, 0) + 1
        same += sum(c * (c - 1) // 2 for c in groups.values())
        pairs += batch * (batch - 1) // 2
    return same / max(pairs, 1)
