"""Resource-mode placement that cannot starve itself: training workers stay off every node that
advertises the data resource, or the run refuses to start (the local two-node cluster runs it for
real: tests/test_local_cluster.py)."""

from __future__ import annotations

import pytest

from resnet_platform.data.placement import NODE_ID_LABEL, DataPlacement, PlacementError


def _node(node_id: str, alive: bool = True, **resources: float) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": 1.0, **resources}}


def test_workers_are_kept_off_every_live_node_advertising_the_data_resource():
    nodes = [
        _node("head"),
        _node("data1", data_cpu=1),
        _node("data2", data_cpu=2),
        _node("gone", False, data_cpu=1),
    ]
    assert DataPlacement(node_resource="data_cpu").worker_selector_on(nodes) == {
        NODE_ID_LABEL: "!in(data1, data2)"
    }
    both = DataPlacement(node_resource="data_cpu", node_label="role=data").worker_selector_on(nodes)
    assert both == {"role": "!data", NODE_ID_LABEL: "!in(data1, data2)"}
    assert DataPlacement(node_resource="data_cpu").worker_selector_on([_node("head")]) is None  # none yet
    assert DataPlacement().worker_selector_on(nodes) is None


def test_a_cluster_where_every_node_advertises_the_resource_is_refused_with_the_fix():
    with pytest.raises(
        PlacementError, match="every node of the cluster advertises it.*without that resource"
    ):
        DataPlacement(node_resource="data_cpu").worker_selector_on([_node("only", data_cpu=1)])


def test_the_selector_is_one_ray_accepts():
    from ray._private.label_utils import validate_label_selector_value

    nodes = [_node("a" * 56, data_cpu=1), _node("b" * 56, data_cpu=1), _node("head")]
    value = DataPlacement(node_resource="data_cpu").worker_selector_on(nodes)[NODE_ID_LABEL]
    assert validate_label_selector_value(value) is None
