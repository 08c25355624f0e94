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
def _train_flags() -> tuple[set[str], set[str]]:
    """(flags that take a value, switches) of train_imagenet.py, read from its own parser."""
    import argparse

    from resnet_platform.train.cli import build_parser

    valued, switches = set(), set()
    for action in build_parser()._actions:
        kind = (
            switches if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction) else valued
        )
        kind.update(o for o in action.option_strings if o.startswith("--"))
    return valued, switches


TRAIN_FLAGS_WITH_VALUE, TRAIN_SWITCHES = _train_flags()


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
    # Decoding stays on the data pods: the entrypoint selects the label the data group carries.
    data = _group(cluster["spec"], "data")
    assert flags["--data-node-label"] == data["rayStartParams"]["labels"]
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


# --- pod security -----------------------------------------------------------------------------------

# Where Ray writes at run time (sessions, logs, spilled objects; its state; the object store): each
# must be a writable volume, since the root filesystem is read-only.
RAY_WRITABLE_PATHS = ("/tmp", "/home/ray/.ray", "/dev/shm")
RAY_UID = 1000  # the `ray` user of the rayproject/ray base image (infra/docker/Dockerfile)


def _pod_specs(cluster: dict, job: dict) -> list[tuple[str, dict]]:
    pods = []
    for where, spec in (("RayCluster", cluster["spec"]), ("RayJob", job["spec"]["rayClusterSpec"])):
        pods.append((f"{where} head", spec["headGroupSpec"]["template"]["spec"]))
        pods += [(f"{where} {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    pods.append(("RayJob submitter", job["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def _assert_restricted_container(where: str, context: dict | None) -> None:
    assert context, f"{where}: no securityContext"
    assert context.get("allowPrivilegeEscalation") is False, where
    assert context.get("readOnlyRootFilesystem") is True, where
    assert context.get("privileged") in (None, False), where
    assert context.get("capabilities", {}).get("drop") == ["ALL"], where
    assert not context.get("capabilities", {}).get("add"), where
    assert context.get("runAsUser", RAY_UID) != 0, where


def test_every_pod_runs_as_non_root(cluster, job):
    for where, pod in _pod_specs(cluster, job):
        context = pod.get("securityContext") or {}
        assert context.get("runAsNonRoot") is True, where
        assert context.get("runAsUser") == RAY_UID and context.get("runAsGroup") != 0, where
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where


def test_every_container_is_read_only_without_privilege_escalation(cluster, job):
    for where, pod in _pod_specs(cluster, job):
        for container in pod["containers"] + pod.get("initContainers", []):
            _assert_restricted_container(f"{where}/{container['name']}", container.get("securityContext"))
    # The autoscaler sidecar KubeRay injects into the head pod.
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        _assert_restricted_container("autoscaler", spec["autoscalerOptions"].get("securityContext"))


def test_ray_writable_paths_are_empty_dir_volumes(cluster, job):
    for where, pod in _pod_specs(cluster, job):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for path in RAY_WRITABLE_PATHS:
                assert path in mounts, f"{where}: {path} is not writable"
                mount = mounts[path]
                assert not mount.get("readOnly"), f"{where}: {path}"
                assert "emptyDir" in volumes[mount["name"]], f"{where}: {path} is not an emptyDir"
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            for var in ("XDG_CACHE_HOME", "MPLCONFIGDIR"):  # caches that default to the read-only home
                if var in env:
                    assert env[var].startswith("/tmp/"), (where, var)
        # The object store needs a memory-backed /dev/shm where Ray runs (not the submitter).
        if "submitter" not in where:
            shm = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm")
            assert volumes[shm["name"]]["emptyDir"].get("medium") == "Memory", where
