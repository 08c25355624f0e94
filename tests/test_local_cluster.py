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

DATA_LABEL = "role=data"

# The platform's own pipeline (resource mode), driven from a plain driver: every read and decode
# task must run on the data node.
PIPELINE_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import ray
    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset
    from resnet_platform.data.placement import DataPlacement

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    placement = DataPlacement(node_resource=os.environ["LOCAL_DATA_RESOURCE"])
    ds = build_split_dataset(
        sys.argv[1], "train", train=True, transform=TransformConfig(image_size=32), placement=placement
    )
    rows = sum(len(b["label"]) for b in ds.iter_batches(batch_size=256, batch_format="numpy"))
    print("RESULT " + json.dumps({"rows": rows, "job_id": ray.get_runtime_context().get_job_id()}))
    """
)

# Where each Ray Data task and each training worker of a job ran, from Ray's state API.
WHERE = textwrap.dedent(
    """
    import json, os, sys
    import ray
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors, list_tasks

    job_id = sys.argv[1]
    if job_id.startswith("raysubmit") or not all(c in "0123456789abcdef" for c in job_id):
        job_id = JobSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"]).get_job_info(job_id).driver_info.id
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    tasks = list_tasks(filters=[("job_id", "=", job_id)], detail=True, limit=10000, raise_on_missing_output=False)
    actors = list_actors(filters=[("job_id", "=", job_id)], detail=True, limit=10000, raise_on_missing_output=False)
    nodes = [
        {"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"], "labels": n.get("Labels", {})}
        for n in ray.nodes()
    ]
    print("RESULT " + json.dumps({
        "data_tasks": [[t.name, t.node_id] for t in tasks if "Read" in t.name or "MapBatches" in t.name],
        "train_workers": [[a.class_name, a.node_id] for a in actors if "TrainWorker" in a.class_name],
        "nodes": nodes,
    }))
    """
)


def _run_json(script: str, env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(env, PYTHONPATH=str(REPO / "platform")), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def _placement(env: dict[str, str], job_id: str) -> tuple[dict, str, str]:
    """(where things ran, the data node's id, the head's id)."""
    where = _run_json(WHERE, env, job_id)
    alive = [n for n in where["nodes"] if n["alive"]]
    assert len(alive) == 2
    data = [n["id"] for n in alive if DATA_RESOURCE in n["resources"]]
    assert len(data) == 1
    head = [n["id"] for n in alive if n["id"] != data[0]][0]
    return where, data[0], head


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


def _submit(
    cluster_env: dict[str, str], *command: str, submission_id: str | None = None
) -> subprocess.CompletedProcess:
    sid = ["--submission-id", submission_id] if submission_id else []
    return subprocess.run(
        ["ray", "job", "submit", "--address", cluster_env["RAY_API_SERVER_ADDRESS"], "--working-dir", ".", *sid,
         "--", *command],
        env=cluster_env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _prepare_train_register(env: dict[str, str], digits_root: Path) -> None:
    """`ray job submit` of prepare_imagenet.py and train_imagenet.py against the local cluster: the
    checkpoint must land in the bucket and the model version in the registry. Ray's state API then
    says where each task ran: every read and decode task of the platform's pipeline on the data node
    (--data-node-resource from a driver, --data-node-label in the training job), every training
    worker on the head."""
    from mlflow import MlflowClient

    bucket = env["LOCAL_BUCKET"]
    data = f"s3://{bucket}/datasets/digits"
    prepared = _submit(
        env, "python", "jobs/prepare_imagenet.py", "--source", str(digits_root), "--output", data,
        "--shard-size-mb", "0.25",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-2000:]

    # The platform's pipeline with a custom resource: all its tasks on the data node.
    driven = _run_json(PIPELINE_DRIVER, env, data)
    assert driven["rows"] > 1000
    where, data_node, head = _placement(env, driven["job_id"])
    assert where["data_tasks"], where
    assert {node for _, node in where["data_tasks"]} == {data_node}, where["data_tasks"]

    trained = _submit(
        env, "python", "jobs/train_imagenet.py", "--data", data,
        "--arch", "cifar_resnet20", "--image-size", "32",
        "--epochs", "1", "--batch-size", "64", "--lr", "0.1", "--augmentation", "none", "--num-workers", "2",
        "--cpus-per-worker", "0.5", "--data-node-label", env["LOCAL_DATA_LABEL"],
        "--storage", f"s3://{bucket}/runs", "--name", "e2e", "--experiment", "e2e", "--register-as", "digits-e2e",
        submission_id="e2e-train",
    )  # fmt: skip
    output = trained.stdout + trained.stderr
    assert trained.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower()
    assert "registered model version: 1" in output
    assert "exclude_resources" not in output  # Ray 2.60's deprecation warning: we never set it

    # The training job's own tasks: reads and decodes on the data node, workers on the head.
    where, data_node, head = _placement(env, "e2e-train")
    names = {name for name, _ in where["data_tasks"]}
    assert any("ReadVerifiedShard" in n for n in names) and any("_decode_batch" in n for n in names), names
    assert {node for _, node in where["data_tasks"]} == {data_node}, where["data_tasks"]
    assert len(where["train_workers"]) == 2
    assert {node for _, node in where["train_workers"]} == {head}, where["train_workers"]

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
        logs = sorted((state / "logs").glob("*.log")) if (state / "logs").exists() else []
        tails = "".join(f"\n--- {f.name}\n" + f.read_text(errors="replace")[-1500:] for f in logs)
        assert started.returncode == 0, started.stderr[-3000:] + tails
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
