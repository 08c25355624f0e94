"""The Ray Data streaming pipeline: batch shapes and ranges, shuffling, splits, S3, bad rows."""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from resnet_platform.data.manifest import (
    DatasetNotReadyError,
    Manifest,
    ShardInfo,
    SplitManifest,
    read_manifest,
    write_manifest,
)
from resnet_platform.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    build_split_dataset,
    decode_failures,
    label_names,
    transform_image,
)
from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet


def keys_and_labels(ds) -> list[tuple[str, int]]:
    out = []
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        out += list(zip(batch["key"].tolist(), batch["label"].tolist(), strict=True))
    return out


def wnid_of(key: str) -> str:
    return key.split("/")[1]


def test_train_batches_shapes_dtypes_ranges(digits_shards, ray_local):
    import torch

    ds = build_split_dataset(
        digits_shards, "train", train=True, transform=TransformConfig(image_size=24), seed=1
    )
    it = ds.iterator().iter_torch_batches(batch_size=64, local_shuffle_buffer_size=256, local_shuffle_seed=0)
    for i, batch in enumerate(it):
        x, y = batch["image"], batch["label"]
        assert x.dtype == torch.uint8 and x.shape[1:] == (24, 24, 3) and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) < 10 and int(x.max()) > int(x.min())
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        z = ((x.permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        assert (
            z.is_contiguous(memory_format=torch.channels_last)
            and -2.2 < float(z.min()) <= float(z.max()) < 2.7
        )
        if i == 2:
            break
    assert x.shape[0] == 64


@pytest.mark.slow
def test_val_is_deterministic_complete_and_correctly_labelled(digits_shards, digits_folder, ray_local):
    manifest = read_manifest(digits_shards)
    assert label_names(manifest) == [f"digit {d}" for d in range(10)]
    t = TransformConfig(image_size=16, augmentation="none")
    ds = build_split_dataset(digits_shards, "val", train=False, transform=t, include_key=True)
    first, second = keys_and_labels(ds), keys_and_labels(ds)
    assert first == second and len(first) == digits_folder.val_images == manifest.splits["val"].num_rows
    assert len({k for k, _ in first}) == len(first)
    assert all(manifest.classes[label] == wnid_of(k) for k, label in first)


def test_train_order_changes_every_epoch(digits_shards, ray_local):
    ds = build_split_dataset(
        digits_shards, "train", train=True, transform=TransformConfig(image_size=8), include_key=True
    )
    epoch1, epoch2 = [k for k, _ in keys_and_labels(ds)], [k for k, _ in keys_and_labels(ds)]
    assert sorted(epoch1) == sorted(epoch2) and len(set(epoch1)) == len(epoch1)
    assert epoch1 != epoch2


@pytest.mark.slow
def test_two_consumers_see_disjoint_parts_covering_the_split(digits_shards, ray_local):
    ds = build_split_dataset(
        digits_shards, "train", train=True, transform=TransformConfig(image_size=8), include_key=True
    )
    iterators = ds.streaming_split(2, equal=False)
    seen: list[list[str]] = [[], []]

    def consume(i):
        for batch in iterators[i].iter_batches(batch_size=32, batch_format="numpy"):
            seen[i] += batch["key"].tolist()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    a, b = set(seen[0]), set(seen[1])
    assert a and b and not (a & b)
    assert len(seen[0]) + len(seen[1]) == read_manifest(digits_shards).splits["train"].num_rows == len(a | b)


def test_ten_crop_and_scale_augmentation_shapes(digits_shards, ray_local):
    t = TransformConfig(image_size=16, ten_crop=True)
    batch = build_split_dataset(digits_shards, "val", train=False, transform=t).take_batch(8)
    assert batch["image"].shape == (8, 10, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert np.array_equal(batch["image"][:, 5], batch["image"][:, 0, :, ::-1])  # flipped copies
    t = TransformConfig(image_size=16, augmentation="scale")
    batch = build_split_dataset(digits_shards, "train", train=True, transform=t).take_batch(8)
    assert batch["image"].shape == (8, 16, 16, 3) and batch["label"].dtype == np.int64


def test_transforms_on_a_large_jpeg():
    rng = np.random.default_rng(0)
    gy, gx = np.mgrid[0:600, 0:800]
    arr = np.stack([gx % 256, gy % 256, (gx + gy) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    t = TransformConfig()
    a = transform_image(data, t, False, rng)
    assert a.shape == (224, 224, 3) and np.array_equal(a, transform_image(data, t, False, rng))
    # the eval crop (DCT-scaled decode) matches resize 256 + center crop 224 on the full decode
    full = Image.fromarray(arr).resize((341, 256), Image.BILINEAR)
    ref = np.asarray(full)[16:240, 58:282].astype(int)
    assert np.abs(a.astype(int) - ref).mean() < 8
    for aug in ("rrc", "scale", "none"):
        out = transform_image(data, TransformConfig(augmentation=aug), True, rng)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        TransformConfig(augmentation="autoaugment")


def test_stream_from_s3(s3_server, ray_local, ilsvrc_tree):
    uri = f"s3://{s3_server.new_bucket()}/imagenet"
    prepare_imagenet(PrepareConfig(source=str(ilsvrc_tree.root), output=uri, shard_size_mb=0.05))
    manifest = read_manifest(uri)
    for split in ("train", "val"):
        ds = build_split_dataset(
            uri, split, train=split == "train", transform=TransformConfig(image_size=32), include_key=True
        )
        rows = keys_and_labels(ds)
        assert sorted(k for k, _ in rows) == sorted(ilsvrc_tree.labels[split])
        assert all(manifest.classes[label] == ilsvrc_tree.labels[split][k] for k, label in rows)


def test_undecodable_rows_are_skipped_counted_and_reported(tmp_path, ray_local):
    root = tmp_path / "ds"
    (root / "val").mkdir(parents=True)
    images, keys = [], []
    for i in range(20):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 30, 3), i * 10, np.uint8)).save(buf, format="JPEG")
        images.append(buf.getvalue())
        keys.append(f"val/n0/{i}.JPEG")
    images[7], keys[7] = b"corrupt bytes", "val/n0/corrupt.JPEG"
    images[11], keys[11] = images[11][:100], "val/n0/truncated.JPEG"
    table = pa.table(
        {"image": pa.array(images, pa.binary()), "label": pa.array([0] * 20, pa.int32()), "key": keys}
    )
    pq.write_table(table, root / "val" / "val-00000-of-00001.parquet")
    data = (root / "val" / "val-00000-of-00001.parquet").read_bytes()
    shard = ShardInfo("val/val-00000-of-00001.parquet", 20, len(data), hashlib.sha256(data).hexdigest())
    write_manifest(str(root), Manifest(["n0"], ["n0"], {"val": SplitManifest(20, [shard])}))
    t = TransformConfig(image_size=8)
    ds = build_split_dataset(str(root), "val", train=False, transform=t, include_key=True, run=str(tmp_path))
    rows = keys_and_labels(ds)
    assert len(rows) == 18 and "val/n0/corrupt.JPEG" not in {k for k, _ in rows}
    failures = decode_failures(str(tmp_path), "val")
    assert sorted(f["key"] for f in failures) == ["val/n0/corrupt.JPEG", "val/n0/truncated.JPEG"]
    assert all(f["reason"] for f in failures)


def test_reading_without_manifest_is_refused(tmp_path, s3_server):
    (tmp_path / "train").mkdir()
    with pytest.raises(
        DatasetNotReadyError, match=f"{tmp_path}.*no manifest.json: incomplete or not prepared"
    ):
        build_split_dataset(str(tmp_path), "train", train=True, transform=TransformConfig())
    uri = f"s3://{s3_server.new_bucket()}/half-done"
    with pytest.raises(DatasetNotReadyError, match="run jobs/prepare_imagenet.py"):
        read_manifest(uri)
