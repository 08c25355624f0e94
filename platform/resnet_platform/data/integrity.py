"""Shard checksums: the sha256 that ``prepare`` records for each shard, checked before its rows are used.

A shard of the same size with one flipped byte parses as valid Parquet and decodes into a wrong
image or label; only the checksum tells. Readers verify the bytes they already hold for parsing
(no second read of the data set); a prepare rerun verifies complete shards and rewrites bad ones.
"""

from __future__ import annotations

import hashlib

from resnet_platform.data.checks import DataCheckError
from resnet_platform.storage import resolve

READ_CHUNK = 8 * 2**20


class ShardChecksumError(DataCheckError):
    """A shard's bytes do not match the size or sha256 the manifest recorded for it."""


def check_shard_bytes(data: bytes, *, sha256: str, size: int, uri: str) -> None:
    """Raise ShardChecksumError naming ``uri`` when ``data`` is not the shard the manifest describes."""
    if len(data) != size:
        raise ShardChecksumError(
            f"shard {uri} is corrupt: {len(data)} bytes where the manifest recorded {size}; "
            "rerun jobs/prepare_imagenet.py with the same flags to rewrite it"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ShardChecksumError(
            f"shard {uri} is corrupt: sha256 {digest[:16]}... where the manifest recorded {sha256[:16]}...; "
            "rerun jobs/prepare_imagenet.py with the same flags to rewrite it"
        )


def file_sha256(uri: str) -> tuple[int, str]:
    """(size, sha256) of a file, read in chunks (a prepare rerun checks shards it did not write)."""
    fs, path = resolve(uri)
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
