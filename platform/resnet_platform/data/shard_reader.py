"""The read stage of the pipeline: each shard is read once, verified, then parsed from those bytes.

A Ray Data ``FileBasedDatasource`` with one read task per shard. The task reads the whole file
(as Ray's Parquet reader did), checks its size and sha256 against the manifest, and parses the
Parquet from the bytes it already holds, so verification adds hashing (about 1.4 GB/s per core
with SHA-NI) but no second read. A corrupt shard fails the read naming the shard and the fix.

The same pass checks what a shard must hold: labels inside the manifest's class count, and, when
the manifest does not already guarantee it, images within the pixel limit (those above it are
dropped and recorded with the decode skips, so they count against the skip budget).
"""

from __future__ import annotations

import functools
import io
import posixpath
import warnings
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from resnet_platform.data.checks import LabelOutOfRangeError
from resnet_platform.data.integrity import check_shard_bytes
from resnet_platform.data.skip_ledger import record_skips

COLUMNS = ["image", "label", "key"]


def image_pixels(data: bytes) -> int | None:
    """Width x height from the image header (no decode); None when no decoder recognises it
    (the decode stage then skips and records it)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bomb warning: the limit is applied by the caller
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.width * im.height
        except Exception:
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def pixel_limit_to_check(manifest, max_image_pixels: int | None) -> int | None:
    """The run's pixel limit where a read must still check it: None when there is none, or when the
    manifest says prepare already enforced one at least as strict (no image header parsed per row)."""
    guaranteed = manifest.encoding.get("max_image_pixels")
    if max_image_pixels is None or (guaranteed is not None and guaranteed <= max_image_pixels):
        return None
    return max_image_pixels


def check_labels(table: pa.Table, num_classes: int, uri: str) -> None:
    """Every label of ``table`` inside the manifest's class count, or the shard is refused by name."""
    if len(table) == 0:
        return
    lo, hi = (v.as_py() for v in pc.min_max(table["label"]).values())
    if lo < 0 or hi >= num_classes:
        raise LabelOutOfRangeError(
            f"shard {uri} holds label {hi if hi >= num_classes else lo} "
            f"outside [0, {num_classes}) (the manifest's class count)"
        )


@functools.lru_cache(maxsize=4)
def _shard_table(ref) -> dict[str, tuple[str, str, int]]:
    """The split's shard table, fetched once per worker process (tasks of one read share it)."""
    import ray

    return ray.get(ref)


class VerifiedShardDatasource(FileBasedDatasource):
    """Prepared Parquet shards, each verified against its manifest entry before any row is used.

    ``shards``: shard file name -> (uri for messages, sha256, bytes). ``max_image_pixels``: drop
    images above it (None: the manifest says prepare already enforced a limit at least as strict).

    Ray Data pickles the datasource into every read task, so the table lives behind one object
    reference (as Ray keeps the paths): a task's size does not grow with the shard count, where a
    table held here cost about 170 bytes per shard per task (O(shards^2) bytes per epoch).
    """

    def __init__(
        self,
        paths: list[str],
        *,
        shards: dict[str, tuple[str, str, int]],
        num_classes: int,
        max_image_pixels: int | None,
        skips_name: str,
        columns: list[str] = COLUMNS,
        **kwargs,
    ) -> None:
        super().__init__(paths, **kwargs)
        self._columns = list(columns)
        import ray

        self._shards_ref = ray.put(shards)
        self._num_classes = num_classes
        self._max_image_pixels = max_image_pixels
        self._skips_name = skips_name

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        uri, sha256, size = _shard_table(self._shards_ref)[posixpath.basename(path)]
        data = f.readall()
        check_shard_bytes(data, sha256=sha256, size=size, uri=uri)
        parquet = pq.ParquetFile(pa.BufferReader(data))
        for i in range(parquet.num_row_groups):
            # The pixel check records skipped images by key, so it reads the keys too.
            table = parquet.read_row_group(i, columns=COLUMNS if self._max_image_pixels else self._columns)
            if len(table) == 0:
                continue
            check_labels(table, self._num_classes, uri)
            if self._max_image_pixels is not None:
                table = self._drop_oversized(table, uri).select(self._columns)
            yield table

    def _drop_oversized(self, table: pa.Table, uri: str) -> pa.Table:
        limit = self._max_image_pixels
        keep, dropped = [], []
        for image, key in zip(table["image"].to_pylist(), table["key"].to_pylist(), strict=True):
            pixels = image_pixels(image)
            ok = pixels is None or pixels <= limit
            keep.append(ok)
            if not ok:
                dropped.append(
                    {
                        "key": key,
                        "shard": uri,
                        "reason": f"{pixels:,} pixels, above the limit of {limit:,} (--max-image-pixels)",
                    }
                )
        if not dropped:
            return table
        record_skips(self._skips_name, dropped)
        return table.filter(pa.array(keep))


def verified_shard_source(
    uri: str,
    manifest,
    split: str,
    *,
    shuffle,
    max_image_pixels: int | None,
    skips_name: str,
    columns: list[str] = COLUMNS,
) -> VerifiedShardDatasource:
    """The datasource of the split's shards: one read task per shard, each verified against
    ``manifest`` before its rows are used."""
    from resnet_platform.storage import join, resolve

    fs, root = resolve(uri)
    entries = manifest.splits[split].shards
    paths = manifest.shard_uris(root, split)  # paths on ``fs``: the URI resolved once, not per shard
    shards = {posixpath.basename(s.path): (join(uri, s.path), s.sha256, s.bytes) for s in entries}
    return VerifiedShardDatasource(
        paths,
        shards=shards,
        num_classes=manifest.num_classes,
        max_image_pixels=pixel_limit_to_check(manifest, max_image_pixels),
        skips_name=skips_name,
        columns=columns,
        filesystem=fs,
        shuffle=shuffle,
    )


def read_verified_shards(
    uri: str,
    manifest,
    split: str,
    *,
    task_args: dict | None = None,
    **source_args,
):
    """A Ray Dataset of the split's rows (``columns`` of ``image``, ``label``, ``key``): the
    :func:`verified_shard_source` of ``source_args``, one read task per shard. ``task_args``:
    keyword arguments of the read that place it (``DataPlacement.task_args()``)."""
    import ray.data

    source = verified_shard_source(uri, manifest, split, **source_args)
    return ray.data.read_datasource(
        source, override_num_blocks=len(manifest.splits[split].shards), **(task_args or {})
    )
