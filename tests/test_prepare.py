"""ILSVRC folders -> Parquet shards + manifest, locally and through a real S3-compatible server."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures.datasets import ILSVRC_NAMES, ILSVRC_WNIDS, write_ilsvrc_tree
from fixtures.ports import wait_until
from PIL import Image

from resnet_platform.data.manifest import DatasetNotReadyError, read_manifest
from resnet_platform.data.prepare import PrepareConfig, RejectedImage, normalize_image, prepare_imagenet
from resnet_platform.storage import StorageError, join, resolve

REPO = Path(__file__).resolve().parents[1]


def read_rows(uri: str) -> dict[str, list[dict]]:
    """Every row of every shard the manifest lists, checked against its size and checksum."""
    import hashlib

    manifest = read_manifest(uri)
    out = {}
    for split, sm in manifest.splits.items():
        rows = []
        for shard in sm.shards:
            fs, path = resolve(join(uri, shard.path))
            with fs.open_input_stream(path) as f:
                data = f.read()
            assert len(data) == shard.bytes and hashlib.sha256(data).hexdigest() == shard.sha256
            table = pq.read_table(io.BytesIO(data))
            assert table.schema.field("label").type == "int32" and len(table) == shard.rows
            rows += table.to_pylist()
        assert len(rows) == sm.num_rows
        out[split] = rows
    return out


def check_round_trip(tree, uri: str) -> None:
    manifest = read_manifest(uri)
    assert manifest.classes == ILSVRC_WNIDS and manifest.class_names == ILSVRC_NAMES
    rows = read_rows(uri)
    for split, expected in tree.labels.items():
        keys = [r["key"] for r in rows[split]]
        assert sorted(keys) == sorted(expected), split  # every image exactly once
        for r in rows[split]:
            assert manifest.classes[r["label"]] == expected[r["key"]]
    for r in rows["train"]:
        if r["key"] in tree.special:  # CMYK, grayscale, PNG-as-.JPEG: now RGB JPEG
            im = Image.open(io.BytesIO(r["image"]))
            assert (im.format, im.mode) == ("JPEG", "RGB"), tree.special[r["key"]]
    assert [r["key"] for r in manifest.rejected] == tree.bad
    assert (
        "Truncated" in manifest.rejected[0]["reason"] or "cannot identify" in manifest.rejected[0]["reason"]
    )


@pytest.mark.parametrize("val_layout", ["folders", "kaggle", "devkit"])
def test_round_trip_through_s3_for_each_val_layout(val_layout, tmp_path, s3_server, ray_local):
    tree = write_ilsvrc_tree(tmp_path / "src", val_layout)
    uri = f"s3://{s3_server.new_bucket()}/imagenet"
    summary = prepare_imagenet(PrepareConfig(source=str(tree.root), output=uri, shard_size_mb=0.05))
    assert {"folders": "val/<wnid>/", "kaggle": "Kaggle", "devkit": "devkit"}[val_layout] in summary.layouts[
        "val"
    ]
    assert summary.images == {s: len(v) for s, v in tree.labels.items()}
    assert summary.classes == 5 and summary.shards > 2 and len(summary.rejected) == 1
    assert "1 rejected" in str(summary)
    check_round_trip(tree, uri)


def test_resume_after_interrupted_prepare_rewrites_nothing_complete(tmp_path, ray_local, ilsvrc_tree):
    out = tmp_path / "out"
    config = PrepareConfig(source=str(ilsvrc_tree.root), output=str(out), shard_size_mb=0.03)
    seen = []

    def interrupt(shard):
        seen.append(shard)
        if len(seen) == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        prepare_imagenet(config, on_shard=interrupt)
    with pytest.raises(DatasetNotReadyError, match="no manifest.json: incomplete or not prepared"):
        read_manifest(str(out))
    done = {p.stem: json.loads(p.read_text()) for p in (out / "_progress").glob("*.json")}
    assert len(done) >= 3
    for r in done.values():  # back-dated: a rewrite, however soon, gives a shard a new mtime
        os.utime(out / r["shard"]["path"], ns=(10**18, 10**18))
    mtimes = {n: os.stat(out / r["shard"]["path"]).st_mtime_ns for n, r in done.items()}
    summary = prepare_imagenet(config)
    assert summary.shards_reused == len(done) and summary.shards_written == summary.shards - len(done)
    assert {n: os.stat(out / r["shard"]["path"]).st_mtime_ns for n, r in done.items()} == mtimes
    check_round_trip(ilsvrc_tree, str(out))
    again = prepare_imagenet(config)
    assert again.shards_written == 0 and again.shards_reused == summary.shards


def test_resume_on_s3_keeps_complete_objects(tmp_path, s3_server, ray_local, ilsvrc_tree):
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/imagenet"
    config = PrepareConfig(source=str(ilsvrc_tree.root), output=uri, shard_size_mb=0.03, splits=("train",))

    def interrupt(shard, seen=[]):  # noqa: B006
        seen.append(shard)
        if len(seen) == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_imagenet(config, on_shard=interrupt)

    def objects():
        listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="imagenet/")
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing.get("Contents", [])}

    listed = objects()
    complete = [k for k in listed if k.startswith("imagenet/_progress/")]
    before = {k: listed[k] for k in listed if k.endswith(".parquet")}
    before = {k: v for k, v in before.items() if f"imagenet/_progress/{Path(k).stem}.json" in complete}
    assert len(before) >= 2 and "imagenet/manifest.json" not in listed
    time.sleep(1.1)  # LastModified has one-second resolution
    summary = prepare_imagenet(config)
    after = objects()
    assert summary.shards_reused == len(before)
    assert {k: after[k] for k in before} == before
    assert "imagenet/manifest.json" in after
    assert len(read_rows(uri)["train"]) == len(ilsvrc_tree.labels["train"])


def test_reencode_to_max_side(tmp_path, ray_local, ilsvrc_tree):
    out = str(tmp_path / "small")
    summary = prepare_imagenet(
        PrepareConfig(source=str(ilsvrc_tree.root), output=out, max_side=32, quality=80, splits=("val",))
    )
    assert summary.shards == 1 and read_manifest(out).encoding == {
        "max_side": 32,
        "quality": 80,
        "max_image_pixels": Image.MAX_IMAGE_PIXELS,  # every image in the shards is within it
    }
    for r in read_rows(out)["val"]:
        im = Image.open(io.BytesIO(r["image"]))
        assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 32


def test_normalize_image_modes_and_rejects():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    assert normalize_image(buf.getvalue()) == buf.getvalue()  # original bytes kept
    for mode, fmt in [("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "GIF")]:
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
        im = Image.open(io.BytesIO(normalize_image(buf.getvalue())))
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (60, 40)), (mode, fmt)
    with pytest.raises(RejectedImage):
        normalize_image(b"GIF89a nonsense")
    good = io.BytesIO()
    Image.fromarray(rgb).save(good, format="JPEG")
    with pytest.raises(RejectedImage):
        normalize_image(good.getvalue()[:200])  # truncated


def test_prepare_to_missing_bucket_fails_fast(s3_server, ilsvrc_tree):
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="s3://missing-bucket-xyz/imagenet"):
        prepare_imagenet(
            PrepareConfig(source=str(ilsvrc_tree.root), output="s3://missing-bucket-xyz/imagenet")
        )
    assert time.monotonic() - t0 < 5


def test_flat_val_without_labels_is_a_clear_error(tmp_path, ray_local):
    tree = write_ilsvrc_tree(tmp_path / "src", "kaggle", train_per_class=1, val_per_class=1)
    (tree.root / "LOC_val_solution.csv").unlink()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        prepare_imagenet(PrepareConfig(source=str(tree.root), output=str(tmp_path / "out")))


def test_job_cli_flags():
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        from prepare_imagenet import parse_args
    finally:
        sys.path.pop(0)
    c = parse_args(["--source", "/d", "--output", "s3://b/p", "--max-side", "256", "--splits", "val"])
    assert (c.source, c.output, c.max_side, c.quality, c.splits, c.shard_size_mb) == (
        "/d",
        "s3://b/p",
        256,
        None,
        ("val",),
        128.0,
    )


@pytest.mark.slow
def test_kill_the_job_then_rerun_resumes(tmp_path):
    """The real thing: SIGKILL the job process mid-run, rerun the same command, no complete shard rewritten."""
    tree = write_ilsvrc_tree(tmp_path / "src", "devkit", train_per_class=60)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "jobs" / "prepare_imagenet.py"), "--source", str(tree.root)]
    cmd += ["--output", str(out), "--shard-size-mb", "0.01", "--num-cpus", "1"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(lambda: len(list((out / "_progress").glob("*.json"))) >= 3, 120, "3 shards", 0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = {p.stem: json.loads(p.read_text()) for p in (out / "_progress").glob("*.json")}
    assert len(done) >= 3 and not (out / "manifest.json").exists()
    mtimes = {n: os.stat(out / r["shard"]["path"]).st_mtime_ns for n, r in done.items()}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # Ray's task processes can outlive the killed driver for a moment and finish a shard or two more.
    reused = int(re.search(r"(\d+) already complete", result.stdout).group(1))
    assert reused >= len(done), result.stdout
    assert {n: os.stat(out / r["shard"]["path"]).st_mtime_ns for n, r in done.items()} == mtimes
    check_round_trip(tree, str(out))
