"""ray-cluster.yaml: valid for Ray's own cluster launcher, and the deployment facts we rely on."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import uuid
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


SG_PLACEHOLDER = "sg-REPLACE_WITH_YOUR_GROUP"
ADMIN_CIDR = "203.0.113.7/32"  # TEST-NET-3: the CIDR a user would pass to security_group.py


def _security_group_module():
    spec = importlib.util.spec_from_file_location(
        "security_group", REPO / "infra" / "aws" / "security_group.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _open_to_outside(rule: dict) -> list[str]:
    """The sources of an EC2 ingress rule that are addresses (not security groups)."""
    return [r["CidrIp"] for r in rule.get("IpRanges", [])] + [
        r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])
    ]


def _ray_network_setup(config: dict) -> dict:
    """What `ray up` does about subnets and security groups, through Ray's own AWS code."""
    from ray.autoscaler._private.aws import config as aws_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    prepared = aws_config._configure_subnet(prepared)
    return aws_config._configure_security_group(prepared)


def test_every_node_is_in_our_security_group(config):
    groups = {json.dumps(t["node_config"].get("SecurityGroupIds")) for t in _node_types(config).values()}
    assert groups == {json.dumps([SG_PLACEHOLDER])}, groups
    assert "security_group" not in config["provider"]  # Ray creates no group of its own


def test_effective_ingress_is_ssh_from_the_admin_cidr_only(config, s3_server):
    """Create the group with infra/aws/security_group.py, let Ray's launcher code set the cluster's
    network up (against moto's EC2 API), then read back what is open: SSH from the admin CIDR and
    member-to-member traffic, nothing from 0.0.0.0/0; and Ray created no group of its own."""
    import boto3

    sg_module = _security_group_module()
    ec2 = boto3.client("ec2", region_name=config["provider"]["region"], endpoint_url=s3_server.endpoint)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    name = f"resnet-platform-{uuid.uuid4().hex[:6]}"
    group_id = sg_module.create_security_group(ec2, vpc, ADMIN_CIDR, name=name)
    before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}

    ours = yaml.safe_load(CONFIG_PATH.read_text().replace(SG_PLACEHOLDER, group_id))
    prepared = _ray_network_setup(ours)
    after = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert after == before, "Ray created a security group"
    for node_type in prepared["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == [group_id]
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    rules = group["IpPermissions"]
    addressed = [
        (r.get("IpProtocol"), r.get("FromPort"), r.get("ToPort"), _open_to_outside(r)) for r in rules
    ]
    assert [a for a in addressed if a[3]] == [("tcp", 22, 22, [ADMIN_CIDR])]
    for rule in rules:
        if not _open_to_outside(rule):
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [group_id]

    # Control: without SecurityGroupIds, the same Ray code opens SSH to the internet. This is what
    # the check above would catch.
    bare = copy.deepcopy(ours)
    for node_type in bare["available_node_types"].values():
        del node_type["node_config"]["SecurityGroupIds"]
    bare["provider"]["security_group"] = {"GroupName": f"ray-default-{uuid.uuid4().hex[:6]}"}
    default = _ray_network_setup(bare)
    [ray_group] = {
        tuple(t["node_config"]["SecurityGroupIds"]) for t in default["available_node_types"].values()
    }
    [rg] = ec2.describe_security_groups(GroupIds=list(ray_group))["SecurityGroups"]
    assert "0.0.0.0/0" in {c for r in rg["IpPermissions"] for c in _open_to_outside(r)}


def test_security_group_script_refuses_the_whole_internet():
    sg_module = _security_group_module()
    for cidr in ("0.0.0.0/0", "::/0", "not-a-cidr"):
        with pytest.raises(ValueError):
            sg_module.ssh_network(cidr)
    assert sg_module.ingress_rules("sg-1", "10.1.2.3/32")[1]["IpRanges"][0]["CidrIp"] == "10.1.2.3/32"


def test_nothing_listens_on_all_interfaces(config, text):
    assert "0.0.0.0" not in text and "::/0" not in text
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    # MLflow binds the head's private address, the one the workers are given.
    private_ip = "$(hostname -I | awk '{print $1}')"
    assert f"MLFLOW_HOST={private_ip} " in head_start
    assert f"MLFLOW_TRACKING_URI=http://{private_ip}:5000" in head_start
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
