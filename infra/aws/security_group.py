"""Create the cluster's own security group: all traffic between its members, SSH from one CIDR only.

    python infra/aws/security_group.py --vpc-id vpc-0abc... --ssh-cidr 203.0.113.7/32 --region us-west-2

prints the new group's id; put it in ray-cluster.yaml (``SecurityGroupIds``, the ``&cluster_sg``
anchor). Ray's launcher would otherwise create a group that opens SSH to 0.0.0.0/0; with the id set
on every node type it creates none. ``--ssh-cidr`` is your own address or your VPN's range: a
prefix of /0 (the whole internet) is refused. Credentials and endpoint come from the standard AWS
environment variables or profile, as for every other boto3 client of the platform.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

DEFAULT_NAME = "resnet-platform"


def ssh_network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The CIDR SSH is admitted from; anything reaching the whole internet is refused."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError as e:
        raise ValueError(f"--ssh-cidr {cidr!r} is not a CIDR (e.g. 203.0.113.7/32): {e}") from None
    if network.prefixlen == 0:
        raise ValueError(f"--ssh-cidr {cidr} would open SSH to the whole internet: give your own range")
    return network


def ingress_rules(group_id: str, ssh_cidr: str) -> list[dict]:
    """The group's inbound rules, as EC2 ``IpPermissions``: members reach each other on every port
    (Ray's GCS, object manager, workers, MLflow on the head); SSH (tcp/22) from ``ssh_cidr``."""
    network = ssh_network(ssh_cidr)
    ranges = (
        {"IpRanges": [{"CidrIp": str(network), "Description": "SSH for cluster admins"}]}
        if network.version == 4
        else {"Ipv6Ranges": [{"CidrIpv6": str(network), "Description": "SSH for cluster admins"}]}
    )
    return [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "cluster members"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **ranges},
    ]


def create_security_group(ec2, vpc_id: str, ssh_cidr: str, name: str = DEFAULT_NAME) -> str:
    """Create the group in ``vpc_id`` with :func:`ingress_rules`; returns its id."""
    ssh_network(ssh_cidr)  # refuse before anything is created
    group = ec2.create_security_group(
        GroupName=name,
        VpcId=vpc_id,
        Description="resnet-platform Ray cluster: members to each other, SSH from one CIDR",
    )
    group_id = group["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress_rules(group_id, ssh_cidr))
    return group_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vpc-id", required=True, help="the VPC of the cluster's subnets")
    parser.add_argument("--ssh-cidr", required=True, help="who may SSH to the nodes, e.g. 203.0.113.7/32")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--region", default=None, help="default: AWS_REGION / your profile's region")
    args = parser.parse_args(argv)
    try:
        ssh_network(args.ssh_cidr)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    import boto3

    print(
        create_security_group(
            boto3.client("ec2", region_name=args.region), args.vpc_id, args.ssh_cidr, args.name
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
