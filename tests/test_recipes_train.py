"""Ray Train runs with the modern techniques on: exact resume, and every --recipe preset learning the
digits (each a few epochs at the digits' scale)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train import DIGITS_VAL_IMAGES, small_config

from resnet_platform.train import FaultInjection
from resnet_platform.train.checkpoint import STATE_FILE, load_checkpoint
from resnet_platform.train.recipes import RECIPES, scaled_recipe
from resnet_platform.train.runner import run_training

DIGITS_TRAIN_IMAGES = 1437


def final_state(outcome) -> dict:
    latest = sorted(Path(outcome.run_path).glob("checkpoint_epoch_*"))[-1]
    return load_checkpoint(latest)


@pytest.mark.slow
def test_resume_is_exact_with_every_technique_on(digits_shards, ray_local, tmp_path):
    """Mixup + CutMix + label smoothing + EMA + gradient accumulation + progressive resizing with a
    separate eval size: an interrupted and resumed run ends with the uninterrupted run's weights and
    EMA, bit for bit (one worker, ordered data). The platform's only resume-to-the-same-weights test:
    the plain loop's path (no technique on) is a subset of this one."""
    # 16 px, the digits' size in test_train: a quarter of 32 px's compute, over three runs.
    techniques = dict(
        num_workers=1, batch_size=64, epochs=2, deterministic=True, shuffle_buffer=0,
        mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1, ema=True, ema_steps=2, ema_decay=0.999,
        grad_accum_steps=2, image_size=16, progressive_min_size=8, progressive_ramp=(0.0, 0.5),
        progressive_step=8, val_image_size=16, register_ema=True,
    )  # fmt: skip
    reference = run_training(small_config(digits_shards, tmp_path, name="straight", **techniques))
    assert [int(h["train_image_size"]) for h in reference.history] == [8, 16]
    assert all("ema_val_top1_error" in h for h in reference.history)
    # 1437 images: 45 micro-batches of 32 per epoch, 2 per optimizer step: 23 steps (the last short).
    steps = math.ceil(math.ceil(DIGITS_TRAIN_IMAGES / 32) / 2)
    assert [int(h["step"]) for h in reference.history] == [steps, 2 * steps]

    interrupted = small_config(
        digits_shards, tmp_path, name="interrupted", fault=FaultInjection(epoch=1, step=0, kind="raise"),
        **techniques,
    )  # fmt: skip
    with pytest.raises(Exception, match="injected fault"):
        run_training(interrupted)
    assert (tmp_path / "interrupted" / "checkpoint_epoch_0001" / STATE_FILE).exists()
    assert not (tmp_path / "interrupted" / "checkpoint_epoch_0002").exists()
    resumed = run_training(replace(interrupted, fault=None, resume=True))
    assert [int(h["epoch"]) for h in resumed.history] == [1, 2]
    ours, theirs = final_state(resumed), final_state(reference)
    for part in ("model", "ema"):
        a = ours["model"] if part == "model" else ours["model_ema"]["model"]
        b = theirs["model"] if part == "model" else theirs["model_ema"]["model"]
        for key, value in b.items():
            assert torch.equal(a[key], value), (part, key)
    assert ours["model_ema"]["updates"] == theirs["model_ema"]["updates"] == 2 * steps // 2
    assert resumed.history[-1]["ema_val_top1_error"] == reference.history[-1]["ema_val_top1_error"]
    # --register-ema: checkpoints are ranked by the EMA's validation error.
    assert resumed.best_metrics["ema_val_top1_error"] == min(h["ema_val_top1_error"] for h in resumed.history)


@pytest.mark.slow
def test_the_demo_data_trains_with_each_preset(digits_shards, ray_local, tmp_path):
    """The modern presets at the digits' scale (eval crop 32 px, batch 64, 2 epochs, 2 workers) run
    through Ray Train with what they turn on (fast's ramp moved to grow within 2 epochs). ``paper``
    is ``TrainConfig()``'s defaults (test_techniques), which every run in test_train.py trains."""
    assert set(RECIPES) == {"paper", "torchvision-v2", "fast"}
    results = {}
    for recipe in ("torchvision-v2", "fast"):
        config = scaled_recipe(
            recipe, eval_size=32, batch_size=64, train_images=DIGITS_TRAIN_IMAGES,
            data=digits_shards, arch="cifar_resnet20", epochs=2, num_workers=2, cpus_per_worker=0.5,
            storage=str(tmp_path), name=f"preset-{recipe}", seed=0, shuffle_buffer=256,
            **({"progressive_ramp": (0.0, 0.5)} if recipe == "fast" else {}),
        )  # fmt: skip
        outcome = run_training(config)
        history = outcome.history
        assert [int(h["epoch"]) for h in history] == [1, 2], recipe
        assert all(int(h["val_images"]) == DIGITS_VAL_IMAGES for h in history), recipe
        assert all(math.isfinite(h["train_loss"]) for h in history), recipe
        results[recipe] = history[-1]
    assert "ema_val_top1_error" in results["torchvision-v2"] and "ema_val_top1_error" not in results["fast"]
    assert int(results["fast"]["train_image_size"]) == 24  # grown from 20: 160/192 of it, eval at 32
    # Ten classes: chance is 0.9; 2 epochs at lr 0.03 are too few to ask Mixup/CutMix/TrivialAugment
    # (or 20-24 px crops) for a given error, only for finite losses and whole validations.
