"""Jobs as a scheduler runs them (``ray job submit`` logs, Kubernetes): output to a file, stopped by
SIGTERM. SIGTERM ends a training run (MLflow run KILLED, resumable) and the Serve job (application
deleted) with one line and no native stack dump (``resnet_platform/stopping.py``); the training
job's file holds only the platform's lines at default verbosity up to its stop. (A whole run's log is
checked the same way by tests/test_cifar.py's job test, a sweep's by tests/test_sweep.py's.)

Each job runs as a subprocess on the session's Ray (``RAY_ADDRESS``), as a submitted job would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fixtures.output_lines import foreign_lines
from fixtures.ports import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]


def job_env(ray_local) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO / "platform"),
        RAY_ADDRESS=ray_local.get_runtime_context().gcs_address,
    )


def train_cmd(data: str, tmp_path: Path, tracking_uri: str, experiment: str, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "jobs" / "train_imagenet.py"),
        "--data", data, "--arch", "cifar_resnet20", "--image-size", "16", "--augmentation", "none",
        "--batch-size", "32", "--num-workers", "2", "--cpus-per-worker", "0.25", "--seed", "0",
        "--storage", str(tmp_path / "runs"), "--name", "job", "--tracking-uri", tracking_uri,
        "--experiment", experiment, *extra,
    ]  # fmt: skip


def sigterm_once_ready(
    cmd: list[str], env: dict, log_path: Path, ready, *, during=None
) -> tuple[int, str, float]:
    """Run ``cmd`` with its output in ``log_path``; once ``ready(log text)``, call ``during()`` (checks
    on the running job) and send SIGTERM. Returns the exit status, the log and the seconds to exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(
            lambda: ready(log_path.read_text(errors="replace")) or proc.poll() is not None,
            timeout=400,
            what="the job to be under way",
        )
        assert proc.poll() is None, log_path.read_text()[-4000:]
        if during is not None:
            during()
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert "SIGTERM received" not in text and "Traceback" not in text, text[-4000:]  # no native dump
    return rc, text, took


@pytest.mark.slow
def test_sigterm_stops_training_with_one_line_and_the_run_killed(
    digits_shards, ray_local, mlflow_server, tmp_path
):
    from resnet_platform.tracking.runs import client_for

    experiment = f"stop-{uuid.uuid4().hex[:6]}"
    rc, text, took = sigterm_once_ready(
        train_cmd(digits_shards, tmp_path, mlflow_server.uri, experiment, "--epochs", "20"),
        job_env(ray_local),
        tmp_path / "job.log",
        lambda text: "epoch 1/20" in text,
    )
    assert rc == 128 + signal.SIGTERM, text[-4000:]
    assert took < 90, took
    assert text.rstrip().splitlines()[-1] == "train_imagenet.py: stopped by SIGTERM", text[-2000:]
    assert not foreign_lines(text), foreign_lines(text)[:20]
    client = client_for(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "KILLED"
    assert (tmp_path / "runs" / "job").is_dir()  # what --resume continues


@pytest.mark.slow
def test_sigterm_stops_the_serve_job_and_deletes_its_application(
    ray_local, registered_digits_model, tmp_path
):
    from ray import serve

    app = f"stop-{uuid.uuid4().hex[:6]}"
    reg = registered_digits_model
    cmd = [
        sys.executable, str(REPO / "jobs" / "serve_model.py"),
        "--model", reg.uri(reg.versions[0]), "--tracking-uri", reg.tracking_uri, "--app-name", app,
        "--route-prefix", f"/{app}", "--port", str(free_port()), "--cpus-per-replica", "0.25",
    ]  # fmt: skip
    rc, text, _ = sigterm_once_ready(
        cmd,
        job_env(ray_local),
        tmp_path / "serve.log",
        lambda text: "serving " in text,
        during=lambda: assert_running(app),
    )
    assert rc == 128 + signal.SIGTERM, text[-4000:]
    assert text.rstrip().splitlines()[-1] == "serve_model.py: stopped by SIGTERM", text[-2000:]
    assert app not in serve.status().applications  # deleted by the job on its way out


def assert_running(app: str) -> None:
    from ray import serve

    assert app in serve.status().applications
