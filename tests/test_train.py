"""Ray Train DDP on the digits: learning, exact validation, checkpoints, resume, recovery, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnet_platform.data.manifest import DatasetNotReadyError
from resnet_platform.storage import StorageError
from resnet_platform.train import FaultInjection, TrainConfig
from resnet_platform.train.checkpoint import load_checkpoint
from resnet_platform.train.main import train_and_track
from resnet_platform.train.runner import RunExistsError, run_training

REPO = Path(__file__).resolve().parents[1]
DIGITS_VAL_IMAGES = 359


def small_config(data: str, storage: Path, **overrides) -> TrainConfig:
    """A CIFAR-sized ResNet on the digits at 16x16 (the 32-pixel JPEGs resized: a quarter of the
    pixels, and the degradation job's size), 2 CPU workers of 0.5 CPU (the rest decodes)."""
    values = dict(
        data=data,
        arch="cifar_resnet20",
        image_size=16,
        epochs=3,
        batch_size=64,
        lr=0.1,
        lr_schedule="cosine",
        augmentation="none",
        num_workers=2,
        cpus_per_worker=0.5,
        storage=str(storage),
        seed=0,
        shuffle_buffer=256,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
def test_ddp_two_workers_learn_digits_with_exact_validation(digits_shards, ray_local, tmp_path):
    # A tracking URI with a password (never contacted: no MLflow run here) must not reach a checkpoint.
    secret_uri = "https://ci-user:pa/ss@word@mlflow.invalid:5000"
    sigint_before = signal.getsignal(signal.SIGINT)
    outcome = run_training(
        small_config(digits_shards, tmp_path, epochs=4, name="learn", tracking_uri=secret_uri)
    )
    # Ray Train's SIGINT handler (it holds the run's controller) is gone with the fit (_compat).
    assert signal.getsignal(signal.SIGINT) is sigint_before
    history = outcome.history
    assert [int(h["epoch"]) for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Stated target: 2 workers, 4 epochs of ResNet-20 on the 8x8 digits reach 85% validation accuracy.
    assert history[-1]["val_top1_error"] < 0.15, history[-1]
    # 359 validation images over 2 workers: uneven shards, every image counted exactly once.
    assert all(int(h["val_images"]) == DIGITS_VAL_IMAGES for h in history)
    assert all(h["images_per_s"] > 0 and h["data_wait_s"] >= 0 for h in history)
    # Checkpoints hold everything a resume needs.
    checkpoints = sorted(Path(outcome.run_path).glob("checkpoint_epoch_*"))
    assert checkpoints, "no checkpoint written"
    state = load_checkpoint(checkpoints[-1])
    assert {"model", "optimizer", "schedule", "scaler", "epoch", "step", "rng", "config", "history"} <= set(
        state
    )
    assert state["epoch"] == 4 and state["step"] == int(history[-1]["step"])
    assert "conv1.weight" in state["model"]  # unwrapped from DDP
    assert (checkpoints[-1] / "model_config.json").exists()
    assert json.loads(state["config"])["tracking_uri"] == "https://ci-user:***@mlflow.invalid:5000"
    for checkpoint in checkpoints:  # every file of every checkpoint, as written by rank 0
        for path in checkpoint.rglob("*"):
            assert not path.is_file() or b"pa/ss" not in path.read_bytes(), path
    assert outcome.best_metrics["val_top1_error"] == min(h["val_top1_error"] for h in history)


@pytest.mark.slow
def test_killed_worker_is_recovered_and_mlflow_has_each_epoch_once(
    digits_shards, ray_local, tmp_path, mlflow_server
):
    from mlflow import MlflowClient

    marker = tmp_path / "killed"
    config = small_config(
        digits_shards,
        tmp_path,
        name="recover",
        epochs=3,
        max_failures=1,
        tracking_uri=mlflow_server.uri,
        experiment="recovery-test",
        fault=FaultInjection(epoch=1, step=3, kind="exit", rank=1, marker=str(marker)),
    )
    outcome = train_and_track(config)
    assert marker.exists(), "the worker was never killed"
    assert [int(h["epoch"]) for h in outcome.history] == [1, 2, 3]

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    epochs = [int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert sorted(epochs) == [1, 2, 3], epochs
    for name in ("val_top1_error", "train_top1_error", "epoch_time_s", "data_wait_s"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3, name
    assert run.data.params["arch"] == "cifar_resnet20"
    assert run.data.tags["arch"] == "cifar_resnet20"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "error_curves.png", "final_metrics.json", "model_summary.md"} <= artifacts


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match="cifar_resnet20"):
        TrainConfig(data="x", arch="resnet51")


def test_folder_without_manifest_is_refused_fast(tmp_path):
    (tmp_path / "half-written").mkdir()
    started = time.monotonic()
    with pytest.raises(DatasetNotReadyError, match="half-written"):
        run_training(TrainConfig(data=str(tmp_path / "half-written"), arch="resnet18"))
    assert time.monotonic() - started < 10


def test_missing_bucket_is_refused_fast_with_the_uri(s3_server):
    started = time.monotonic()
    with pytest.raises((StorageError, DatasetNotReadyError), match="s3://no-such-bucket-xyz/imagenet"):
        run_training(TrainConfig(data="s3://no-such-bucket-xyz/imagenet", arch="resnet18"))
    assert time.monotonic() - started < 10


def test_existing_run_needs_resume_and_resume_needs_a_run(digits_shards, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(RunExistsError, match="--resume"):
        run_training(small_config(digits_shards, tmp_path, name="taken", resume="never"))
    with pytest.raises(RunExistsError, match="no run"):
        run_training(small_config(digits_shards, tmp_path, name="never-ran", resume=True))


@pytest.mark.slow  # job subprocesses or deadlines: tens of seconds
def test_job_help_groups_flags_and_bad_arch_exits_with_the_list():
    job = [sys.executable, str(REPO / "jobs" / "train_imagenet.py")]
    help_text = subprocess.run(job + ["--help"], capture_output=True, text=True, check=True).stdout
    for group in ("data:", "model:", "optimization", "execution:", "checkpoints and recovery:"):
        assert group in help_text
    for flag in (
        "--data",
        "--arch",
        "--epochs",
        "--batch-size",
        "--lr",
        "--lr-schedule",
        "--warmup-epochs",
        "--num-workers",
        "--use-gpu",
        "--cpus-per-worker",
        "--amp",
        "--image-size",
        "--storage",
        "--name",
        "--resume",
        "--max-failures",
        "--checkpoint-every",
        "--seed",
    ):
        assert flag in help_text, flag
    bad = subprocess.run(job + ["--data", "/nowhere", "--arch", "resnet51"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "resnet51" in bad.stderr and "resnet50" in bad.stderr
