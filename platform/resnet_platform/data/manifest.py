"""``manifest.json``: the table of contents of a prepared data set, written last by the preparation.

A data set root without one is incomplete (a preparation still running or killed) and readers refuse it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs

from resnet_platform.errors import UserError
from resnet_platform.storage import Location, join, resolve

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class DatasetNotReadyError(UserError, ValueError):
    """The data set root has no manifest: preparation is incomplete or never ran."""


@dataclass
class ShardInfo:
    path: str  # relative to the data set root, e.g. "train/train-00000-of-00004.parquet"
    rows: int
    bytes: int
    sha256: str


@dataclass
class SplitManifest:
    num_rows: int
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


@dataclass
class Manifest:
    classes: list[str]  # sorted WordNet ids; the position is the label
    class_names: list[str]  # human-readable names, same order (the wnid when unknown)
    splits: dict[str, SplitManifest]
    rejected: list[dict] = field(default_factory=list)  # {"key", "reason"}
    source_layout: dict[str, str] = field(default_factory=dict)  # split -> layout found
    encoding: dict = field(default_factory=dict)  # {"max_side", "quality"}
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shard_uris(self, root: str, split: str) -> list[str]:
        return [join(root, s.path) for s in self.splits[split].shards]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        splits = {
            name: SplitManifest(num_rows=s["num_rows"], shards=[ShardInfo(**x) for x in s["shards"]])
            for name, s in d["splits"].items()
        }
        return cls(
            classes=list(d["classes"]),
            class_names=list(d.get("class_names") or d["classes"]),
            splits=splits,
            rejected=list(d.get("rejected", [])),
            source_layout=dict(d.get("source_layout", {})),
            encoding=dict(d.get("encoding", {})),
            format_version=int(d.get("format_version", FORMAT_VERSION)),
        )


def read_text(uri: str) -> str | None:
    return read_text_at(*resolve(uri))


def read_text_at(fs: pafs.FileSystem, path: str) -> str | None:
    """The file at ``path`` on ``fs`` (a URI resolved already) as text; None when there is none."""
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None
    except OSError:  # pyarrow's S3 reports a missing key as OSError with "NoSuchKey"/"not found"
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise


def write_text_atomic(uri: str, text: str) -> None:
    """Write a small file so that readers see all of it or nothing (tmp + rename; one PUT on S3)."""
    fs, path = resolve(uri)
    data = text.encode()
    if isinstance(fs, pafs.LocalFileSystem):
        import os

        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def read_manifest(uri: str) -> Manifest:
    return manifest_at(Location.of(uri))


def manifest_at(data: Location) -> Manifest:
    """The manifest of the prepared data set at ``data`` (already resolved), or
    :class:`DatasetNotReadyError` naming its URI."""
    text = read_text_at(data.fs, join(data.path, MANIFEST_NAME))
    if text is None:
        raise DatasetNotReadyError(
            f"{data.uri}: no {MANIFEST_NAME}: incomplete or not prepared (run jobs/prepare_imagenet.py)"
        )
    return Manifest.from_dict(json.loads(text))


@dataclass(frozen=True)
class PreparedData:
    """A prepared data set, opened once: its URI, filesystem and root path, and its manifest. A run
    opens it on the driver and hands it down (checks, both splits' datasets), so the manifest is
    read once and the URI resolved once."""

    uri: str
    fs: pafs.FileSystem
    root: str
    manifest: Manifest

    @classmethod
    def open(cls, uri: str) -> PreparedData:
        """Resolve ``uri`` and read its manifest (:class:`DatasetNotReadyError` when there is none)."""
        data = Location.of(uri)
        return cls(uri, data.fs, data.path, manifest_at(data))

    def shard_paths(self, split: str) -> list[str]:
        """The split's shards as paths on :attr:`fs` (no URI resolved again per shard)."""
        return self.manifest.shard_uris(self.root, split)


def write_manifest(uri: str, manifest: Manifest) -> None:
    write_text_atomic(join(uri, MANIFEST_NAME), manifest.to_json())
