"""``--recipe`` presets: named sets of defaults for ``TrainConfig``; any explicit flag overrides them.

- ``paper``: He et al. 2015, section 3.4 (the field defaults: nothing changes).
- ``torchvision-v2``: torchvision's "new recipe" for ResNet-50 (``ResNet50_Weights.IMAGENET1K_V2``,
  80.858% top-1; recipe in pytorch/vision#3995 and ``references/classification``), except the epochs
  (600 there), which stay the user's (``--epochs``).
- ``fast``: FFCV's ResNet-50 schedules (libffcv/ffcv-imagenet ``rn50_configs``): 16 epochs, progressive
  resizing 160 -> 192, evaluation at 256, label smoothing, no BN weight decay.

A preset is applied where flags become a config: ``train_imagenet.py`` parses ``--recipe`` first and
uses the preset as the parser's defaults, so ``--help`` shows the preset's values and every flag given
replaces its value. In Python, :func:`recipe_config` does the same (``TrainConfig(recipe=...)`` alone
only records the name). What the presets leave out of their sources is listed in the README.
"""

from __future__ import annotations

import dataclasses
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


def recipe_defaults(name: str) -> dict[str, Any]:
    """The field values preset ``name`` sets (plus the ``recipe`` field itself)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPE_NAMES)}")
    return {**RECIPES[name], "recipe": name}


def recipe_config(recipe: str = "paper", **fields):
    """A ``TrainConfig`` with preset ``recipe``'s values, ``fields`` overriding them."""
    from .config import TrainConfig

    return TrainConfig(**{**recipe_defaults(recipe), **fields})


def recipe_of(argv: list[str]) -> str:
    """The ``--recipe`` an argument list names (``paper`` when none); an unknown name is left for
    the full parser to refuse."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", default="paper")
    known, _ = pre.parse_known_args(argv)
    return known.recipe if known.recipe in RECIPES else "paper"


# What `describe` prints: every setting a preset touches, plus these, in declaration order.
_ALWAYS_SHOWN = ("arch", "epochs", "batch_size", "num_workers", "grad_accum_steps", "amp")


def describe(config) -> str:
    """The effective values of the recipe's settings, one block, for the start of a run."""
    shown = set(_ALWAYS_SHOWN)
    for values in RECIPES.values():
        shown |= set(values)
    parts = []
    for f in dataclasses.fields(config):
        if f.name in shown:
            value = getattr(config, f.name)
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            parts.append(f"{f.name}={value}")
    base_lr = f"effective lr {config.base_lr:g}"
    return f"recipe {config.recipe} ({base_lr}): " + " ".join(parts)


_SIZES = ("image_size", "val_image_size", "val_resize_size", "progressive_min_size")


IMAGENET_TRAIN_IMAGES = 1_281_167


def scaled_recipe(recipe: str, *, eval_size: int, batch_size: int, train_images: int | None = None, **fields):
    """Preset ``recipe`` for small data: every size scaled so that the evaluation crop is
    ``eval_size`` (the train/eval size ratios kept), the learning rate scaled linearly to
    ``batch_size``; with ``train_images``, the EMA's period and decay scaled from ImageNet's 1.28M
    images so that it averages over the same share of the run (torchvision's decay adjustment leaves
    the data set size out as a constant). ``fields`` override the result. How the demo data (32 px
    digits) runs a preset."""
    from .config import TrainConfig

    values = recipe_defaults(recipe)
    if train_images is not None and values.get("ema"):
        ratio = IMAGENET_TRAIN_IMAGES / train_images
        values["ema_decay"] = max(0.0, 1.0 - (1.0 - values["ema_decay"]) * ratio)
        values["ema_steps"] = max(1, round(values["ema_steps"] / ratio))
    base = TrainConfig(data="x", **{k: v for k, v in values.items() if k != "recipe"})
    factor = eval_size / (base.val_image_size or base.image_size)
    for name in _SIZES:
        if values.get(name) is not None:
            values[name] = max(1, round(values[name] * factor))
    values.setdefault("image_size", eval_size)
    if "progressive_step" in values:
        values["progressive_step"] = max(1, round(values["progressive_step"] * factor))
    values["lr"] = base.base_lr * batch_size / base.batch_size
    values["batch_size"] = batch_size
    return TrainConfig(**{**values, **fields})
