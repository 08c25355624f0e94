"""ray-cluster.yaml: valid for Ray's own cluster launcher, and the deployment facts we rely on."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "ray-cluster.yaml"
DATA_RESOURCE = "data_cpu"
EIGHT_GPU_INSTANCES = {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "g5.48xlarge", "g6e.48xlarge"}


@pytest.fixture(scope="module")
def text() -> str:
    return CONFIG_PATH.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


def _node_types(config) -> dict:
    return config["available_node_types"]


def test_matches_rays_cluster_schema(config):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_ray_prepares_and_validates_it(config):
    # What `ray up` does before it talks to AWS: merge the provider defaults, check docker, validate.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"head", "gpu_workers", "data_workers"}


def test_head_is_cpu_only_and_schedules_nothing(config):
    head = _node_types(config)[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert not head["resources"].get("GPU")
    start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in start


def test_gpu_worker_type(config):
    gpu = _node_types(config)["gpu_workers"]
    assert gpu["resources"]["GPU"] == 8
    assert gpu["node_config"]["InstanceType"] in EIGHT_GPU_INSTANCES
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] and gpu["max_workers"] >= 1
    assert DATA_RESOURCE not in gpu["resources"]


def test_cpu_worker_type_carries_the_data_resource(config):
    data = _node_types(config)["data_workers"]
    assert not data["resources"].get("GPU")
    assert data["resources"][DATA_RESOURCE] == data["resources"]["CPU"] > 0
    assert 0 <= data["min_workers"] <= data["max_workers"]
    # Only the data nodes advertise it.
    others = [name for name, t in _node_types(config).items() if DATA_RESOURCE in t["resources"]]
    assert others == ["data_workers"]


def test_worker_counts_fit_the_global_limit(config):
    assert sum(t.get("max_workers", 0) for t in _node_types(config).values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_every_node_uses_an_instance_profile(config):
    for name, node_type in _node_types(config).items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), name


def test_no_aws_keys_in_the_file(text):
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)
    for word in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        assert word not in text.lower()


def test_nothing_opened_to_the_internet(config, text):
    assert "0.0.0.0/0" not in text and "::/0" not in text
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        assert rule.get("FromPort") == rule.get("ToPort") == 22, rule  # at most SSH
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--dashboard-host=0.0.0.0" not in head_start
    # The container shares the host network; it must not publish ports either.
    assert not any(opt.startswith(("-p ", "--publish")) for opt in config["docker"]["run_options"])


def test_token_auth_everywhere(config):
    opts = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in opts and "RAY_AUTH_TOKEN_PATH=" in opts
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", opts).group(1)
    token_dir = token_path.rsplit("/", 1)[0].replace("/home/ray", "~")
    assert token_dir in config["cluster_synced_files"]
    assert any(token_dir in cmd for cmd in config["head_setup_commands"])


def test_image_and_package_install(config):
    assert config["docker"]["image"] and config["docker"]["container_name"]
    [(remote, local)] = config["file_mounts"].items()
    assert local == "."
    setup = " ".join(config["setup_commands"])
    assert f"cd {remote}" in setup and "pip install" in setup and "-e ." in setup
    assert "-c constraints.txt" in setup
    assert ".gitignore" in config["rsync_filter"]  # never ship .venv and outputs


def test_local_cluster_uses_the_same_data_resource():
    script = (REPO / "infra" / "local" / "start-cluster.sh").read_text()
    assert f'DATA_RESOURCE="${{LOCAL_DATA_RESOURCE:-{DATA_RESOURCE}}}"' in script


def test_head_runs_the_projects_mlflow_server_and_nodes_point_at_it(config):
    head = " ".join(config["head_start_ray_commands"])
    [script] = re.findall(r"/home/ray/resnet-platform/(\S+run_server\.sh)", head)
    assert (REPO / script).is_file()
    assert "MLFLOW_TRACKING_URI=" in head
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_start_ray_commands"])
