"""Shared fixtures: real servers on 127.0.0.1, each in its own module under tests/fixtures/."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Ray Train's controller polls its workers every 2 s; a run's end waits for the next poll. The
# suite's ~50 short runs poll every 0.5 s (Ray Train passes the variable to its controller).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = [
    "fixtures.s3",
    "fixtures.ray_local",
    "fixtures.mlflow_server",
    "fixtures.datasets",
    "fixtures.registered_model",
]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """pytest-xdist 3.8 with pytest 9.2: ``--dist loadgroup`` names each ``xdist_group`` test
    ``<nodeid>@<group>`` by setting ``item._nodeid``, but pytest 9.2 reads a node's id from
    ``item._id``, so the groups were silently ignored (a module's costly fixture was built in both
    processes). Copy the grouped name where pytest 9.2 reads it. Checked on pytest 9.2.0 and
    pytest-xdist 3.8.0; ``tests/test_compat.py::test_xdist_groups_reach_the_scheduler`` fails when
    the grouping is lost again."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        grouped = getattr(item, "_nodeid", None)
        if isinstance(grouped, str) and grouped != item.nodeid and "@" in grouped:
            item._id = NodeId.parse(grouped)
    slow_modules_first(items)


def slow_modules_first(items: list) -> None:
    """Send the modules that hold slow tests first, the fast-only modules last.

    ``--dist loadgroup`` hands out work in collection order (groups first, the largest first), so
    the suite ends when the process that drew the last long test finishes it, while the other may
    wait idle; in file order late modules hold 1-2 minute runs (tracking faults, train). With the
    fast-only modules (about 4 minutes of work for the two processes) at the end, there is short
    work left to even the two out. Whole modules move, in their own order, so a module fixture is
    not built once for its slow tests and again for its fast ones."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: file order within each part
