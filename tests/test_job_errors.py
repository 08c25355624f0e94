"""Every job ends a user's mistake with one line naming what to fix and a non-zero exit, before Ray
starts (``resnet_platform/jobrunner.py``): each job script runs as a user runs it, as a subprocess.

Each case costs the job's imports (a few seconds): the settings and inputs are checked before any
Ray, Tune or MLflow run starts, so no case waits for a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def run_job(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(REPO / "platform"), **(env or {}))
    environ.pop("RAY_ADDRESS", None)  # a job that reached Ray would start its own: the test would see it
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
        cwd=REPO,
    )


def assert_one_line(result: subprocess.CompletedProcess, script: str, *, code: int, says: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{script}: error: ") and says in lines[0], lines[0]


@pytest.mark.parametrize(
    ("script", "args", "code", "says"),
    [
        (
            "train_imagenet.py",
            ["--data", "unused", "--batch-size", "0"],
            2,
            "--batch-size must be at least 1",
        ),
        ("train_imagenet.py", ["--data", "unused", "--lr", "-0.1"], 2, "--lr must be more than 0"),
        (
            "sweep_resnet.py",
            ["--data", "unused", "--archs", "cifar_resnet20", "--lrs", "0.1", "--epochs", "0"],
            2,
            "--epochs",
        ),
        (
            "batch_predict.py",
            ["--model", "m", "--input", "i", "--output", "o", "--batch-size", "0"],
            2,
            "--batch-size",
        ),
        (
            "prepare_imagenet.py",
            ["--source", "s", "--output", "o", "--shard-size-mb", "0"],
            2,
            "--shard-size-mb",
        ),
        ("model_summary.py", ["--archs", "resnet51"], 2, "unknown architecture 'resnet51'"),
        # The paper grids build every net's training config up front: what a trial would refuse in
        # its Ray worker (a plain ValueError, then "trials failed" and a traceback) stops here.
        ("degradation.py", ["--lr", "0"], 2, "--lr must be more than 0"),
        ("degradation.py", ["--batch-size", "100", "--num-workers", "3"], 2, "does not divide evenly"),
        ("reproduce_paper.py", ["--data", "unused", "--families", "resnet,wide"], 2, "--families"),
        ("reproduce_paper.py", ["--data", "unused", "--epochs", "0"], 2, "--epochs must be at least 1"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".py") else None,
)
def test_a_setting_out_of_range_stops_before_anything_runs(script, args, code, says):
    assert_one_line(run_job(script, *args), script, code=code, says=says)


def test_missing_source_folder(tmp_path):
    result = run_job("prepare_imagenet.py", "--source", "/nonexistent", "--output", str(tmp_path / "out"))
    assert_one_line(result, "prepare_imagenet.py", code=1, says="/nonexistent: no train/ folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # imports torch and Ray Train (the training path) before it reads the data set
def test_data_that_was_never_prepared(tmp_path):
    never = tmp_path / "never-prepared"
    never.mkdir()
    result = run_job("train_imagenet.py", "--data", str(never), "--storage", str(tmp_path / "runs"))
    assert_one_line(result, "train_imagenet.py", code=1, says="run jobs/prepare_imagenet.py")


@pytest.mark.slow  # imports torch and Ray Train, then waits for the 2 s storage deadline
def test_unreachable_storage(tmp_path):
    """An S3 endpoint that does not answer: one line within the storage deadline."""
    dead = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "RESNET_PLATFORM_S3_TIMEOUT_S": "2",
        "RESNET_PLATFORM_S3_MAX_ATTEMPTS": "1",
    }
    result = run_job("train_imagenet.py", "--data", "s3://bucket/imagenet", env=dead)
    assert_one_line(result, "train_imagenet.py", code=1, says="s3://bucket/imagenet")


@pytest.mark.slow  # the session's MLflow server
@pytest.mark.parametrize("script", ["predict.py", "batch_predict.py", "serve_model.py"])
def test_unknown_registered_model_or_alias(script, mlflow_server, tmp_path):
    args = {
        "predict.py": ["image.jpg"],
        "batch_predict.py": ["--input", str(tmp_path), "--output", str(tmp_path / "out")],
        "serve_model.py": [],
    }[script]
    result = run_job(script, "--model", "models:/nope@champion", "--tracking-uri", mlflow_server.uri, *args)
    assert_one_line(result, script, code=1, says="models:/nope@champion")


@pytest.mark.slow  # three job subprocesses: about 30 s on 2 busy cores
def test_paper_grids_refuse_what_their_trials_would_fail_on_before_ray(tmp_path):
    """Settings that hold only against the data or the file system, found by the job's body before
    Ray starts (``paper/grid.py``): prepared data with --train-rows, a CIFAR archive with a label
    outside its classes, an --output that is a file."""
    from fixtures.datasets import cifar_archive_with_label

    from resnet_platform.data.cifar import write_cifar10_archive

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text("{}")
    result = run_job("degradation.py", "--data", str(prepared), "--train-rows", "8", "--no-mlflow")
    assert_one_line(result, "degradation.py", code=2, says="--train-rows applies to the digits")

    archive = write_cifar10_archive(str(tmp_path / "cifar-10-python.tar.gz"), per_batch=2, test_size=2)
    # A label outside the classes: each trial's read would refuse it (a traceback from Tune per trial).
    relabelled = cifar_archive_with_label(archive, tmp_path / "label-12.tar.gz", 12)
    result = run_job("degradation.py", "--data", str(relabelled), "--no-mlflow")
    assert_one_line(result, "degradation.py", code=1, says="label 12 outside [0, 10)")

    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    result = run_job("reproduce_paper.py", "--data", archive, "--output", str(taken), "--no-mlflow")
    assert_one_line(result, "reproduce_paper.py", code=1, says=f"--output {taken}: cannot make the folder")


@pytest.mark.slow  # the job's imports and MLflow's bounded retries: about 10 s
@pytest.mark.parametrize("script", ["degradation.py", "reproduce_paper.py"])
def test_paper_grids_refuse_a_tracking_server_that_does_not_answer(script):
    """The grid's store and experiment are made on the driver before Ray starts (``paper/grid.py``):
    a dead server is one line there, not a failure in every trial."""
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_job(script, "--data", "unused", "--tracking-uri", dead)
    assert_one_line(result, script, code=1, says=f"MLflow at {dead} is not answering")
