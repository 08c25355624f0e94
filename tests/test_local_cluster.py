"""infra/local/start-cluster.sh and stop-cluster.sh: a two-node Ray cluster, S3 and MLflow on 127.0.0.1,
and the README's `ray job submit` commands run against it end to end (one cluster start for both).

The driver runs in a subprocess: this pytest process may already hold the session's in-process Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "infra" / "local"
BIN = Path(sys.executable).parent
DATA_RESOURCE = "data_cpu"

DRIVER = textwrap.dedent(
    """
    import json, os
    import ray

    resource = os.environ["LOCAL_DATA_RESOURCE"]
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def where(batch):
        batch["node"] = [ray.get_runtime_context().get_node_id()] * len(batch["id"])
        return batch

    ds = ray.data.range(64, override_num_blocks=8).map_batches(
        where, batch_format="pandas", num_cpus=0.5, resources={resource: 0.5}
    )
    ran_on = sorted({row["node"] for row in ds.take_all()})
    nodes = [
        {"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()
    ]
    print("RESULT " + json.dumps({"nodes": nodes, "ran_on": ran_on}))
    """
)


def _env_from(env_sh: Path, base: dict[str, str]) -> dict[str, str]:
    """The variables env.sh exports, on top of `base`."""
    out = subprocess.run(
        ["bash", "-c", f"source {env_sh} && env -0"], env=base, check=True, capture_output=True, text=True
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _descendants(roots: set[int]) -> set[int]:
    parent = {}
    for line in subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True
    ).stdout.splitlines():
        pid, ppid = map(int, line.split())
        parent[pid] = ppid
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if pid not in found and ppid in found:
                found.add(pid)
                changed = True
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=3)
        return True
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False


def _submit(cluster_env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ray", "job", "submit", "--address", cluster_env["RAY_API_SERVER_ADDRESS"], "--working-dir", ".", "--",
         *command],
        env=cluster_env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _prepare_train_register(env: dict[str, str], digits_root: Path) -> None:
    """`ray job submit` of prepare_imagenet.py and train_imagenet.py against the local cluster: the
    checkpoint must land in the bucket and the model version in the registry. Image decoding is
    held to the data node (--data-node-resource)."""
    from mlflow import MlflowClient

    bucket = env["LOCAL_BUCKET"]
    data = f"s3://{bucket}/datasets/digits"
    prepared = _submit(
        env, "python", "jobs/prepare_imagenet.py", "--source", str(digits_root), "--output", data,
        "--shard-size-mb", "0.25",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-2000:]
    trained = _submit(
        env, "python", "jobs/train_imagenet.py", "--data", data, "--arch", "cifar_resnet20", "--image-size", "32",
        "--epochs", "1", "--batch-size", "64", "--lr", "0.1", "--augmentation", "none", "--num-workers", "2",
        "--cpus-per-worker", "0.5", "--data-node-resource", env["LOCAL_DATA_RESOURCE"],
        "--storage", f"s3://{bucket}/runs", "--name", "e2e", "--experiment", "e2e", "--register-as", "digits-e2e",
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


@pytest.mark.slow
def test_local_cluster_start_run_stop(tmp_path, digits_folder):
    state = tmp_path / "state"
    ports = {
        "LOCAL_RAY_PORT": free_port(),
        "LOCAL_DASHBOARD_PORT": free_port(),
        "LOCAL_S3_PORT": free_port(),
        "LOCAL_MLFLOW_PORT": free_port(),
    }
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        LOCAL_CLUSTER_STATE=str(state),
        LOCAL_DATA_RESOURCE=DATA_RESOURCE,
        LOCAL_START_TIMEOUT="240",
        **{k: str(v) for k, v in ports.items()},
    )
    for k in (
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
    ):
        env.pop(k, None)
    dashboard = f"http://127.0.0.1:{ports['LOCAL_DASHBOARD_PORT']}"
    s3 = f"http://127.0.0.1:{ports['LOCAL_S3_PORT']}"
    mlflow = f"http://127.0.0.1:{ports['LOCAL_MLFLOW_PORT']}"

    t0 = time.monotonic()
    started = subprocess.run([str(LOCAL / "start-cluster.sh")], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        print(f"start-cluster.sh took {time.monotonic() - t0:.1f}s")
        pids = {int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        assert len(pids) == 4  # moto, mlflow, ray-head, ray-data
        tree = _descendants(pids)
        ray_temp_dirs = [Path((state / f).read_text().strip()) for f in ("head_temp_dir", "data_temp_dir")]

        # Starting again is a no-op while everything runs.
        again = subprocess.run([str(LOCAL / "start-cluster.sh")], env=env, capture_output=True, text=True)
        assert again.returncode == 0 and "already running" in again.stderr

        cluster_env = _env_from(state / "env.sh", env)
        assert cluster_env["RAY_API_SERVER_ADDRESS"] == dashboard
        assert cluster_env["AWS_ENDPOINT_URL"] == s3
        assert cluster_env["MLFLOW_TRACKING_URI"] == mlflow
        assert cluster_env["RAY_AUTH_MODE"] == "token"

        # S3 answers and has the bucket; MLflow answers.
        client = boto3.client(
            "s3",
            endpoint_url=s3,
            aws_access_key_id=cluster_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=cluster_env["AWS_SECRET_ACCESS_KEY"],
            region_name=cluster_env["AWS_REGION"],
        )
        assert cluster_env["LOCAL_BUCKET"] in [b["Name"] for b in client.list_buckets()["Buckets"]]
        with urllib.request.urlopen(f"{mlflow}/health", timeout=10) as r:
            assert r.status == 200

        # `ray status` sees both nodes' resources, the data resource included.
        # (The autoscaler's view lags the node table by a few seconds.)
        deadline = time.monotonic() + 90
        while True:
            status = subprocess.run(
                ["ray", "status"], env=cluster_env, capture_output=True, text=True, timeout=120
            )
            assert status.returncode == 0, status.stderr[-2000:]
            if DATA_RESOURCE in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert DATA_RESOURCE in status.stdout, status.stdout

        # Ray Data map_batches that asks for the data resource runs on the data node only.
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER], env=cluster_env, capture_output=True, text=True, timeout=300
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        result = json.loads(driver.stdout.split("RESULT ", 1)[1])
        alive = [n for n in result["nodes"] if n["alive"]]
        assert len(alive) == 2
        data_nodes = [n["id"] for n in alive if DATA_RESOURCE in n["resources"]]
        assert len(data_nodes) == 1
        assert result["ran_on"] == data_nodes

        # A job submitted through the dashboard (token auth) sees the S3 and MLflow settings.
        job = subprocess.run(
            ["ray", "job", "submit", "--address", dashboard, "--", "python", "-c",
             "import os; print('ENV', os.environ['AWS_ENDPOINT_URL'], os.environ['MLFLOW_TRACKING_URI'])"],
            env=cluster_env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
        assert f"ENV {s3} {mlflow}" in job.stdout

        # The README's commands, literally: prepare into the bucket, then train from it, as jobs.
        _prepare_train_register(cluster_env, digits_folder.root)
    finally:
        stopped = subprocess.run([str(LOCAL / "stop-cluster.sh")], env=env, capture_output=True, text=True)

    assert stopped.returncode == 0, stopped.stderr
    assert not state.exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.5)
    assert not [p for p in tree if _alive(p)]
    assert not [d for d in ray_temp_dirs if d.exists()]
    for url in (dashboard, s3, mlflow):
        assert not _answers(url), url
    # Stopping twice is fine.
    assert subprocess.run([str(LOCAL / "stop-cluster.sh")], env=env).returncode == 0
