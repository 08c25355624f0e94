"""The GPU decode path (``--decode gpu``), run with device ``cpu``: the same crops and pixels as the
CPU path, skips counted, and a real training run through Ray Train that decodes on the worker."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import small_config

from resnet_platform.data.device_decode import DeviceDecoder
from resnet_platform.data.pipeline import (
    TransformConfig,
    build_split_dataset,
    decode_failures,
    transform_image,
)
from resnet_platform.data.placement import DataPlacement, PlacementError
from resnet_platform.data.transforms import Crop, crop_resize, decode_rgb, draw_crop
from resnet_platform.train import TrainConfig
from resnet_platform.train.runner import run_training

REPO = Path(__file__).resolve().parents[1]


def photo_like(seed: int, w: int, h: int) -> bytes:
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[0:h, 0:w]
    img = np.stack([(gx * (c + 1) + gy * (3 - c)) % 256 for c in range(3)], -1).astype(np.float32)
    img += rng.normal(0, 20, img.shape)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


IMAGES = [photo_like(i, w, h) for i, (w, h) in enumerate([(500, 375), (375, 500), (320, 320), (640, 200)])]


@pytest.mark.parametrize(
    "augmentation,train", [("rrc", True), ("scale", True), ("none", True), ("rrc", False)]
)
def test_device_decoder_gives_the_cpu_paths_pixels_for_the_same_draws(augmentation, train):
    t = TransformConfig(image_size=96, augmentation=augmentation)
    cpu_rng, dev_rng = np.random.default_rng(11), np.random.default_rng(11)
    expected = np.stack([transform_image(d, t, train, cpu_rng) for d in IMAGES])
    decoder = DeviceDecoder(t, train=train, device="cpu", rng=dev_rng)
    out = decoder({"image": np.array(IMAGES, dtype=object), "label": np.arange(len(IMAGES))})
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (len(IMAGES), 96, 96, 3)
    assert out["label"].tolist() == list(range(len(IMAGES)))
    # Same box and flip; nvImageCodec's CPU backend decodes the window to torchvision's pixels, and
    # the batched resize is the CPU path's within a level (its rounding of the weights differs).
    diff = np.abs(out["image"].numpy().astype(np.int16) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_crop_resize_matches_pil_within_a_small_tolerance():
    """The shared kernel (bilinear, antialiased) agrees with PIL's resize of the same box."""
    data = IMAGES[0]
    image = decode_rgb(data)
    crop = Crop((40, 30, 340, 330), flip=True)
    ours = crop_resize(image, crop, 128).permute(1, 2, 0).numpy().astype(np.int16)
    with Image.open(io.BytesIO(data)) as im:
        pil = np.asarray(im.convert("RGB").resize((128, 128), Image.BILINEAR, box=crop.box))[:, ::-1]
    assert np.abs(ours - pil.astype(np.int16)).mean() < 2.0


def test_random_crops_follow_torchvisions_distribution():
    """Box areas and aspect ratios have the distribution of torchvision's RandomResizedCrop; flips
    are half the draws."""
    from torchvision.transforms import RandomResizedCrop

    rng = np.random.default_rng(0)
    n, w, h = 3000, 500, 375
    crops = [
        draw_crop(rng, w, h, augmentation="rrc", train=True, image_size=224, resize_size=256)
        for _ in range(n)
    ]
    ours = np.array(
        [
            ((c.box[2] - c.box[0]) * (c.box[3] - c.box[1]), (c.box[2] - c.box[0]) / (c.box[3] - c.box[1]))
            for c in crops
        ]
    )
    torch.manual_seed(0)
    image = torch.zeros(3, h, w)
    ref = []
    for _ in range(n):
        _, _, ch, cw = RandomResizedCrop.get_params(image, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        ref.append((cw * ch, cw / ch))
    ref = np.array(ref)
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(ours[:, 0], q) - np.quantile(ref[:, 0], q)) < 0.04 * w * h, q
        assert abs(np.quantile(ours[:, 1], q) - np.quantile(ref[:, 1], q)) < 0.05, q
    assert 0.45 < np.mean([c.flip for c in crops]) < 0.55


def test_undecodable_rows_are_skipped_and_counted():
    t = TransformConfig(image_size=32)
    decoder = DeviceDecoder(t, train=True, device="cpu")
    batch = {
        "image": np.array([IMAGES[0], b"not a jpeg", IMAGES[1]], dtype=object),
        "label": np.array([3, 4, 5]),
    }
    out = decoder(batch)
    assert out["label"].tolist() == [3, 5] and out["image"].shape[0] == 2
    assert decoder.skipped == 1


def test_device_decoder_refuses_cpu_only_transforms():
    with pytest.raises(ValueError, match="pad-crop"):
        DeviceDecoder(TransformConfig(augmentation="pad-crop"), train=True, device="cpu")
    with pytest.raises(ValueError, match="--decode gpu"):
        TrainConfig(data="x", decode="gpu", ten_crop=True)


def test_gpu_decode_stream_carries_bytes_and_labels_only(digits_shards, ray_local):
    ds = build_split_dataset(
        digits_shards, "val", train=False, transform=TransformConfig(image_size=32), decode="gpu"
    )
    batch = next(iter(ds.iter_batches(batch_size=16, batch_format="numpy")))
    assert set(batch) == {"image", "label", "key"}  # keys name the images a worker cannot decode
    assert isinstance(batch["image"][0], bytes) and batch["image"][0][:2] == b"\xff\xd8"


def test_placement_selectors_and_task_arguments():
    p = DataPlacement(node_label="role=data", node_resource="data_cpu")
    assert p.data_selector == {"role": "data"} and p.worker_selector == {"role": "!data"}
    assert p.task_args() == {"resources": {"data_cpu": 1}, "label_selector": {"role": "data"}}
    assert DataPlacement().task_args() == {} and DataPlacement().worker_selector is None
    for bad in ("role", "=data", "role=", "ro le=data"):
        with pytest.raises(PlacementError, match="KEY=VALUE"):
            DataPlacement(node_label=bad)


@pytest.mark.slow
def test_bad_data_node_label_is_one_line_from_the_job():
    job = [
        sys.executable,
        str(REPO / "jobs" / "train_imagenet.py"),
        "--data",
        "/nowhere",
        "--data-node-label",
        "data",
    ]
    bad = subprocess.run(job, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--data-node-label 'data': expected KEY=VALUE" in bad.stderr


@pytest.mark.slow
def test_training_with_gpu_decode_path_on_cpu_learns(digits_shards, ray_local, tmp_path):
    """The platform's own run with --decode gpu: Ray Data ships bytes, each worker decodes and crops."""
    config = small_config(digits_shards, tmp_path, epochs=2, name="gpu-decode", decode="gpu")
    outcome = run_training(config)
    history = outcome.history
    assert [int(h["epoch"]) for h in history] == [1, 2]
    assert all(int(h["val_images"]) == 359 for h in history)  # every val image decoded on the worker
    assert history[-1]["val_top1_error"] < 0.5, history[-1]
    assert decode_failures(digits_shards, "train") == []


def _raw_batches(n: int, bad_at: int | None = None):
    for b in range(n):
        images = [IMAGES[(b + i) % len(IMAGES)] for i in range(3)]
        if b == bad_at:
            images[1] = b"not a jpeg"
        yield {"image": np.array(images, dtype=object), "label": np.arange(3) + 10 * b}


@pytest.mark.parametrize("ahead", [1, 3])
def test_decoding_ahead_on_threads_gives_the_in_thread_batches_in_order(ahead):
    """``batches`` decodes on background threads: the same pixels, labels and order as decoding in
    the calling thread (each batch draws from its own generator, spawned in stream order), with the
    undecodable row skipped and counted."""
    t = TransformConfig(image_size=48, augmentation="rrc")
    inline = DeviceDecoder(t, train=True, device="cpu", rng=np.random.default_rng(5))
    threaded = DeviceDecoder(t, train=True, device="cpu", rng=np.random.default_rng(5))
    expected = list(inline.batches(_raw_batches(6, bad_at=2), ahead=0))
    got = list(threaded.batches(_raw_batches(6, bad_at=2), ahead=ahead))
    assert [b["label"].tolist() for b in got] == [b["label"].tolist() for b in expected]
    assert got[2]["label"].tolist() == [20, 22]
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a["image"], b["image"])
    assert threaded.skipped == inline.skipped == 1


def test_a_consumer_that_stops_early_leaves_no_decode_thread_behind():
    import threading

    decoder = DeviceDecoder(TransformConfig(image_size=32), train=True, device="cpu")
    stream = decoder.batches(_raw_batches(50), ahead=2)
    next(stream)
    stream.close()
    assert not [th for th in threading.enumerate() if th.name.startswith("device-decode")]
