"""The data-wait watchdog: a worker that waits past its limit for a batch fails the run with one
line naming the split, the rank, the batches received and what Ray says is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resnet_platform.train.data_wait import DataWaitTimeout, cluster_shortfall, watch_batches

REPO = Path(__file__).resolve().parents[1]


def _stalls_after(n: int, release: threading.Event):
    yield from range(n)
    release.wait(60)  # a pipeline whose next read task is never scheduled
    yield n


def test_a_stalled_stream_fails_within_its_limit_naming_split_rank_and_count():
    release = threading.Event()
    batches = watch_batches(
        _stalls_after(3, release),
        split="val",
        rank=1,
        first_batch_s=5,
        between_batches_s=0.5,
        describe=lambda: "0 of 2 CPUs free",
    )
    got = [next(batches) for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(DataWaitTimeout) as caught:
        next(batches)
    release.set()
    assert got == [0, 1, 2] and time.monotonic() - started < 5
    message = str(caught.value)
    assert "no val batch on rank 1" in message and "3 batches received this epoch" in message
    assert "--data-wait-between-s 0.5" in message and message.endswith("0 of 2 CPUs free")
    assert "\n" not in message


def test_slow_compute_is_not_a_data_wait_and_stream_errors_reach_the_loop():
    def stream():
        yield from range(3)
        raise OSError("shard gone")

    seen = []
    with pytest.raises(OSError, match="shard gone"):
        for item in watch_batches(stream(), split="train", rank=0, first_batch_s=1, between_batches_s=0.3):
            time.sleep(0.5)  # the step is longer than the limit: only the loop's waits count
            seen.append(item)
    assert seen == [0, 1, 2]


def test_the_shortfall_names_a_resource_no_node_has(ray_local):
    @ray_local.remote(num_cpus=0.01, resources={"no_such_resource": 1})
    def never():
        return 1

    ref = never.remote()
    try:
        deadline = time.monotonic() + 60
        while "no_such_resource" not in (text := cluster_shortfall()) and time.monotonic() < deadline:
            time.sleep(0.5)  # the demand reaches the GCS with the raylet's next report
        assert "CPUs free" in text and "no node has no_such_resource" in text, text
    finally:
        ray_local.cancel(ref, force=True)


@pytest.mark.slow  # a training job that waits out its limit: about a minute
def test_a_run_whose_data_tasks_cannot_be_scheduled_ends_with_one_line(digits_shards, ray_local, tmp_path):
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    cmd = [sys.executable, str(REPO / "jobs" / "train_imagenet.py"), "--data", digits_shards, "--no-mlflow"]
    cmd += ["--storage", str(tmp_path / "runs"), "--arch", "cifar_resnet20", "--image-size", "16"]
    cmd += ["--batch-size", "8", "--epochs", "1", "--num-workers", "2", "--cpus-per-worker", "0.5"]
    cmd += ["--data-node-resource", "no_data_node", "--data-wait-s", "20", "--data-wait-between-s", "20"]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode != 0 and "Traceback" not in result.stdout, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    for i, line in enumerate(lines):  # only Ray's own "safe to ignore" warnings of a loaded machine
        assert "Traceback" not in line or any("safe to ignore" in w for w in lines[max(0, i - 3) : i]), (
            "\n".join(lines[i - 3 : i + 30])
        )
    last = result.stderr.strip().splitlines()[-1]
    assert "error: no train batch on rank" in last, result.stderr[-3000:]
    assert "0 batches received this epoch" in last and "--data-wait-s 20" in last
    assert "CPUs free" in last and "no node has no_data_node" in last
    assert elapsed < 500, elapsed  # the limit plus the job's and Ray Train's start, not Ray Data's 30 min
