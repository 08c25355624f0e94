"""ILSVRC2012 folders -> Parquet shards + ``manifest.json`` on a local folder or object storage.

One Ray task per shard. The shard plan is deterministic (same source, same flags -> same shards), each
shard is written atomically (tmp + rename locally; one PUT on S3) and then recorded in a small sidecar
``_progress/<shard>.json`` with its row count, size, checksum and a fingerprint of its inputs. A rerun
skips every shard whose sidecar matches, so a killed preparation resumes where it stopped. The
manifest is written last: a root without one is visibly incomplete.

A rerun also re-reads every shard it would keep and compares its sha256 with the sidecar's (in
Ray tasks, in parallel): a shard with a flipped byte is rewritten, not trusted for its size.
Source reads that fail with an I/O error are retried with backoff; an image that still cannot be
read is not rejected (only images no decoder opens are): its shard gets no sidecar, no manifest
is written, and the summary asks for a rerun, which reads it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from resnet_platform.data.checks import DEFAULT_MAX_IMAGE_PIXELS
from resnet_platform.data.imagenet_layout import (
    SourceImage,
    SplitSource,
    discover_split,
    read_class_names,
    train_wnids,
)
from resnet_platform.data.integrity import file_sha256
from resnet_platform.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SplitManifest,
    read_text_at,
    write_manifest,
    write_text_atomic,
)
from resnet_platform.storage import Location, check_reachable, join, resolve

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int32()), ("key", pa.string())])
ROW_GROUP_BYTES = 32 * 2**20
DEFAULT_QUALITY = 90
PLAN_SEED = 0
READ_ATTEMPTS = 4  # a source read failing with an I/O error is tried this many times in all
READ_BACKOFF_S = 0.25  # doubled after each failed attempt
NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


@dataclass
class PrepareConfig:
    source: str
    output: str
    splits: tuple[str, ...] = ("train", "val")
    shard_size_mb: float = 128.0
    max_side: int | None = None  # re-encode images larger than this (longest side), FFCV-style
    quality: int | None = None  # JPEG quality of re-encoded images (default 90 when re-encoding)
    num_cpus: int | None = None  # for ray.init when Ray is not running yet
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS  # larger images are rejected (None: no limit)
    progress: bool | None = None  # None: a progress bar only when stderr is a terminal


@dataclass
class PrepareSummary:
    output: str
    layouts: dict[str, str]
    images: dict[str, int]
    classes: int
    shards: int
    shards_written: int
    shards_reused: int
    bytes: int
    rejected: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    unread: list[dict] = field(default_factory=list)  # {"key", "reason"}: I/O errors after retries
    shards_repaired: int = 0  # complete shards whose checksum no longer matched, rewritten

    @property
    def complete(self) -> bool:
        """False when some images could not be read: no manifest was written; rerun."""
        return not self.unread

    def __str__(self) -> str:
        lines = [f"prepared {self.output} in {self.seconds:.1f}s"]
        lines += [f"  {s}: {self.layouts[s]}: {n:,} images" for s, n in self.images.items()]
        lines.append(
            f"  {sum(self.images.values()):,} images, {self.classes} classes, {self.shards} shards "
            f"({self.shards_written} written, {self.shards_reused} already complete"
            + (f", {self.shards_repaired} corrupt and rewritten" if self.shards_repaired else "")
            + "), "
            f"{self.bytes / 2**20:,.1f} MiB, {len(self.rejected)} rejected"
        )
        lines += [f"  rejected {r['key']}: {r['reason']}" for r in self.rejected[:20]]
        if len(self.rejected) > 20:
            lines.append(f"  ... and {len(self.rejected) - 20} more (see manifest.json)")
        if self.unread:
            lines.append(
                f"  INCOMPLETE: {len(self.unread)} images could not be read (I/O errors after "
                f"{READ_ATTEMPTS} attempts); no manifest written: rerun the same command to finish"
            )
            lines += [f"  unread {r['key']}: {r['reason']}" for r in self.unread[:20]]
        return "\n".join(lines)


@dataclass
class ShardSpec:
    split: str
    index: int
    count: int
    items: list[tuple[str, str, int | None]]  # (path, key, label or None)
    max_side: int | None
    quality: int | None
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

    @property
    def path(self) -> str:
        return f"{self.split}/{self.name}.parquet"

    def fingerprint(self) -> str:
        inputs = [self.items, self.max_side, self.quality, SHARD_SCHEMA.to_string()]
        if self.max_image_pixels != DEFAULT_MAX_IMAGE_PIXELS:  # shards prepared before the limit keep theirs
            inputs.append(self.max_image_pixels)
        blob = json.dumps(inputs)
        return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- images


class RejectedImage(ValueError):
    pass


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        hi = a.max() or 1.0
        im = Image.fromarray((a * (255.0 / hi)).clip(0, 255).astype("uint8"), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Pillow's bomb check off (it only warns below twice its limit): the caller applies the limit."""
    import warnings

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def normalize_image(
    data: bytes,
    *,
    max_side: int | None = None,
    quality: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> bytes:
    """Return JPEG bytes that decode to 3-channel RGB; raise RejectedImage when nothing can read them.

    Baseline RGB JPEGs are kept byte for byte unless re-encoding is asked for (``quality``) or they
    exceed ``max_side``. CMYK, grayscale, palette and 16-bit images and other containers (PNG disguised
    as .JPEG) become RGB JPEGs. Images above ``max_pixels`` (width x height) are rejected before
    they are decoded.
    """
    try:
        with _own_pixel_limit(), Image.open(io.BytesIO(data)) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise RejectedImage(
                    f"{im.width}x{im.height} = {im.width * im.height:,} pixels, above the limit of "
                    f"{max_pixels:,} (--max-image-pixels)"
                )
            fmt = im.format
            im.load()  # a full decode: truncated and corrupt files fail here, not in training
            too_big = max_side is not None and max(im.size) > max_side
            if fmt == "JPEG" and im.mode == "RGB" and not too_big and quality is None:
                return data
            out = _to_rgb(im)
            if too_big:
                scale = max_side / max(out.size)
                size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
                out = out.resize(size, Image.BILINEAR, reducing_gap=3.0)
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=quality or DEFAULT_QUALITY)
            return buf.getvalue()
    except RejectedImage:
        raise
    except Exception as e:  # PIL raises many types for bad files
        raise RejectedImage(f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------- shards


def _sidecar_uri(output: str, spec: ShardSpec) -> str:
    return join(output, "_progress", spec.name + ".json")


def _put_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:  # the object appears when the upload completes
            f.write(data)


def read_source(path: str, *, attempts: int = READ_ATTEMPTS, backoff_s: float = READ_BACKOFF_S) -> bytes:
    """A source image's bytes; I/O errors (EIO, a stale NFS handle, a timeout) are retried with
    exponential backoff. Errors no retry can fix (missing file, no permission) are raised at once."""
    for attempt in range(attempts):
        try:
            with open(path, "rb") as f:
                return f.read()
        except NOT_TRANSIENT:
            raise
        except OSError as e:
            if attempt == attempts - 1:
                raise
            log.warning("reading %s failed (%s), retrying in %.2fs", path, e, backoff_s * 2**attempt)
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def completed_shard(output: Location, spec: ShardSpec) -> dict | None:
    """The sidecar of ``spec`` when that shard is complete with the same inputs, else None. On the
    driver, for every shard: ``output`` is resolved once by the caller.

    Checks the shard's size only: its checksum is checked by ``verified_shard`` (a full read)."""
    sidecar = output.child("_progress", spec.name + ".json")
    text = read_text_at(output.fs, sidecar.path)
    if text is None:
        return None
    record = json.loads(text)
    if record.get("fingerprint") != spec.fingerprint():
        return None
    info = output.fs.get_file_info(output.child(spec.path).path)
    if info.type != pafs.FileType.File or info.size != record["shard"]["bytes"]:
        return None
    return record


def verified_shard(output: str, record: dict) -> bool:
    """Whether the shard a sidecar describes still has the recorded size and sha256. A Ray task:
    it gets the output's URI and resolves it in its own process (as ``write_shard`` does)."""
    size, digest = file_sha256(join(output, record["shard"]["path"]))
    return size == record["shard"]["bytes"] and digest == record["shard"]["sha256"]


def write_shard(output: str, spec: ShardSpec) -> dict:
    """Read, check and (re-)encode the images of one shard, write it atomically, then its sidecar.

    Images that could not be read (I/O errors after retries) are listed under ``unread`` and the
    sidecar is not written: the shard is not complete, and a rerun writes it again."""
    images, labels, keys, rejected, unread = [], [], [], [], []
    for path, key, label in spec.items:
        if label is None:
            rejected.append({"key": key, "reason": "no ground-truth label for this file"})
            continue
        try:
            data = read_source(path)
        except OSError as e:
            unread.append({"key": key, "reason": f"{type(e).__name__}: {e}"})
            continue
        try:
            images.append(
                normalize_image(
                    data, max_side=spec.max_side, quality=spec.quality, max_pixels=spec.max_image_pixels
                )
            )
        except RejectedImage as e:
            rejected.append({"key": key, "reason": str(e)})
            continue
        labels.append(label)
        keys.append(key)
    table = pa.table(
        {"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int32()), "key": keys},
        schema=SHARD_SCHEMA,
    )
    avg = max(1, table.nbytes // max(1, len(table)))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", row_group_size=max(16, ROW_GROUP_BYTES // avg))
    data = buf.getvalue()
    _put_bytes(join(output, spec.path), data)
    shard = ShardInfo(spec.path, len(table), len(data), hashlib.sha256(data).hexdigest())
    record = {"fingerprint": spec.fingerprint(), "shard": asdict(shard), "rejected": rejected}
    if unread:  # not complete: no sidecar (and none left from an earlier run), so a rerun rewrites it
        fs, sidecar = resolve(_sidecar_uri(output, spec))
        if fs.get_file_info(sidecar).type == pafs.FileType.File:
            fs.delete_file(sidecar)
        return dict(record, unread=unread)
    write_text_atomic(_sidecar_uri(output, spec), json.dumps(record))
    return record


def plan_shards(
    source: SplitSource,
    classes: list[str],
    shard_bytes: int,
    max_side: int | None,
    quality: int | None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[ShardSpec]:
    """Deterministic shard plan. Training images are shuffled (fixed seed) so a shard mixes classes."""
    index = {w: i for i, w in enumerate(classes)}
    images: list[SourceImage] = sorted(source.images, key=lambda im: im.key)
    if source.split == "train":
        random.Random(PLAN_SEED).shuffle(images)
    groups: list[list[SourceImage]] = [[]]
    size = 0
    for im in images:
        if groups[-1] and size + im.size > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(im)
        size += im.size
    groups = [g for g in groups if g]
    return [
        ShardSpec(
            source.split,
            i,
            len(groups),
            [(im.path, im.key, index.get(im.wnid) if im.wnid else None) for im in g],
            max_side,
            quality,
            max_image_pixels,
        )
        for i, g in enumerate(groups)
    ]


# ---------------------------------------------------------------------------------------------- driver


class _Progress:
    """tqdm when it is installed and stderr is a terminal; a plain line on a terminal otherwise."""

    def __init__(self, total: int, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.images = total, 0, 0
        self._bar = None
        if self.enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="shard", desc="prepare", file=sys.stderr)
            except ImportError:
                pass

    def update(self, rows: int) -> None:
        self.done += 1
        self.images += rows
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(images=self.images)
        elif self.enabled:
            print(
                f"\rprepare: {self.done}/{self.total} shards, {self.images:,} images", end="", file=sys.stderr
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def _write_shards(
    config: PrepareConfig,
    specs: list[ShardSpec],
    todo: list[ShardSpec],
    records: dict[str, dict],
    on_shard: Callable[[ShardInfo], None] | None,
) -> None:
    """One Ray task per shard of ``todo``; each finished record lands in ``records``."""
    import ray

    progress = _Progress(len(specs), config.progress)
    for record in records.values():
        progress.update(record["shard"]["rows"])
    task = ray.remote(num_cpus=1)(write_shard)
    pending = {task.remote(config.output, spec): spec for spec in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                record = ray.get(ref)
                records[spec.name] = record
                progress.update(record["shard"]["rows"])
                if on_shard is not None:
                    on_shard(ShardInfo(**record["shard"]))
    finally:
        progress.close()
        for ref in pending:
            ray.cancel(ref)
        for ref in pending:  # let cancelled tasks settle so nothing writes after we return
            try:
                ray.get(ref)
            except Exception:
                pass


@dataclass
class DatasetPlan:
    """What a preparation will write: the splits found, the classes (sorted WordNet ids, the
    standard index order) with their names, and every split's shards."""

    sources: dict[str, SplitSource]
    classes: list[str]
    names: dict[str, str]
    plans: dict[str, list[ShardSpec]]

    @property
    def specs(self) -> list[ShardSpec]:
        return [spec for plan in self.plans.values() for spec in plan]


def plan_dataset(config: PrepareConfig) -> DatasetPlan:
    """Read the source's layout and plan every split's shards, writing nothing and starting no Ray:
    the plan is deterministic, so a rerun plans the same shards and finds which are done."""
    sources = {s: discover_split(config.source, s) for s in config.splits}
    for s in sources.values():
        log.info("%s: found %s (%d files)", s.split, s.layout, len(s.images))
    classes = sorted(
        set(train_wnids(config.source)) | {im.wnid for s in sources.values() for im in s.images if im.wnid}
    )
    shard_bytes = int(config.shard_size_mb * 2**20)
    plans = {
        s: plan_shards(src, classes, shard_bytes, config.max_side, config.quality, config.max_image_pixels)
        for s, src in sources.items()
    }
    return DatasetPlan(sources, classes, read_class_names(config.source), plans)


@contextmanager
def _ray_for_shards(num_cpus: int | None) -> Iterator[None]:
    """Ray for the shard tasks: a caller's Ray is used and left running; otherwise the job's own
    (``console.ensure_ray``: quiet workers, its stop handlers) is started and shut down after."""
    import ray

    started = not ray.is_initialized()
    if started:
        from resnet_platform.console import ensure_ray

        ensure_ray(num_cpus=num_cpus, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _kept_shards(output: str, candidates: dict[str, dict]) -> dict[str, dict]:
    """Of the shards complete by their sidecar (``candidates``), those whose bytes still match its
    checksum, read back in Ray tasks in parallel: a sidecar vouches for a size, not for the bytes, so
    a shard with a flipped byte is rewritten rather than trusted."""
    import ray

    verify = ray.remote(num_cpus=1)(verified_shard)
    checks = {name: verify.remote(output, record) for name, record in candidates.items()}
    kept = {}
    for name, ref in checks.items():
        if ray.get(ref):
            kept[name] = candidates[name]
        else:
            log.warning(
                "%s: checksum mismatch, rewriting it", join(output, candidates[name]["shard"]["path"])
            )
    return kept


def _drop_manifest(output: Location) -> None:
    """Delete the manifest before any shard changes: a data set is complete only while it has one, and
    until the new one lands it is not."""
    path = output.child(MANIFEST_NAME).path
    if output.fs.get_file_info(path).type == pafs.FileType.File:
        output.fs.delete_file(path)


def build_manifest(config: PrepareConfig, plan: DatasetPlan, records: dict[str, dict]) -> Manifest:
    """The manifest from every shard's record (rows, bytes, checksum, rejected images), in plan
    order; written by the caller only when no image was left unread."""
    splits, rejected = {}, []
    for split, specs in plan.plans.items():
        shards = [ShardInfo(**records[spec.name]["shard"]) for spec in specs]
        splits[split] = SplitManifest(num_rows=sum(s.rows for s in shards), shards=shards)
        rejected += [r for spec in specs for r in records[spec.name]["rejected"]]
    return Manifest(
        classes=plan.classes,
        class_names=[plan.names.get(w, w) for w in plan.classes],
        splits=splits,
        rejected=rejected,
        source_layout={s: src.layout for s, src in plan.sources.items()},
        encoding={
            "max_side": config.max_side,
            "quality": config.quality,
            "max_image_pixels": config.max_image_pixels,  # every image in the shards is within it
        },
    )


def prepare_imagenet(
    config: PrepareConfig, *, on_shard: Callable[[ShardInfo], None] | None = None
) -> PrepareSummary:
    """Prepare ``config.source`` into ``config.output``; rerun to resume. ``on_shard`` sees each shard
    as it completes (progress reporting; the tests use it to interrupt a run)."""
    t0 = time.monotonic()
    check_reachable(config.output)
    plan = plan_dataset(config)
    specs = plan.specs
    output = Location.of(config.output)  # the driver's reads below it; the Ray tasks get the URI
    candidates = {spec.name: r for spec in specs if (r := completed_shard(output, spec)) is not None}
    with _ray_for_shards(config.num_cpus):
        records = _kept_shards(config.output, candidates)
        reused = len(records)
        todo = [spec for spec in specs if spec.name not in records]
        log.info("%d shards planned, %d already complete, %d to write", len(specs), reused, len(todo))
        if todo:
            _drop_manifest(output)
            _write_shards(config, specs, todo, records, on_shard)
    unread = [u for spec in specs for u in records[spec.name].get("unread", [])]
    manifest = build_manifest(config, plan, records)
    if not unread:
        write_manifest(config.output, manifest)
    summary = PrepareSummary(
        output=config.output,
        layouts=manifest.source_layout,
        images={s: m.num_rows for s, m in manifest.splits.items()},
        classes=len(plan.classes),
        shards=len(specs),
        shards_written=len(specs) - reused,
        shards_reused=reused,
        bytes=sum(m.num_bytes for m in manifest.splits.values()),
        rejected=manifest.rejected,
        seconds=time.monotonic() - t0,
        unread=unread,
        shards_repaired=len(candidates) - reused,
    )
    log.info("%s", summary)
    return summary
