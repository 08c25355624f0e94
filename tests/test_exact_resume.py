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


def trained(folder: Path, epoch: int, start: int | None = None) -> dict[int, int]:
    """Plan position -> sample id of everything the run's ranks trained in ``epoch`` (a position
    met twice fails the test: no sample may be trained twice in one epoch); ``start``: only the
    streams that began at that position (one group start's)."""
    out: dict[int, int] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["epoch"] != epoch or (start is not None and row["start"] != start):
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


def starts(folder: Path, epoch: int) -> list[int]:
    """The positions the streams of ``epoch`` began at, one per group start, in order."""
    found = []
    for line in (folder / "rank-0.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["epoch"] == epoch and row["start"] not in found:
            found.append(row["start"])
    return found


@pytest.mark.slow
def test_a_worker_killed_without_notice_resumes_from_its_step_checkpoint_training_each_sample_once(
    digits_shards, ray_local, tmp_path
):
    """Rank 1 dies 14 steps into epoch 2 (no notice, no checkpoint of its own); step checkpoints
    every 2 steps are the only mid-epoch state. The restarted group continues at the position of
    the latest registered step checkpoint: epoch 2's samples are the plan's permutation, each once."""
    trace = tmp_path / "trace"
    config = small_config(
        digits_shards, tmp_path, name="killed", epochs=2, batch_size=64, augmentation="rrc", num_workers=2,
        max_failures=1, checkpoint_every_steps=2, trace_samples=str(trace),
        fault=FaultInjection(epoch=1, step=14, kind="exit", rank=1, marker=str(tmp_path / "killed-once")),
    )  # fmt: skip
    outcome = run_training(config)
    assert (tmp_path / "killed-once").exists(), "the worker was never killed"
    first, resumed_at = starts(trace, 1)
    assert first == 0 and resumed_at > 0  # the restart did not begin the epoch again
    # ... but at a step checkpoint's position: one taken at an even global step before the kill
    # (14 steps into the epoch), with 64 images per step (older ones are gone by retention). The
    # newest may not be registered with Ray Train yet when the worker dies (its controller polls
    # every 2 s): the restart then continues from the one before.
    before_epoch = int(outcome.history[0]["step"])
    taken = {(s - before_epoch) * 64 for s in range(before_epoch + 1, before_epoch + 15) if s % 2 == 0}
    assert resumed_at in taken, (resumed_at, taken)
    before = {p: s for p, s in trained(trace, 1, start=0).items() if p < resumed_at}
    epoch = before | trained(trace, 1, start=resumed_at)
    n = PreparedData.open(digits_shards).manifest.splits["train"].num_rows
    assert sorted(epoch) == list(range(n - n % 2)) and len(set(epoch.values())) == len(epoch)
    plan = PlanSource.open(config).plan(config, 1)
    assert [epoch[p] for p in sorted(epoch)] == plan.order()[: len(epoch)].tolist()
    assert int(outcome.history[1]["train_images"]) == n - n % 2
