"""A preset's sizes follow the --image-size it is given (``train/presets.py``): its progressive start,
evaluation crop and resize scale with an overridden --image-size, a size given too stays as given."""

from __future__ import annotations

import pytest

from resnet_platform.train.cli import config_from_args, parse_config
from resnet_platform.train.recipes import recipe_config
from resnet_platform.train.resolution import eval_sizes, schedule


def _config(*flags: str):
    _, args = parse_config(["--data", "/d", *flags])
    return config_from_args(args)


def test_fast_at_32_px_scales_its_start_and_evaluation_sizes():
    """Was: "progressive resizing grows to --image-size 32: the start size 160 must not exceed it"."""
    c = _config("--recipe", "fast", "--image-size", "32")
    # FFCV's 160 -> 192, eval 256 (resize 293 by the 256/224 rule), all times 32/192.
    assert (c.image_size, c.progressive_min_size, c.progressive_step, c.val_image_size) == (32, 27, 5, 43)
    assert eval_sizes(c) == (43, 49)
    sizes = schedule(c)
    assert sizes[0] == 27 and sizes[-1] == 32 and sizes == sorted(sizes)


def test_torchvision_v2_at_32_px_keeps_its_train_eval_ratios():
    c = _config("--recipe", "torchvision-v2", "--image-size", "32")
    # torchvision's 176 train / 224 crop / 232 resize, times 32/176.
    assert (c.image_size, c.val_image_size, c.val_resize_size) == (32, 41, 42)
    assert eval_sizes(c) == (41, 42)


def test_a_preset_at_its_own_size_and_sizes_given_too_are_left_alone():
    fast = _config("--recipe", "fast")
    assert (fast.image_size, fast.progressive_min_size, fast.val_image_size) == (192, 160, 256)
    c = _config(
        "--recipe", "fast", "--image-size", "32", "--val-image-size", "40", "--progressive-min-size", "16"
    )
    assert (c.progressive_min_size, c.val_image_size, c.progressive_step) == (16, 40, 5)
    paper = _config("--image-size", "32")  # the paper's recipe has no preset sizes to scale
    assert (paper.val_image_size, paper.progressive_min_size) == (None, None)


@pytest.mark.parametrize("recipe", ["fast", "torchvision-v2"])
def test_python_and_the_flags_resolve_the_same_sizes(recipe):
    flags = _config("--recipe", recipe, "--image-size", "32")
    assert recipe_config(recipe, data="/d", image_size=32) == flags
