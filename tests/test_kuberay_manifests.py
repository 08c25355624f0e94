"""infra/kuberay/: the RayCluster and RayJob manifests parse, carry what KubeRay and we need, and the
RayJob's entrypoint is a command line that jobs/train_imagenet.py accepts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "infra" / "kuberay"
DATA_RESOURCE = "data_cpu"
SECRET_LIKE = re.compile(r"(?i)(key|secret|token|password|credential)")

# The flags of jobs/train_imagenet.py that deployments may use (its documented interface).
TRAIN_FLAGS_WITH_VALUE = {
    "--data", "--arch", "--epochs", "--batch-size", "--lr", "--lr-schedule", "--warmup-epochs",
    "--num-workers", "--cpus-per-worker", "--amp", "--image-size", "--storage", "--name",
    "--max-failures", "--checkpoint-every", "--seed", "--experiment", "--register-as",
}  # fmt: skip
TRAIN_SWITCHES = {"--use-gpu", "--resume"}


def _load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d is not None]
    assert len(docs) == 1, f"{name}: one document expected"
    return docs[0]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _load("raycluster.yaml")


@pytest.fixture(scope="module")
def job() -> dict:
    return _load("rayjob.yaml")


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _group(spec: dict, name: str) -> dict:
    [group] = [g for g in spec["workerGroupSpecs"] if g["groupName"] == name]
    return group


def _entrypoint_args(job: dict) -> list[str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("jobs/train_imagenet.py"), argv[:2]
    return argv[2:]


def _flags(args: list[str]) -> dict[str, str | None]:
    out, i = {}, 0
    while i < len(args):
        flag = args[i]
        assert flag.startswith("--"), f"unexpected positional {flag!r}"
        if flag in TRAIN_SWITCHES:
            out[flag] = None
            i += 1
        else:
            assert flag in TRAIN_FLAGS_WITH_VALUE, f"{flag} is not a flag of train_imagenet.py"
            out[flag] = args[i + 1]
            i += 2
    return out


def test_kinds_and_required_fields(cluster, job):
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for doc in (cluster, job):
        assert doc["metadata"]["name"]
    assert job["spec"]["entrypoint"] and job["spec"]["shutdownAfterJobFinishes"] is True
    spec = cluster["spec"]
    assert spec["rayVersion"] == re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)[1]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert {g["groupName"] for g in spec["workerGroupSpecs"]} == {"gpu", "data"}
    for group in spec["workerGroupSpecs"]:
        assert "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for container in _containers(spec):
        assert container["name"] and container["image"]


def test_rayjob_runs_on_the_same_cluster_spec(cluster, job):
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


def test_head_schedules_nothing_and_is_not_exposed(cluster):
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert cluster["spec"]["authOptions"]["mode"] == "token"


def test_gpu_group_has_gpu_limits(cluster):
    [container] = _group(cluster["spec"], "gpu")["template"]["spec"]["containers"]
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 8
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert DATA_RESOURCE not in _group(cluster["spec"], "gpu")["rayStartParams"].get("resources", "")


def test_data_group_advertises_the_data_resource(cluster):
    group = _group(cluster["spec"], "data")
    # KubeRay pastes the value into the shell command `ray start --resources=...`: the shell
    # must turn it into one JSON word.
    [word] = shlex.split(group["rayStartParams"]["resources"])
    resources = json.loads(word)
    [container] = group["template"]["spec"]["containers"]
    assert resources == {DATA_RESOURCE: int(container["resources"]["limits"]["cpu"])}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_no_inline_secrets(cluster, job):
    for name in ("raycluster.yaml", "rayjob.yaml"):
        text = (KUBERAY / name).read_text()
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), name
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        for container in _containers(spec):
            env = {e["name"]: e for e in container["env"]}
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "secretKeyRef" in env[var]["valueFrom"] and "value" not in env[var]
            for var, entry in env.items():
                if SECRET_LIKE.search(var):
                    assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), var
            assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")


def test_one_image_everywhere(cluster):
    image = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())["docker"]["image"]
    assert {c["image"] for c in _containers(cluster["spec"])} == {image}


def test_entrypoint_flags_are_train_imagenet_flags(cluster, job):
    flags = _flags(_entrypoint_args(job))
    assert flags["--data"].startswith("s3://") and flags["--storage"].startswith("s3://")
    assert flags["--num-workers"] == "16" and "--use-gpu" in flags
    assert flags["--register-as"] == "resnet50-imagenet"
    # The script lives where the image puts the repository.
    script = shlex.split(job["spec"]["entrypoint"])[1]
    workdir = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["workingDir"]
    assert script in ("jobs/train_imagenet.py", f"{workdir}/jobs/train_imagenet.py")
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert f"WORKDIR {workdir}" in dockerfile
    # Enough GPUs in the GPU group for one DDP worker per GPU.
    gpu = _group(cluster["spec"], "gpu")
    per_pod = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert gpu["replicas"] * per_pod >= int(flags["--num-workers"])


def test_entrypoint_parses_with_the_training_parser(job):
    from resnet_platform.train.cli import build_parser, config_from_args

    args = build_parser().parse_args(_entrypoint_args(job))
    config = config_from_args(args)
    assert config.num_workers == 16 and config.use_gpu
    assert config.register_as == "resnet50-imagenet"
    assert config.data.startswith("s3://") and config.storage.startswith("s3://")
