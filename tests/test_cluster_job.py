"""End to end on a local two-node cluster: the README's `ray job submit` commands, literally.

infra/local/start-cluster.sh brings up a Ray head, a CPU data node (custom resource
``data_cpu``), an S3-compatible server and an MLflow server, all on 127.0.0.1. The digits are
prepared into the bucket by one submitted job and trained on by another, whose image decoding
is held to the data node; then the checkpoint must be in the bucket and the model version in
the registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from fixtures.ports import free_port
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "infra" / "local"
BIN = Path(sys.executable).parent


def _env_from(env_sh: Path, base: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f"source {env_sh} && env -0"], env=base, check=True, capture_output=True, text=True
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.fixture
def local_cluster(tmp_path):
    state = tmp_path / "state"
    ports = {
        k: str(free_port())
        for k in ("LOCAL_RAY_PORT", "LOCAL_DASHBOARD_PORT", "LOCAL_S3_PORT", "LOCAL_MLFLOW_PORT")
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_TRACKING"))}
    env.update(
        PATH=f"{BIN}:{os.environ['PATH']}", LOCAL_CLUSTER_STATE=str(state), LOCAL_START_TIMEOUT="240", **ports
    )
    started = subprocess.run([str(LOCAL / "start-cluster.sh")], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield _env_from(state / "env.sh", env)
    finally:
        subprocess.run([str(LOCAL / "stop-cluster.sh")], env=env, capture_output=True, text=True)


def submit(cluster_env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    dashboard = cluster_env["RAY_API_SERVER_ADDRESS"]
    return subprocess.run(
        ["ray", "job", "submit", "--address", dashboard, "--working-dir", ".", "--", *command],
        env=cluster_env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.slow
def test_ray_job_submit_trains_from_s3_and_registers(local_cluster, digits_folder):
    env = local_cluster
    bucket = env["LOCAL_BUCKET"]
    data = f"s3://{bucket}/datasets/digits"

    prepared = submit(
        env, "python", "jobs/prepare_imagenet.py", "--source", str(digits_folder.root), "--output", data,
        "--shard-size-mb", "0.25",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-2000:]

    trained = submit(
        env, "python", "jobs/train_imagenet.py", "--data", data, "--arch", "cifar_resnet20", "--image-size", "32",
        "--epochs", "1", "--batch-size", "64", "--lr", "0.1", "--augmentation", "none", "--num-workers", "2",
        "--cpus-per-worker", "0.5", "--data-node-resource", env["LOCAL_DATA_RESOURCE"],
        "--storage", f"s3://{bucket}/runs", "--name", "e2e", "--experiment", "e2e",
        "--register-as", "digits-e2e",
    )  # fmt: skip
    output = trained.stdout + trained.stderr
    assert trained.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower()
    assert "registered model version: 1" in output

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/e2e/").get("Contents", [])]
    assert "runs/e2e/checkpoint_epoch_0001/state.pt" in keys, keys

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='digits-e2e'")
    assert [v.version for v in versions] == ["1"]
    run = client.get_run(versions[0].run_id)
    assert run.data.tags["data"] == data and run.info.status == "FINISHED"
    assert "val_top1_error" in run.data.metrics
