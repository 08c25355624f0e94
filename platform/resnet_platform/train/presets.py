"""The ``--recipe`` presets as plain data: named sets of ``TrainConfig`` defaults (sources and what
each leaves out: ``train/recipes.py`` and docs/training.md).

Plain data with no imports, so ``train/config.py`` can check a recipe's name without importing the
code that builds configs from presets (``train/recipes.py`` imports the config).

Sizes are the sources' own (ImageNet, 224 px evaluation). A preset's sizes are relative to its
``image_size``: given another ``--image-size``, :func:`relative_sizes` scales the others with it.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "torchvision-v2": {
        "batch_size": 1024,  # 8 GPUs x 128
        "lr": 0.5,
        "lr_schedule": "cosine",
        "warmup_epochs": 5,
        "warmup_start_factor": 0.01,  # --lr-warmup-method linear --lr-warmup-decay 0.01
        "weight_decay": 2e-5,
        "no_bn_weight_decay": True,  # --norm-weight-decay 0.0
        "label_smoothing": 0.1,
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
        "augmentation": "rrc",
        "auto_augment": "ta_wide",
        "random_erase": 0.1,
        "ema": True,  # --model-ema --model-ema-steps 32 --model-ema-decay 0.99998
        "ema_steps": 32,
        "ema_decay": 0.99998,
        "register_ema": True,
        "image_size": 176,  # --train-crop-size 176
        "val_image_size": 224,  # --val-crop-size 224
        "val_resize_size": 232,  # --val-resize-size 232
    },
    "fast": {
        "epochs": 16,
        "batch_size": 1024,
        "lr": 1.7 * 1024 / 4096,  # FFCV: lr 1.7 at 8 GPUs x 512, scaled linearly to this batch
        "lr_schedule": "cosine",  # FFCV: linear up to epoch 2, linear down to 0 ("cyclic")
        "warmup_epochs": 2,
        "weight_decay": 1e-4,
        "no_bn_weight_decay": True,
        "label_smoothing": 0.1,
        "augmentation": "rrc",
        "image_size": 192,  # max_res
        "progressive_min_size": 160,  # min_res
        "progressive_ramp": (0.7, 0.83),  # start_ramp 11 / end_ramp 13 of 16 epochs
        "progressive_step": 32,
        "val_image_size": 256,  # validation resolution 256 (crop ratio 224/256: resize 293)
    },
}
RECIPE_NAMES = tuple(RECIPES)


# A preset's sizes that follow an overridden --image-size (train/recipes.py, cli.py).
RELATIVE_SIZES = ("progressive_min_size", "val_image_size", "val_resize_size", "progressive_step")


def recipe_defaults(name: str) -> dict[str, Any]:
    """The field values preset ``name`` sets (plus the ``recipe`` field itself)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPE_NAMES)}")
    return {**RECIPES[name], "recipe": name}


def scale_sizes(
    values: dict[str, Any], factor: float, *, keep: set[str] | frozenset = frozenset()
) -> dict[str, Any]:
    """The sizes of ``values`` (``image_size`` and :data:`RELATIVE_SIZES`) times ``factor``, rounded,
    at least 1; those named in ``keep`` and those unset stay as they are."""
    out = dict(values)
    for name in ("image_size", *RELATIVE_SIZES):
        if name not in keep and out.get(name) is not None:
            out[name] = max(1, round(out[name] * factor))
    return out


def relative_sizes(
    name: str, image_size: int, *, given: set[str] | frozenset = frozenset()
) -> dict[str, Any]:
    """Preset ``name``'s sizes for a run at ``image_size``: its progressive start, evaluation crop and
    resize (and the progressive step) scaled by ``image_size`` / the preset's own ``image_size``,
    except those in ``given`` (set by the user). Empty for a preset without an ``image_size``."""
    preset = RECIPES[name]
    if "image_size" not in preset:
        return {}
    sizes = {k: preset[k] for k in RELATIVE_SIZES if k in preset and k not in given}
    scaled = scale_sizes(sizes, image_size / preset["image_size"])
    return scaled
