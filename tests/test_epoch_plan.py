"""The epoch plan (data/epoch_plan.py) and one rank's stream of it (data/plan_reader.py)."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_platform.data.epoch_plan import (
    EpochPlan,
    co_batch_repeat,
    plan_seed,
    read_units,
    window_shards_for,
)

SHARDS = (50, 50, 50, 49, 51, 50, 50, 23)


def test_each_epoch_is_a_permutation_of_the_split_and_differs_from_the_last():
    first, second = EpochPlan(SHARDS, 7, 0).order(), EpochPlan(SHARDS, 7, 1).order()
    n = sum(SHARDS)
    assert sorted(first.tolist()) == list(range(n))
    assert sorted(second.tolist()) == list(range(n))
    assert (first != second).mean() > 0.9
    assert np.array_equal(first, EpochPlan(SHARDS, 7, 0).order())  # a pure function of seed and epoch
    # Samples of a window mix across its shards: a batch draws from several shards.
    shard_of = np.searchsorted(np.cumsum(SHARDS), first, side="right")
    assert len(set(shard_of[:32].tolist())) >= 3


@pytest.mark.parametrize("start,world_before,world_after", [(0, 2, 2), (96, 2, 1), (120, 1, 3), (64, 4, 2)])
def test_a_resume_on_any_worker_count_trains_the_rest_of_the_order_once(start, world_before, world_after):
    plan = EpochPlan(SHARDS, 3, 1)
    order = plan.order()
    before = [plan.rank_stream(0, r, world_before)[: start // world_before] for r in range(world_before)]
    after = [plan.rank_stream(start, r, world_after) for r in range(world_after)]
    trained = np.concatenate(before + after)
    assert len(set(trained.tolist())) == len(trained)  # nothing twice
    assert set(trained.tolist()) == set(order[: start + len(after[0]) * world_after].tolist())
    assert sum(SHARDS) - len(trained) < world_after  # only the tail of fewer than W samples left out
    assert len({len(s) for s in after}) == 1  # the same number of steps on every rank


def test_read_units_rebuild_the_stream_and_read_each_window_once_per_rank():
    plan = EpochPlan(SHARDS, 5, 2, window_shards=3)
    stream = plan.rank_stream(40, 1, 2)
    units = read_units(plan, stream)
    assert np.array_equal(np.concatenate([u.sample_of for u in units]), stream)
    assert len(units) == len(plan.windows())
    offsets = np.concatenate([[0], np.cumsum(SHARDS)])
    for u in units:
        assert np.array_equal(offsets[u.shard_of] + u.row_of, u.sample_of)


def test_the_default_window_holds_4096_samples():
    assert window_shards_for((1250,) * 1024, 0) == 4  # ImageNet's 128 MB shards
    assert window_shards_for((150,) * 52, 0) == 28
    assert window_shards_for((150,) * 52, 3) == 3


def test_the_seed_follows_the_run_name_without_seed():
    assert plan_seed(None, "run-a") == plan_seed(None, "run-a") != plan_seed(None, "run-b")
    assert plan_seed(11, "run-a") == 11


def test_co_batch_repeat_tells_a_reshuffle_from_a_repeat():
    order = EpochPlan(SHARDS, 1, 0, window_shards=len(SHARDS)).order()
    again = EpochPlan(SHARDS, 1, 1, window_shards=len(SHARDS)).order()
    assert co_batch_repeat(order, order, 16) == 1.0
    assert co_batch_repeat(order, again, 16) < 0.2


def _stream(digits_shards, *, start: int, rank: int, world: int):
    from dataclasses import replace

    from resnet_platform.train.config import TrainConfig
    from resnet_platform.train.worker_data import PlanSource

    config = TrainConfig(data=digits_shards, image_size=16, seed=4, name="plan-test", batch_size=32)
    source = PlanSource.open(config)
    rows = {}
    import torch

    for batch in source.batches(
        replace(config, num_workers=world), torch.device("cpu"), epoch=1, start=start, rank=rank, world=world
    ):
        for sample, image, label in zip(batch["sample"], batch["image"], batch["label"], strict=True):
            rows[int(sample)] = (image.numpy().copy(), int(label))
    return source.plan(config, 1), rows


def test_a_rank_reads_its_stream_in_order_with_each_samples_own_augmentation(digits_shards, ray_local):
    plan, first = _stream(digits_shards, start=0, rank=1, world=2)
    assert list(first) == plan.rank_stream(0, 1, 2).tolist()  # exactly the plan's order
    _, resumed = _stream(digits_shards, start=300, rank=0, world=1)
    assert list(resumed) == plan.order()[300:].tolist()
    common = set(first) & set(resumed)
    assert len(common) > 100
    for s in common:  # the same crop and flip wherever and whenever the sample is trained
        assert np.array_equal(first[s][0], resumed[s][0]) and first[s][1] == resumed[s][1]


def test_the_driver_hands_the_workers_an_absolute_data_path(tmp_path, monkeypatch):
    """Workers open the data for their plan in Ray's working directory: a relative --data (as the
    README's commands pass it) must reach them absolute."""
    from resnet_platform.data.manifest import Manifest, SplitManifest
    from resnet_platform.train.config import TrainConfig
    from resnet_platform.train.runner import prepare_config

    monkeypatch.chdir(tmp_path)
    manifest = Manifest(["n0"], ["zero"], {"train": SplitManifest(num_rows=1)})
    config = prepare_config(TrainConfig(data="demo-output/digits-shards", storage="runs"), manifest)
    assert config.data == str(tmp_path / "demo-output" / "digits-shards")
    assert prepare_config(TrainConfig(data="s3://b/imagenet"), manifest).data == "s3://b/imagenet"
