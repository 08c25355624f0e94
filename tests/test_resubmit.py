"""A run that survives its driver and cannot silently diverge, as a user meets it.

- The training job, killed (SIGKILL to its process group: a node loss, a scheduler's hard stop) after
  a ``--checkpoint-every-steps`` checkpoint is stored, then submitted again unchanged, continues from
  that step checkpoint into the same MLflow run, with every step and epoch logged once; submitted
  with another ``--lr`` it is refused in one line naming it (``train/resume.py``).
- A NaN loss (``train/faults.py``'s ``nan`` fault, through the real backward and optimizer step)
  stops a 2-worker run with one line naming the epoch and step, checkpoints nothing after it, and
  spends no restart (``train/loss_guard.py``).

Jobs run as subprocesses on the session's Ray (``RAY_ADDRESS``), storage on the loopback S3.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fixtures.output_lines import foreign_lines
from fixtures.ports import wait_until
from test_job_lifecycle import job_env, train_cmd
from test_train import small_config

from resnet_platform.train.config import FaultInjection
from resnet_platform.train.loss_guard import NonFiniteLossError
from resnet_platform.train.runner import run_training

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train 2.60's record of the reported checkpoints


def latest_checkpoint(s3, bucket: str, key: str) -> str | None:
    """The checkpoint a restart would get (Ray's snapshot: registered once stored), or None."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    latest = json.loads(body).get("latest_checkpoint_result")
    return latest and latest["checkpoint_dir_name"]


def run_job(cmd: list[str], env: dict, log_path: Path, timeout: float = 400) -> tuple[int, str]:
    with open(log_path, "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    return proc.returncode, log_path.read_text(errors="replace")


@pytest.mark.slow
def test_a_killed_job_resubmitted_unchanged_resumes_from_its_step_checkpoint(
    digits_shards, ray_local, mlflow_server, s3_server, tmp_path
):
    from resnet_platform.tracking.runs import client_for

    s3 = s3_server.client()
    bucket = s3_server.new_bucket("resubmit")
    experiment = f"resubmit-{uuid.uuid4().hex[:6]}"
    cmd = train_cmd(digits_shards, tmp_path, mlflow_server.uri, experiment, "--epochs", "1")
    cmd[cmd.index("--storage") + 1] = f"s3://{bucket}/runs"
    cmd += ["--checkpoint-every-steps", "10"]
    env = job_env(ray_local)
    free_cpus = ray_local.available_resources().get("CPU", 0.0)

    # 1. Started, then killed without notice once a step checkpoint is the latest stored one.
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(
            lambda: (
                proc.poll() is not None
                or (latest_checkpoint(s3, bucket, f"runs/job/{SNAPSHOT}") or "").startswith("checkpoint_step")
            ),
            timeout=400,
            what="a step checkpoint to be stored",
        )
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The killed driver's controller and workers go with it (their CPUs come back), then nothing
    # registers checkpoints any more: the latest is what the resubmitted run must continue from.
    wait_until(
        lambda: ray_local.available_resources().get("CPU", 0.0) >= free_cpus - 1e-6,
        timeout=120,
        what="the killed run's CPUs to come back",
    )
    latest = latest_checkpoint(s3, bucket, f"runs/job/{SNAPSHOT}")
    assert latest.startswith("checkpoint_step_e0001_s"), latest
    step = int(latest.rsplit("_s", 1)[1])

    # 2. The same command: continues that checkpoint, in the same MLflow run, to the end.
    started = time.monotonic()
    rc, text = run_job(cmd, env, tmp_path / "second.log")
    second_s = time.monotonic() - started
    assert rc == 0, text[-4000:]
    assert "continuing run s3://" in text, text[-4000:]
    resumed = [line for line in text.splitlines() if "rank 0 resumed after epoch 0 and" in line]
    assert resumed and f"(step {step})" in resumed[0], text[-4000:]
    client = client_for(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    assert f"MLflow run: {run.info.run_id}" in text
    # Each step logged once: the resumed run's steps up to what the killed one sent are not resent.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "images_per_s_worker")]
    assert steps and len(steps) == len(set(steps)), sorted(steps)
    assert "resume" not in run.data.params  # how each submission started is not a parameter
    # Quiet: the platform's lines only (workers' own lines come without a logger's prefix).
    workers = (r"rank \d resumed after epoch .*", r"MLflow run \w+ already holds .*")
    assert not foreign_lines(text, workers), foreign_lines(text, workers)[:20]
    epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert epochs == [1.0], epochs  # each epoch once

    # 3. The same name with another learning rate: refused in one line naming it, nothing run.
    rc, text = run_job([*cmd, "--lr", "0.05"], env, tmp_path / "third.log", timeout=120)
    assert rc == 1, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("train_imagenet.py: error: run s3://") and "--lr None -> 0.05" in last, last
    assert not re.search(r"--(?!lr )[\w-]+ \S+ -> ", last), last  # only the setting that changed
    print(f"resumed run: {second_s:.0f} s, load average {os.getloadavg()[0]:.1f}")


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_in_one_line_naming_the_step_without_restarts(
    digits_shards, ray_local, tmp_path
):
    marker = tmp_path / "nan-fired"
    config = small_config(
        digits_shards,
        tmp_path,
        name="diverges",
        epochs=1,
        batch_size=32,
        log_every_steps=5,
        max_failures=2,  # a restart would pass the fault (fired once): the run would then finish
        fault=FaultInjection(epoch=0, step=6, kind="nan", rank=1, marker=str(marker)),
    )
    with pytest.raises(NonFiniteLossError) as caught:
        run_training(config)
    message = str(caught.value)
    assert "\n" not in message and "at epoch 1 step 7;" in message, message
    assert marker.exists()
    # Nothing reported after the divergence: no checkpoint of the poisoned weights.
    assert not list((tmp_path / "diverges").glob("checkpoint_*")), list((tmp_path / "diverges").iterdir())
