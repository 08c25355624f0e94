"""The suite names its leaks instead of hanging: what the autouse ``ray_cpus_come_back`` fixture
(tests/fixtures/ray_local.py) finds and removes when a test leaves CPUs of the shared Ray reserved."""

from __future__ import annotations

import time

from fixtures.ray_local import TRAINING_TEST_TIMEOUT_S, _leaks


def test_a_leaked_placement_group_is_named_and_removed(ray_local):
    before = set(ray_local.util.placement_group_table())
    free = ray_local.available_resources().get("CPU", 0.0)
    pg = ray_local.util.placement_group([{"CPU": 1}], name="left-by-a-test")
    ray_local.get(pg.ready(), timeout=60)
    assert ray_local.available_resources().get("CPU", 0.0) <= free - 1
    found = _leaks(before)
    assert any("placement group left-by-a-test (CREATED, 1 CPU)" in f for f in found), found
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0.0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0.0) >= free


def test_training_tests_get_the_thread_timeout_well_under_pytests(request):
    assert TRAINING_TEST_TIMEOUT_S <= 600
    slow_ray = [
        i for i in request.session.items if i.get_closest_marker("slow") and "ray_local" in i.fixturenames
    ]
    for item in slow_ray:
        mark = item.get_closest_marker("timeout")
        assert mark is not None and mark.kwargs.get("method", "thread") == "thread", item.nodeid
