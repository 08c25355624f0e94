"""Bad data on the platform's own read paths: corrupt shards, source I/O errors, oversized images.

Each test asserts what was kept: a corrupt shard is refused by name and rewritten by a prepare
rerun; an image whose read failed is not rejected and is in the shards after a rerun.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures.datasets import write_ilsvrc_tree
from PIL import Image

from resnet_platform.data.checks import find_data_error
from resnet_platform.data.integrity import ShardChecksumError
from resnet_platform.data.manifest import read_manifest
from resnet_platform.data.pipeline import TransformConfig, build_split_dataset, decode_failures
from resnet_platform.data.prepare import PrepareConfig, normalize_image, prepare_imagenet, read_source

EIO_SOURCE = "/proc/self/mem"  # reading offset 0 of one's own address space: the kernel answers EIO


def all_keys(uri: str, split: str) -> list[str]:
    ds = build_split_dataset(
        uri,
        split,
        train=False,
        transform=TransformConfig(image_size=8, augmentation="none"),
        include_key=True,
    )
    return sorted(k for b in ds.iter_batches(batch_format="numpy") for k in b["key"].tolist())


def shard_keys(uri: str, split: str) -> list[str]:
    manifest = read_manifest(uri)
    return sorted(
        k
        for s in manifest.shard_uris(uri, split)
        for k in pq.read_table(s, columns=["key"])["key"].to_pylist()
    )


@pytest.mark.slow
def test_flipped_byte_is_refused_naming_the_shard_and_a_rerun_repairs_it(tmp_path, ray_local):
    tree = write_ilsvrc_tree(tmp_path / "src", train_per_class=8, val_per_class=2)
    out = str(tmp_path / "out")
    config = PrepareConfig(source=str(tree.root), output=out, shard_size_mb=0.03)
    prepare_imagenet(config)
    manifest = read_manifest(out)
    shard = manifest.splits["train"].shards[1]
    path = Path(out) / shard.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit: valid Parquet, a different image
    path.write_bytes(bytes(data))

    with pytest.raises(Exception) as caught:
        all_keys(out, "train")
    error = find_data_error(caught.value)
    assert isinstance(error, ShardChecksumError)
    assert str(path) in str(error) and "rerun jobs/prepare_imagenet.py" in str(error)
    assert "\n" not in str(error)

    summary = prepare_imagenet(config)  # the rerun checks checksums, not only sizes
    assert summary.shards_repaired == 1 and summary.shards_written == 1
    assert (
        hashlib.sha256(path.read_bytes()).hexdigest() == read_manifest(out).splits["train"].shards[1].sha256
    )
    expected = sorted(k for k in tree.labels["train"] if k not in tree.bad)
    assert all_keys(out, "train") == expected  # every image back, read through the verifying reader


def test_source_read_failing_with_eio_is_not_rejected_and_a_rerun_picks_it_up(tmp_path, ray_local):
    tree = write_ilsvrc_tree(tmp_path / "src", train_per_class=6, val_per_class=2)
    key = sorted(k for k in tree.labels["train"] if k not in tree.bad and k not in tree.special)[3]
    image = tree.root / key
    saved = tmp_path / "saved.JPEG"
    shutil.copyfile(image, saved)
    image.unlink()
    image.symlink_to(EIO_SOURCE)  # every read of this source image now fails with a real EIO
    out = str(tmp_path / "out")
    config = PrepareConfig(source=str(tree.root), output=out, shard_size_mb=0.03)

    first = prepare_imagenet(config)
    assert not first.complete and [u["key"] for u in first.unread] == [key]
    assert "Input/output error" in first.unread[0]["reason"]
    assert key not in {r["key"] for r in first.rejected}  # an I/O error is not a bad image
    assert not (Path(out) / "manifest.json").exists() and "rerun the same command" in str(first)

    image.unlink()
    shutil.copyfile(saved, image)  # the storage recovers
    second = prepare_imagenet(config)
    assert second.complete and second.shards_written >= 1
    assert key in shard_keys(out, "train")
    assert shard_keys(out, "train") == sorted(k for k in tree.labels["train"] if k not in tree.bad)


def test_a_read_that_fails_once_is_retried(tmp_path, caplog):
    """read_source retries an EIO with backoff: the source recovers between two attempts (swapped when
    the platform logs its retry), and the bytes come back."""
    real = tmp_path / "real.JPEG"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(real, format="JPEG")
    path = tmp_path / "flaky.JPEG"
    path.symlink_to(EIO_SOURCE)

    class Recover(logging.Handler):
        def emit(self, record):
            if "retrying" in record.getMessage() and path.is_symlink():
                path.unlink()
                shutil.copyfile(real, path)

    handler = Recover()
    logging.getLogger("resnet_platform.data.prepare").addHandler(handler)
    try:
        assert read_source(str(path), backoff_s=0.01) == real.read_bytes()
    finally:
        logging.getLogger("resnet_platform.data.prepare").removeHandler(handler)
    path.unlink()
    path.symlink_to(EIO_SOURCE)
    with pytest.raises(OSError, match="Input/output error"):
        read_source(str(path), attempts=2, backoff_s=0.01)


def test_images_above_the_pixel_limit_are_rejected_not_warned():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, format="JPEG")
    assert normalize_image(buf.getvalue(), max_pixels=2000) == buf.getvalue()
    with pytest.raises(Exception, match="2,000 pixels, above the limit of 1,999"):
        normalize_image(buf.getvalue(), max_pixels=1999)


def test_reader_drops_images_above_the_run_limit_and_records_them(tmp_path, ray_local):
    tree = write_ilsvrc_tree(tmp_path / "src", train_per_class=4, val_per_class=3)
    out = str(tmp_path / "out")
    prepare_imagenet(PrepareConfig(source=str(tree.root), output=out, shard_size_mb=1))
    sizes = {}
    for s in read_manifest(out).shard_uris(out, "val"):
        for row in pq.read_table(s).to_pylist():
            with Image.open(io.BytesIO(row["image"])) as im:
                sizes[row["key"]] = im.width * im.height
    limit = sorted(sizes.values())[len(sizes) // 2]
    ds = build_split_dataset(
        out,
        "val",
        train=False,
        transform=TransformConfig(image_size=8),
        include_key=True,
        max_image_pixels=limit,
        run=str(tmp_path),
    )
    kept = {k for b in ds.iter_batches(batch_format="numpy") for k in b["key"].tolist()}
    assert kept == {k for k, n in sizes.items() if n <= limit}
    skipped = {f["key"]: f for f in decode_failures(str(tmp_path), "val")}
    assert set(skipped) == {k for k, n in sizes.items() if n > limit}
    assert all("above the limit" in f["reason"] and f["shard"].endswith(".parquet") for f in skipped.values())


@pytest.mark.slow
def test_training_on_a_corrupt_shard_fails_with_one_line_naming_it(tmp_path, ray_local):
    from resnet_platform.train import TrainConfig
    from resnet_platform.train.runner import run_training

    tree = write_ilsvrc_tree(tmp_path / "src", train_per_class=6, val_per_class=2)
    out = str(tmp_path / "out")
    prepare_imagenet(PrepareConfig(source=str(tree.root), output=out, shard_size_mb=0.03))
    path = Path(out) / read_manifest(out).splits["val"].shards[0].path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    config = TrainConfig(
        data=out,
        arch="cifar_resnet20",
        image_size=16,
        epochs=2,
        batch_size=8,
        augmentation="none",
        num_workers=2,
        cpus_per_worker=0.5,
        storage=str(tmp_path / "runs"),
        name="run",
    )
    with pytest.raises(ShardChecksumError) as caught:
        run_training(config)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
