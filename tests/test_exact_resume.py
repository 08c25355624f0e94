"""Exact resumption from anywhere: after an interruption, a run continues its epoch plan
(data/epoch_plan.py), so over the epoch every sample is trained exactly once, on any worker count.

Each run records, per rank, the plan positions and sample ids it trains (``TrainConfig.trace_samples``);
the assertions read those records, the checkpoints and the run's history.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import small_config

from resnet_platform.data.epoch_plan import plan_seed
from resnet_platform.data.manifest import PreparedData
from resnet_platform.train import FaultInjection
from resnet_platform.train.checkpoint import load_checkpoint
from resnet_platform.train.runner import run_training
from resnet_platform.train.worker_data import PlanSource


def trained(folder: Path, epoch: int) -> dict[int, int]:
    """Plan position -> sample id of everything the run's ranks trained in ``epoch`` (a position
    met twice fails the test: no sample may be trained twice in one epoch)."""
    out: dict[int, int] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["epoch"] != epoch:
                continue
            for position, sample in zip(row["positions"], row["samples"], strict=True):
                assert position not in out, f"position {position} of epoch {epoch} trained twice"
                out[position] = sample
    return out


@pytest.mark.slow
def test_an_interrupted_epoch_resumed_on_fewer_workers_trains_each_sample_once(
    digits_shards, ray_local, tmp_path
):
    """Two workers are interrupted 6 steps into epoch 2 (a preemption checkpoint, then a worker
    dies and the run fails); the run is resumed on one worker. Epoch 2's samples are then exactly
    the epoch's permutation, each once, in the plan's order: the two workers' part up to the
    checkpoint, the one worker's from there."""
    base = dict(epochs=2, batch_size=64, augmentation="rrc", name="resized", max_failures=0)
    first = tmp_path / "trace-two-workers"
    config = small_config(
        digits_shards, tmp_path, num_workers=2, preemption_check_steps=1, trace_samples=str(first),
        fault=FaultInjection(epoch=1, step=5, kind="preempt", rank=1), **base,
    )  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 (the run fails: max_failures=0)
        run_training(config)
    [checkpoint] = sorted((tmp_path / "resized").glob("checkpoint_preempt_*"))
    position = load_checkpoint(checkpoint)["position"]
    assert position["epoch"] == 1 and position["images"] == 6 * 64 and position["world_size"] == 2

    second = tmp_path / "trace-one-worker"
    outcome = run_training(
        small_config(digits_shards, tmp_path, num_workers=1, resume=True, trace_samples=str(second), **base)
    )
    assert [int(h["epoch"]) for h in outcome.history] == [1, 2]

    before = {p: s for p, s in trained(first, 1).items() if p < position["images"]}
    after = trained(second, 1)
    assert min(after) == position["images"]  # the one worker continued where the checkpoint was
    assert not set(before) & set(after)
    epoch = before | after
    prepared = PreparedData.open(digits_shards)
    n = prepared.manifest.splits["train"].num_rows
    assert sorted(epoch) == list(range(n))  # every position of the epoch once (one worker: no tail)
    assert sorted(epoch.values()) == list(range(n))  # so every sample once
    plan = PlanSource.open(config).plan(config, 1)
    assert plan.seed == plan_seed(0, "resized")
    assert [epoch[p] for p in range(n)] == plan.order().tolist()  # in the epoch's own order
    assert int(outcome.history[1]["train_images"]) == n  # and counted once in its metrics
    # Epoch 1 was not interrupted: the two workers trained the whole permutation but the tail.
    whole = trained(first, 0)
    assert len(whole) == n - n % 2 and len(set(whole.values())) == len(whole)
