"""The recipe's arithmetic without Ray: lr scaling, schedules, top-k counts, checkpoint RNG."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from resnet_platform.models import build_model
from resnet_platform.train import TrainConfig
from resnet_platform.train.checkpoint import capture_rng, restore_rng
from resnet_platform.train.metrics import topk_correct
from resnet_platform.train.optim import EpochSchedule, build_optimizer


def lrs(config: TrainConfig, val_errors: list[float]) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, config)
    schedule = EpochSchedule(opt, config)
    seen = []
    for err in val_errors:
        seen.append(schedule.lr)
        schedule.step(err)
    return seen


def test_defaults_are_the_papers_recipe():
    c = TrainConfig(data="x")
    assert (c.batch_size, c.base_lr, c.momentum, c.weight_decay) == (256, 0.1, 0.9, 1e-4)
    assert (c.lr_schedule, c.lr_milestones, c.epochs) == ("step", (30, 60), 90)
    assert TrainConfig(data="x", batch_size=1024, num_workers=8).base_lr == pytest.approx(0.4)


def test_step_schedule_divides_by_ten_at_milestones():
    seen = lrs(TrainConfig(data="x", epochs=90), [0.5] * 90)
    assert (
        seen[29] == pytest.approx(0.1)
        and seen[30] == pytest.approx(0.01)
        and seen[60] == pytest.approx(0.001)
    )


def test_warmup_then_step():
    seen = lrs(TrainConfig(data="x", warmup_epochs=4, lr=0.4, batch_size=1024, num_workers=4), [0.5] * 40)
    assert seen[0] == pytest.approx(0.4 / 5)
    assert seen[0] < seen[1] < seen[2] < seen[3] < seen[4] == pytest.approx(0.4)
    assert seen[31] == pytest.approx(0.04)


def test_plateau_divides_when_validation_error_stops_improving():
    errors = [0.9, 0.8, 0.7] + [0.7] * 10
    seen = lrs(TrainConfig(data="x", lr_schedule="plateau", plateau_patience=2), errors)
    # Epochs 4, 5, 6 do not improve on 0.7: more than `patience` bad epochs, so the rate drops.
    assert seen[:6] == pytest.approx([0.1] * 6)
    assert seen[6] == pytest.approx(0.01)


def test_cosine_reaches_zero_at_the_end():
    seen = lrs(TrainConfig(data="x", lr_schedule="cosine", epochs=10), [0.5] * 11)
    assert seen[0] == pytest.approx(0.1) and seen[10] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(seen, seen[1:], strict=False))


def test_no_bn_weight_decay_groups():
    model = build_model("cifar_resnet20")
    opt = build_optimizer(model, TrainConfig(data="x", arch="cifar_resnet20", no_bn_weight_decay=True))
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 1e-4 and free["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in free["params"])


def test_topk_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, ks=(1, 2)).tolist() == [1, 2]
    assert topk_correct(logits, labels, ks=(1, 5)).tolist() == [1, 3]  # k beyond the class count: all


@pytest.mark.parametrize(
    "bad",
    [
        dict(lr_schedule="linear"),
        dict(amp="fp8"),
        dict(augmentation="mixup"),
        dict(batch_size=100, num_workers=3),
    ],
)
def test_bad_config_values_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(data="x", **bad)


def test_rng_state_round_trips():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    saved = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(saved)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
