"""Data limits, checked where a mistake is cheapest to report: on the driver before any worker
starts (empty splits, labels outside the class count), and after every epoch (the decode-skip budget).

Each failure is a ``DataCheckError``: one line that names the data set, split or shard and what to do.
Labels are read from the Parquet footers' statistics (a few KB per shard, no image bytes); a label
past the class count would otherwise surface as a CUDA device-side assert in the middle of an epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from resnet_platform.data.manifest import Manifest
from resnet_platform.data.skip_ledger import ledger_name, skip_summary, unlocated_keys
from resnet_platform.errors import UserError, one_line
from resnet_platform.storage import Location, resolve

DEFAULT_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit, 89,478,485
DEFAULT_MAX_SKIPPED_FRACTION = 0.001
FOOTER_THREADS = 16
WORST_SHARDS = 5
LOCATE_AT_MOST = 10_000  # decode-time skips located by key when the budget is exceeded


class DataCheckError(UserError, ValueError):
    """The data cannot be trained on as it is; the message is one line naming where and why."""


class EmptySplitError(DataCheckError):
    pass


class LabelOutOfRangeError(DataCheckError):
    pass


class SkipBudgetExceeded(DataCheckError):
    pass


def check_splits(uri: str, manifest: Manifest, splits: Iterable[str] = ("train", "val")) -> None:
    """Every split the run reads exists and has rows."""
    for split in splits:
        if split not in manifest.splits:
            raise EmptySplitError(f"{uri}: no {split!r} split (has {', '.join(sorted(manifest.splits))})")
        if manifest.splits[split].num_rows <= 0:
            raise EmptySplitError(
                f"{uri}: the {split!r} split is empty (0 images): nothing to "
                f"{'train on' if split == 'train' else 'validate with'}"
            )


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Labels in memory (CIFAR batches) lie in ``[0, num_classes)``."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max() if labels.max() >= num_classes else labels.min())
        raise LabelOutOfRangeError(f"{where}: label {bad} outside [0, {num_classes}) ({num_classes} classes)")


def _label_range(fs: pafs.FileSystem, path: str) -> tuple[int, int] | None:
    """(min, max) label of one shard from its footer's row-group statistics; the label column
    itself when a writer left no statistics. None for a shard without rows."""
    meta = pq.read_metadata(path, filesystem=fs)
    col = meta.schema.names.index("label")
    lo = hi = None
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(col).statistics
        if stats is None or not stats.has_min_max:
            labels = pq.read_table(path, columns=["label"], filesystem=fs)["label"].to_numpy()
            return (int(labels.min()), int(labels.max())) if len(labels) else None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return None if lo is None else (int(lo), int(hi))


def check_label_range(uri: str, manifest: Manifest, splits: Iterable[str] = ("train", "val")) -> None:
    """Every shard's labels lie inside the manifest's class count (footer reads, in parallel)."""
    n = manifest.num_classes
    data = Location.of(uri)  # resolved once; each shard is a path below it
    shard_uris = [u for split in splits for u in manifest.shard_uris(uri, split)]
    paths = [p for split in splits for p in manifest.shard_uris(data.path, split)]
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        ranges = pool.map(lambda path: _label_range(data.fs, path), paths)
        for shard, rng in zip(shard_uris, ranges, strict=True):
            if rng is not None and (rng[0] < 0 or rng[1] >= n):
                bad = rng[1] if rng[1] >= n else rng[0]
                raise LabelOutOfRangeError(
                    f"shard {shard} holds label {bad} but the manifest of {uri} lists {n} classes "
                    f"(labels 0..{n - 1}): prepare the data set again, or fix its manifest"
                )


def check_prepared_data(uri: str, manifest: Manifest, splits: Iterable[str] = ("train", "val")) -> None:
    """The driver's checks of a prepared data set, before any worker starts."""
    splits = tuple(splits)
    check_splits(uri, manifest, splits)
    check_label_range(uri, manifest, splits)


# ------------------------------------------------------------------------------ decode-skip budget


def _shards_of_keys(uri: str, manifest: Manifest, split: str, keys: set[str]) -> dict[str, str]:
    """Key -> shard URI for ``keys``, from the shards' ``key`` columns (only when reporting)."""
    out = {}
    for shard in manifest.shard_uris(uri, split):
        fs, path = resolve(shard)
        for key in pq.read_table(path, columns=["key"], filesystem=fs)["key"].to_pylist():
            if key in keys:
                out[key] = shard
    return out


def check_skip_budget(uri: str, splits: Iterable[str], max_fraction: float, *, run: str) -> None:
    """Fail when more than ``max_fraction`` of a split's images were skipped as undecodable (or
    above the pixel limit) in run ``run``, naming the split and its worst shards.

    Reads the run's ledger summary (``data/skip_ledger.py``: distinct images, so repeated epochs do
    not inflate the fraction; a few examples, not the list). Decode-time skips, whose shard the
    ledger does not know, are located from the shards' key columns only when the budget is exceeded.
    A no-op for data sets without skips (CIFAR)."""
    from resnet_platform.data.manifest import read_manifest

    manifest = None
    for split in splits:
        name = ledger_name(run, split)
        summary = skip_summary(name)
        if not summary.count:
            continue
        manifest = manifest or read_manifest(uri)
        rows = manifest.splits[split].num_rows
        fraction = summary.count / max(rows, 1)
        if fraction <= max_fraction:
            continue
        per_shard = Counter(summary.per_shard)
        if summary.unlocated:
            keys = set(unlocated_keys(name, LOCATE_AT_MOST))
            located = _shards_of_keys(uri, manifest, split, keys)
            per_shard.update(located[k] if k in located else "?" for k in keys)
        worst = ", ".join(f"{s} ({c})" for s, c in per_shard.most_common(WORST_SHARDS))
        example = summary.examples[0]
        raise SkipBudgetExceeded(
            f"{uri}: {summary.count} of {rows} images of the {split!r} split could not be used "
            f"({fraction:.1%}, more than --max-skipped-fraction {max_fraction:g}); worst shards: {worst}; "
            f"e.g. {example['key']}: {example['reason']}"
        )


def find_data_error(error: BaseException) -> DataCheckError | None:
    """The DataCheckError inside a Ray Train / Ray Data failure (worker errors, task wrappers),
    as a fresh one-line error of the same class."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DataCheckError):
            cause = getattr(e, "cause", None)  # a RayTaskError(...) wraps the raised one
            base = cause if isinstance(cause, DataCheckError) else e
            cls = next(
                c for c in type(base).__mro__ if issubclass(c, DataCheckError) and "Ray" not in c.__name__
            )
            # Ray appends its retry notes to the message: keep the first line, the one we wrote.
            return cls(one_line(base))
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        todo += list(getattr(e, "worker_failures", {}).values())
    return None
