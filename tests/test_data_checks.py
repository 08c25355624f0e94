"""Data limits with one clear line: labels past the class count and empty splits refused on the driver
before any worker starts, a split nobody can decode failing the run by name, bad CIFAR archives."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from resnet_platform.data.checks import (
    EmptySplitError,
    LabelOutOfRangeError,
    SkipBudgetExceeded,
    check_skip_budget,
)
from resnet_platform.data.cifar import CifarFormatError, read_cifar10, write_cifar10_archive
from resnet_platform.data.manifest import Manifest, ShardInfo, SplitManifest, write_manifest
from resnet_platform.data.skip_ledger import (
    EXAMPLES,
    close_ledgers,
    ledger_name,
    record_skips,
    skip_summary,
)
from resnet_platform.train import TrainConfig
from resnet_platform.train.runner import run_training

REPO = Path(__file__).resolve().parents[1]


def jpeg(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_split(root: Path, split: str, rows: list[tuple[bytes, int]], per_shard: int = 8) -> SplitManifest:
    """Shards of (image bytes, label) rows, written as prepare writes them, checksums included."""
    (root / split).mkdir(parents=True, exist_ok=True)
    chunks = [rows[i : i + per_shard] for i in range(0, len(rows), per_shard)]
    shards = []
    for i, chunk in enumerate(chunks):
        rel = f"{split}/{split}-{i:05d}-of-{len(chunks):05d}.parquet"
        table = pa.table(
            {
                "image": pa.array([r[0] for r in chunk], pa.binary()),
                "label": pa.array([r[1] for r in chunk], pa.int32()),
                "key": [f"{split}/n{r[1]}/{i}-{j}.JPEG" for j, r in enumerate(chunk)],
            }
        )
        pq.write_table(table, root / rel)
        data = (root / rel).read_bytes()
        shards.append(ShardInfo(rel, len(chunk), len(data), hashlib.sha256(data).hexdigest()))
    return SplitManifest(len(rows), shards)


def small_config(data: Path, storage: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        arch="cifar_resnet20",
        image_size=16,
        epochs=2,
        batch_size=8,
        augmentation="none",
        num_workers=1,
        cpus_per_worker=0.5,
        storage=str(storage),
        name="run",
    )
    values.update(overrides)
    return TrainConfig(**values)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The job failed with exactly one line on stderr and no traceback; returns that line."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_two_class_manifest_with_label_5_is_refused_on_the_driver(tmp_path):
    root = tmp_path / "ds"
    train = write_split(root, "train", [(jpeg(i * 10), i % 2) for i in range(12)] + [(jpeg(200), 5)])
    val = write_split(root, "val", [(jpeg(i * 20), i % 2) for i in range(4)])
    write_manifest(str(root), Manifest(["n0", "n1"], ["zero", "one"], {"train": train, "val": val}))
    started = time.monotonic()
    with pytest.raises(
        LabelOutOfRangeError, match=r"train-00001-of-00002.parquet holds label 5 .* 2 classes"
    ):
        run_training(small_config(root, tmp_path / "runs"))
    assert time.monotonic() - started < 10 and not (tmp_path / "runs" / "run").exists()

    job = [sys.executable, str(REPO / "jobs" / "train_imagenet.py"), "--data", str(root), "--no-mlflow"]
    result = subprocess.run(
        job + ["--storage", str(tmp_path / "runs"), "--arch", "cifar_resnet20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_line_error(result)
    assert "holds label 5" in line and str(root) in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_empty_split_is_refused_on_the_driver(tmp_path):
    root = tmp_path / "ds"
    train = write_split(root, "train", [(jpeg(i), 0) for i in range(4)])
    write_manifest(str(root), Manifest(["n0"], ["n0"], {"train": train, "val": SplitManifest(0, [])}))
    with pytest.raises(EmptySplitError, match=f"{root}: the 'val' split is empty"):
        run_training(small_config(root, tmp_path / "runs"))


def test_skip_budget_names_the_split_and_the_worst_shards(tmp_path, ray_local):
    root = tmp_path / "ds"
    rows = [(jpeg(i), 0) for i in range(30)]
    train = write_split(root, "train", rows, per_shard=10)
    write_manifest(str(root), Manifest(["n0"], ["n0"], {"train": train}))
    run, other_run = str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")
    ledger = ledger_name(run, "train")
    skips = [{"key": "train/n0/2-1.JPEG", "reason": "OSError: broken"}]
    record_skips(ledger, skips * 3)  # one image, three epochs: counted once
    check_skip_budget(str(root), ["train"], 0.05, run=run)  # 1 of 30 is under 5%
    skips += [{"key": f"train/n0/2-{j}.JPEG", "reason": "OSError: broken"} for j in (2, 3)]
    skips += [{"key": "train/n0/0-4.JPEG", "reason": "OSError: broken"}]
    record_skips(ledger, skips)
    with pytest.raises(SkipBudgetExceeded) as caught:
        check_skip_budget(str(root), ["train"], 0.05, run=run)
    message = str(caught.value)
    assert "4 of 30 images of the 'train' split" in message and "\n" not in message
    assert message.index("train-00002-of-00003.parquet (3)") < message.index(
        "train-00000-of-00003.parquet (1)"
    )
    # Keyed by run: another run on the same data starts from zero; a closed ledger is gone.
    check_skip_budget(str(root), ["train"], 0.05, run=other_run)
    assert close_ledgers(run, ["train"]) == {"train": 4} and skip_summary(ledger).count == 0


def test_skip_summary_is_bounded_and_keeps_the_shard_counts(tmp_path, ray_local):
    ledger = ledger_name(str(tmp_path), "train")
    items = [{"key": f"k{i}", "reason": "bad", "shard": f"s{i % 3}"} for i in range(60)]
    record_skips(ledger, items + items)
    record_skips(ledger, [{"key": "decoded-late", "reason": "OSError"}])
    summary = skip_summary(ledger)
    assert summary.count == 61 and summary.unlocated == 1 and len(summary.examples) == EXAMPLES
    assert summary.per_shard == {"s0": 20, "s1": 20, "s2": 20}
    close_ledgers(str(tmp_path), ["train"])


@pytest.mark.slow
def test_split_of_only_undecodable_images_fails_the_run_naming_it(tmp_path, ray_local):
    root = tmp_path / "ds"
    garbage = [(b"\xff\xd8\xff\xe0 not a JPEG at all " + bytes([i]), i % 2) for i in range(16)]
    train = write_split(root, "train", garbage)
    val = write_split(root, "val", [(jpeg(i * 40), i % 2) for i in range(4)])
    write_manifest(str(root), Manifest(["n0", "n1"], ["zero", "one"], {"train": train, "val": val}))
    with pytest.raises(SkipBudgetExceeded) as caught:
        run_training(small_config(root, tmp_path / "runs", epochs=3, num_workers=2))
    message = str(caught.value)
    assert "16 of 16 images of the 'train' split" in message and "train-00000-of-00002.parquet" in message
    assert "--max-skipped-fraction" in message
    # It stopped after the first epoch: no checkpoint of a run that trained on nothing.
    assert not list((tmp_path / "runs" / "run").glob("checkpoint_epoch_*"))


# ---------------------------------------------------------------------------------------------- CIFAR


def _cifar_job(data: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "train_cifar.py"), "--data", str(data), "--no-mlflow"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=data.parent)


def _drop_member(archive: Path, out: Path, member: str) -> None:
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for m in src.getmembers():
            if not m.name.endswith("/" + member):
                dst.addfile(m, src.extractfile(m))


@pytest.mark.slow  # job subprocesses or deadlines: tens of seconds
def test_cifar_files_that_are_not_a_whole_archive_get_one_line_each(tmp_path):
    good = Path(
        write_cifar10_archive(str(tmp_path / "good" / "cifar-10-python.tar.gz"), per_batch=4, test_size=4)
    )
    notes = tmp_path / "notes.tar.gz"
    notes.write_text("these are my notes, not an archive\n" * 20)
    empty = tmp_path / "empty.tar.gz"
    empty.write_bytes(b"")
    no_files = tmp_path / "no-files.tar.gz"
    with tarfile.open(no_files, "w:gz"):
        pass
    missing = tmp_path / "missing-batch.tar.gz"
    _drop_member(good, missing, "data_batch_3")

    for path, expected in (
        (notes, "not a CIFAR-10 archive"),
        (empty, "empty file"),
        (no_files, "empty archive"),
        (missing, "no data_batch_3 in the archive"),
    ):
        with pytest.raises(CifarFormatError, match=expected):
            read_cifar10(str(path))
    for path, expected in (
        (notes, "not a CIFAR-10 archive"),
        (empty, "empty file"),
        (missing, "no data_batch_3"),
    ):
        line = one_line_error(_cifar_job(path))
        assert str(path) in line and expected in line, line
    # The paper's grid checks the archive on the driver too, before any trial reads it.
    cmd = [sys.executable, str(REPO / "jobs" / "reproduce_paper.py"), "--data", str(missing), "--no-mlflow"]
    line = one_line_error(subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path))
    assert str(missing) in line and "no data_batch_3" in line, line


def test_cifar_labels_outside_the_classes_are_refused(tmp_path):
    from fixtures.datasets import cifar_archive_with_label

    good = Path(write_cifar10_archive(str(tmp_path / "cifar-10-python.tar.gz"), per_batch=4, test_size=4))
    bad = cifar_archive_with_label(good, tmp_path / "bad-labels.tar.gz", 12)
    with pytest.raises(LabelOutOfRangeError, match=f"{bad}: training batches: label 12 outside"):
        read_cifar10(str(bad))


def test_limit_flags_reach_the_config_of_training_and_sweeps():
    from resnet_platform.train.cli import build_parser as train_parser
    from resnet_platform.train.cli import config_from_args as train_config
    from resnet_platform.tune.cli import build_parser as sweep_parser
    from resnet_platform.tune.cli import config_from_args as sweep_config

    defaults = train_config(train_parser().parse_args(["--data", "d"]))
    assert (defaults.max_image_pixels, defaults.max_skipped_fraction) == (Image.MAX_IMAGE_PIXELS, 0.001)
    flags = ["--data", "d", "--max-image-pixels", "1000000", "--max-skipped-fraction", "0.05"]
    config = train_config(train_parser().parse_args(flags))
    assert (config.max_image_pixels, config.max_skipped_fraction) == (1_000_000, 0.05)
    sweep = sweep_config(sweep_parser().parse_args(flags + ["--archs", "resnet18", "--lrs", "0.1"]))
    assert (sweep.base.max_image_pixels, sweep.base.max_skipped_fraction) == (1_000_000, 0.05)
    with pytest.raises(ValueError, match="between 0 and 1"):
        TrainConfig(data="d", max_skipped_fraction=2)
