"""infra/local/start-cluster.sh and stop-cluster.sh: a two-node Ray cluster, S3 and MLflow on 127.0.0.1,
the `ray job submit` commands of docs/cluster.md run against it end to end, and the spot drill (a
third node drained for preemption during training). One cluster start for the module (the `local_cluster`
fixture); its stop, and that it leaves nothing behind, is checked at the end of the session.

The driver runs in a subprocess: this pytest process may already hold the session's in-process Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from fixtures.ports import free_port

# One two-node cluster for the module: its tests stay in one pytest process (make test runs two).
pytestmark = pytest.mark.xdist_group("local_cluster")

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


def _prepare_digits(env: dict[str, str], digits_root: Path) -> str:
    """`ray job submit` of prepare_imagenet.py: the digits into the bucket. Returns their URI."""
    data = f"s3://{env['LOCAL_BUCKET']}/datasets/digits"
    prepared = _submit(
        env, "python", "jobs/prepare_imagenet.py", "--source", str(digits_root), "--output", data,
        "--shard-size-mb", "0.25",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-2000:]
    return data


def _prepare_train_register(env: dict[str, str], digits_root: Path) -> None:
    """`ray job submit` of prepare_imagenet.py and train_imagenet.py against the local cluster: the
    checkpoint must land in the bucket and the model version in the registry. Ray's state API then
    says where each task ran: every read and decode task of the platform's pipeline on the data node
    (--data-node-resource from a driver, --data-node-label in the training job), every training
    worker on the head."""
    from mlflow import MlflowClient

    bucket = env["LOCAL_BUCKET"]
    data = _prepare_digits(env, digits_root)

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


@dataclass
class LocalCluster:
    """What `local_cluster` started: ``env`` runs the scripts; ``cluster_env`` is env.sh on top of it
    (what `ray job submit` and the clients use)."""

    env: dict[str, str]
    cluster_env: dict[str, str]
    state: Path
    urls: dict[str, str]  # dashboard, s3, mlflow
    ray_temp_dirs: list[Path]  # head, data node
    tree: set[int] = field(default_factory=set)  # every process of the cluster, right after start


# Module scope and the module's xdist_group: one cluster start per run of the suite, in the one
# pytest process that runs this module (it started twice while the groups were ignored: conftest),
# stopped when the module ends: idle, its four Ray node processes, moto and MLflow took ~9% of a core
# (5.4 CPU-s a minute, measured), which the rest of the suite's tests could use.
@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """infra/local/start-cluster.sh once for this module's tests; at the end stop-cluster.sh, which
    must stop every process it started (and only those), remove its state and Ray's temp dirs, and
    leave no port answering."""
    state = tmp_path_factory.mktemp("local-cluster") / "state"
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
    urls = {
        "dashboard": f"http://127.0.0.1:{ports['LOCAL_DASHBOARD_PORT']}",
        "s3": f"http://127.0.0.1:{ports['LOCAL_S3_PORT']}",
        "mlflow": f"http://127.0.0.1:{ports['LOCAL_MLFLOW_PORT']}",
    }

    t0 = time.monotonic()
    started = subprocess.run([str(LOCAL / "start-cluster.sh")], env=env, capture_output=True, text=True)
    tree: set[int] = set()
    ray_temp_dirs: list[Path] = []
    try:
        logs = sorted((state / "logs").glob("*.log")) if (state / "logs").exists() else []
        tails = "".join(f"\n--- {f.name}\n" + f.read_text(errors="replace")[-1500:] for f in logs)
        assert started.returncode == 0, started.stderr[-3000:] + tails
        print(f"start-cluster.sh took {time.monotonic() - t0:.1f}s")
        pids = {int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        assert len(pids) == 4  # moto, mlflow, ray-head, ray-data
        tree = _descendants(pids)
        ray_temp_dirs = [Path((state / f).read_text().strip()) for f in ("head_temp_dir", "data_temp_dir")]
        yield LocalCluster(env, _env_from(state / "env.sh", env), state, urls, ray_temp_dirs, tree)
    finally:
        stopped = subprocess.run([str(LOCAL / "stop-cluster.sh")], env=env, capture_output=True, text=True)

    assert stopped.returncode == 0, stopped.stderr
    assert not state.exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.5)
    assert not [p for p in tree if _alive(p)]
    assert not [d for d in ray_temp_dirs if d.exists()]
    for url in urls.values():
        assert not _answers(url), url
    # Stopping twice is fine.
    assert subprocess.run([str(LOCAL / "stop-cluster.sh")], env=env).returncode == 0


@pytest.mark.slow
def test_local_cluster_start_run_stop(local_cluster, tmp_path, digits_folder):
    env, cluster_env = local_cluster.env, local_cluster.cluster_env
    dashboard, s3, mlflow = (local_cluster.urls[k] for k in ("dashboard", "s3", "mlflow"))

    # Starting again is a no-op while everything runs.
    again = subprocess.run([str(LOCAL / "start-cluster.sh")], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already running" in again.stderr

    assert cluster_env["RAY_API_SERVER_ADDRESS"] == dashboard
    assert cluster_env["AWS_ENDPOINT_URL"] == s3
    assert cluster_env["MLFLOW_TRACKING_URI"] == mlflow
    assert cluster_env["RAY_AUTH_MODE"] == "token"

    # S3 answers and has the bucket; MLflow answers.
    client = _s3(cluster_env)
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

    # docs/cluster.md's commands, literally: prepare into the bucket, then train from it, as jobs.
    _prepare_train_register(cluster_env, digits_folder.root)
    # (stop-cluster.sh, and that it leaves nothing behind: the fixture, when the module is done)


@pytest.mark.slow
def test_resource_mode_alone_trains_with_reads_on_the_data_node(local_cluster, digits_folder):
    """--data-node-resource without a label (the issue's starved run): the training workers may not
    take the data node's CPU, so the reads run there and the run trains; Ray's state API says where."""
    env = local_cluster.cluster_env
    data = _prepare_digits(env, digits_folder.root)  # already in the bucket: the rerun skips every shard
    trained = _submit(
        env, "python", "jobs/train_imagenet.py", "--data", data, "--no-mlflow",
        "--arch", "cifar_resnet20", "--image-size", "16", "--epochs", "1", "--batch-size", "64",
        "--augmentation", "none", "--num-workers", "2", "--cpus-per-worker", "0.5",
        "--data-node-resource", DATA_RESOURCE, "--data-wait-s", "180",
        "--storage", f"s3://{env['LOCAL_BUCKET']}/runs", "--name", "resource-alone",
        submission_id="resource-alone",
    )  # fmt: skip
    output = trained.stdout + trained.stderr
    assert trained.returncode == 0 and "succeeded" in output.lower(), output[-4000:]
    where, data_node, head = _placement(env, "resource-alone")
    assert where["data_tasks"] and {node for _, node in where["data_tasks"]} == {data_node}, where
    assert {node for _, node in where["train_workers"]} == {head}, where["train_workers"]


# ----------------------------------------------------------------------------- the spot drill


def _s3(env: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )


def _keys(s3, bucket: str, prefix: str, part: str = "") -> list[str]:
    """The bucket's keys under ``prefix`` that contain ``part``, sorted."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if part in o["Key"])


def _ensure_digits(env: dict[str, str], digits_root: Path) -> str:
    """The digits in the bucket: those the first test prepared, or prepared now (test run alone)."""
    data = f"s3://{env['LOCAL_BUCKET']}/datasets/digits"
    if _keys(_s3(env), env["LOCAL_BUCKET"], "datasets/digits/manifest.json"):  # written last
        return data
    return _prepare_digits(env, digits_root)


def _state_api(env: dict[str, str], what: str) -> list[dict]:
    """Ray's state API (nodes, actors) through the dashboard, with the cluster's token."""
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(
        f"{env['RAY_API_SERVER_ADDRESS']}/api/v0/{what}?limit=10000&detail=true",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)["data"]["result"]["result"]


def _wait_for(predicate, timeout: float, what: str, job: subprocess.Popen, log_path: Path, poll: float = 1.0):
    """``predicate()``'s first truthy value; fails (with the job's log) on timeout or if the job ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if job.poll() is not None:
            raise AssertionError(
                f"the job ended ({job.returncode}) before {what}:\n{log_path.read_text(errors='replace')[-5000:]}"
            )
        time.sleep(poll)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}:\n{log_path.read_text()[-5000:]}"
    )


class _SpotNode:
    """A third Ray node (1 CPU, label role=spot) joined to the local cluster, in its own session and
    temp dir: :meth:`drain` is the cloud's spot notice, :meth:`reclaim` the VM taken away (every
    process of the node killed at once), :meth:`stop` a clean stop of whatever is left."""

    def __init__(self, cluster: LocalCluster, name: str, log_dir: Path) -> None:
        self.cluster, self.name = cluster, name
        self.log_path = log_dir / f"ray-{name}.log"
        self.proc: subprocess.Popen | None = None
        self.temp_dir: Path | None = None
        self.node_id: str | None = None
        self.tree: set[int] = set()

    def start(self, timeout: float = 240) -> None:
        env = self.cluster.cluster_env
        # On a loaded machine a joining raylet can miss Ray's fixed 30 s registration window and exit
        # (start-cluster.sh retries the data node the same way; a drill adds a node to a busy cluster).
        attempts = 5
        for attempt in range(1, attempts + 1):
            self.temp_dir = Path(tempfile.mkdtemp(prefix="rpl-spot."))  # short: Ray's socket paths
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen(
                    ["ray", "start", "--block", "--disable-usage-stats", "--address", env["RAY_ADDRESS"],
                     "--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", str(free_port()),
                     "--num-cpus", "1", "--num-gpus", "0", "--labels", f"role=spot,drill={self.name}",
                     "--temp-dir", str(self.temp_dir)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                nodes = [n for n in _state_api(env, "nodes") if n["state"] == "ALIVE"]
                mine = [n["node_id"] for n in nodes if n.get("labels", {}).get("drill") == self.name]
                if mine:
                    self.node_id = mine[0]
                    self.tree = _descendants({self.proc.pid})
                    return
                time.sleep(1)
            if self.proc.poll() is None or attempt == attempts:
                raise AssertionError(f"node {self.name} did not join: {self.log_path.read_text()[-3000:]}")
            self._clean_up()

    def hosts_a_training_worker(self) -> bool:
        actors = _state_api(self.cluster.cluster_env, "actors")
        return any(
            "TrainWorker" in a["class_name"] and a["state"] == "ALIVE" and a.get("node_id") == self.node_id
            for a in actors
        )

    def drain(self, deadline_s: int) -> float:
        """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` with a deadline; returns the
        (monotonic) time by which the deadline has passed."""
        drained = subprocess.run(
            ["ray", "drain-node", "--address", self.cluster.cluster_env["RAY_ADDRESS"], "--node-id", self.node_id,
             "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot instance reclaimed",
             "--deadline-remaining-seconds", str(deadline_s)],
            env=self.cluster.cluster_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert drained.returncode == 0, drained.stdout[-2000:] + drained.stderr[-2000:]
        return time.monotonic() + deadline_s

    def reclaim(self) -> None:
        """The VM goes away: every process of the node, SIGKILL, no shutdown."""
        if self.proc is None:
            return
        self.tree |= _descendants({self.proc.pid} | self.tree)
        for pid in self.tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self._clean_up()

    def stop(self, grace_s: float = 45) -> None:
        if self.proc is None:
            return
        self.tree |= _descendants({self.proc.pid} | self.tree)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.reclaim()  # what did not exit (Ray workers run in their own sessions)

    def _clean_up(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in self.tree):
            time.sleep(0.2)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.proc, self.temp_dir, self.tree = None, None, set()


DRILL_DEADLINE_S = 10  # the spot notice: the node goes this long after the drain
# Ray Train restarts the group when the drained node dies, not at the notice, so the run must still be
# training then: 3 epochs are left after the drain (epoch 1 ends it), at ~240 img/s on a quiet machine
# about 21 s, against the reclaim at DRILL_DEADLINE_S + 3 (or later: after the preemption checkpoint
# and the replacement node's start). With 2 left and a 15 s notice a quiet run ended first (stop 24).
DRILL_EPOCHS = 4
# Every rank logs where it resumed, and any rank's line will do: Ray 2.60's driver dedups worker lines
# that differ only in their numbers (ray/_private/ray_logging: _canonicalise_log_line), so it prints
# the first rank's line and folds the others into "[repeated Nx across cluster]"; rank 0's may be the
# folded one (CI, stop 24). All ranks resume from the same checkpoint, so their positions agree.
RESUMED = re.compile(r"rank \d+ resumed after epoch (\d+)(?: and (\d+) steps of epoch (\d+))? \(step (\d+)\)")


@pytest.mark.slow
def test_spot_node_drained_for_preemption_costs_no_failure(local_cluster, digits_folder, tmp_path):
    """The spot drill (issue 16). A third node (1 CPU, label role=spot) joins; a 2-worker run (one
    CPU each, data on the data node) trains with one worker on the head and one on it. Once epoch 1's
    checkpoint is stored, the node is drained with reason DRAIN_NODE_REASON_PREEMPTION and a
    deadline (the cloud's spot notice) and a replacement node starts (the autoscaler's); just after
    the deadline the spot node is killed (the reclaim). Rank 0 writes a preemption checkpoint when
    Ray tells it; when the node goes, Ray restarts the group from the newest checkpoint (that one, or
    an epoch's written after it) and charges the preemption budget:
    with --max-failures 0 (and --max-preemptions 1) the run still finishes, and MLflow has each
    epoch once."""
    from mlflow import MlflowClient

    env = local_cluster.cluster_env
    bucket = env["LOCAL_BUCKET"]
    data = _ensure_digits(env, digits_folder.root)
    spot = _SpotNode(local_cluster, "spot", tmp_path)
    replacement = _SpotNode(local_cluster, "replacement", tmp_path)
    log_path = tmp_path / "spot-drill-job.log"
    s3 = _s3(env)
    trained = None
    t0 = time.monotonic()
    try:
        spot.start()
        with open(log_path, "w") as log:
            trained = subprocess.Popen(
                ["ray", "job", "submit", "--address", env["RAY_API_SERVER_ADDRESS"], "--working-dir", ".",
                 "--submission-id", "spot-drill",
                 # Ray Train's drain watcher polls every 5 s by default; 1 s keeps the drill short.
                 "--runtime-env-json", json.dumps({"env_vars": {"RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1"}}),
                 "--", "python", "jobs/train_imagenet.py", "--data", data,
                 "--arch", "cifar_resnet20", "--image-size", "32", "--epochs", str(DRILL_EPOCHS), "--batch-size", "64",
                 "--lr", "0.1", "--augmentation", "none", "--num-workers", "2", "--cpus-per-worker", "1",
                 "--data-node-label", env["LOCAL_DATA_LABEL"], "--preemption-check-steps", "2",
                 "--max-failures", "0", "--max-preemptions", "1", "--storage", f"s3://{bucket}/runs",
                 "--name", "spot", "--experiment", "spot"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip

        def stored(part: str) -> list[str]:
            return _keys(s3, bucket, "runs/spot/", part)

        _wait_for(
            lambda: stored("checkpoint_epoch_0001/state.pt"), 600, "epoch 1's checkpoint", trained, log_path
        )
        assert spot.hosts_a_training_worker(), "no training worker on the spot node"
        t_drain = time.monotonic()
        deadline = spot.drain(deadline_s=DRILL_DEADLINE_S)

        # Listed now: Ray deletes it once newer checkpoints are kept (it is kept while the latest).
        def preempt_stored() -> list[str]:
            keys = stored("checkpoint_preempt_")
            return keys if any(k.endswith("/state.pt") for k in keys) else []

        preempt = _wait_for(
            preempt_stored, DRILL_DEADLINE_S + 30, "the preemption checkpoint", trained, log_path
        )
        t_preempt = time.monotonic()
        replacement.start()  # the autoscaler's replacement (the drained node takes no new workers)
        time.sleep(max(0.0, deadline - time.monotonic()) + 3)
        running_at_reclaim = trained.poll() is None
        spot.reclaim()
        trained.wait(timeout=600)
    finally:
        if trained is not None and trained.poll() is None:
            trained.kill()
        spot.stop()
        replacement.stop()
    print(
        f"spot drill took {time.monotonic() - t0:.0f} s (preemption checkpoint stored {t_preempt - t_drain:.1f} s "
        f"after `ray drain-node` started)"
    )
    output = log_path.read_text(errors="replace")
    assert running_at_reclaim, "the run ended before the spot node was reclaimed: raise DRILL_EPOCHS"
    assert trained.returncode == 0, output[-5000:]
    assert "succeeded" in output.lower()
    assert "preemption pending" in output, output[-5000:]  # rank 0's line when it took the checkpoint
    assert any(k.endswith("/state.pt") for k in preempt), preempt
    name = preempt[0].split("runs/spot/", 1)[1].split("/")[0]  # checkpoint_preempt_eEEEE_sSSSSSSSS
    epoch, step = (int(x) for x in re.fullmatch(r"checkpoint_preempt_e(\d+)_s(\d+)", name).groups())
    print(f"preemption checkpoint {name}; resumed: {RESUMED.findall(output)}")

    # The restart resumed from the newest stored checkpoint: the preemption checkpoint, or an epoch
    # checkpoint written after it (when the epoch ended before the deadline), never an older one.
    # (Ray's console may print a worker's line twice: the set.)
    resumed = {(int(e), int(s or 0), int(st)) for e, s, _, st in RESUMED.findall(output)}
    assert len(resumed) == 1, (resumed, output[-5000:])  # one restart
    ((done, steps_into, at_step),) = resumed
    from_preempt = (done, at_step) == (epoch - 1, step) and steps_into > 0
    assert from_preempt or (done >= epoch and at_step > step), (resumed, name)

    # Ray's failure policy charged the preemption budget, not --max-failures (its controller's
    # system log has every decision; ray/train/v2/_internal/execution/failure_handling/default.py).
    decisions = "".join(
        f.read_text(errors="replace")
        for d in local_cluster.ray_temp_dirs  # the controller runs beside the job's driver: the head
        for f in d.glob("session_*/logs/train/*controller*")
    )
    assert "Source: preemption" in decisions, decisions[-3000:]
    assert "Source: worker group" not in decisions

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("spot").experiment_id])
    assert run.info.status == "FINISHED"
    epochs = [int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert sorted(epochs) == list(range(1, DRILL_EPOCHS + 1)), epochs  # each once, the interrupted one too
    starts = sorted(
        (int(m.step), int(m.value)) for m in client.get_metric_history(run.info.run_id, "workers")
    )
    print(f"workers (step, value; group starts and epoch rows): {starts}")
    assert (0, 2) in starts and (at_step, 2) in starts, (starts, at_step)  # the start, the restart
