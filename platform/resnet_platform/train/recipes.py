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
only records the name). What the presets leave out of their sources is listed in docs/training.md.

The presets themselves are plain data in ``train/presets.py``. Their sizes are relative to their
``image_size``: another ``--image-size`` (flag or ``recipe_config`` field) scales the progressive start,
the evaluation crop and resize, and the progressive step with it, unless those are given too.
"""

from __future__ import annotations

import dataclasses

from .config import TrainConfig
from .presets import RECIPE_NAMES, RECIPES, recipe_defaults, relative_sizes, scale_sizes

__all__ = [
    "RECIPES",
    "RECIPE_NAMES",
    "describe",
    "recipe_config",
    "recipe_defaults",
    "recipe_of",
    "scaled_recipe",
]


def recipe_config(recipe: str = "paper", **fields):
    """A ``TrainConfig`` with preset ``recipe``'s values, ``fields`` overriding them; with an
    ``image_size`` of its own, the preset's other sizes follow it (:func:`relative_sizes`)."""
    values = recipe_defaults(recipe)
    if "image_size" in fields:
        values.update(relative_sizes(recipe, fields["image_size"], given=set(fields)))
    return TrainConfig(**{**values, **fields})


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


IMAGENET_TRAIN_IMAGES = 1_281_167


def scaled_recipe(recipe: str, *, eval_size: int, batch_size: int, train_images: int | None = None, **fields):
    """Preset ``recipe`` for small data: every size scaled so that the evaluation crop is
    ``eval_size`` (the train/eval size ratios kept), the learning rate scaled linearly to
    ``batch_size``; with ``train_images``, the EMA's period and decay scaled from ImageNet's 1.28M
    images so that it averages over the same share of the run (torchvision's decay adjustment leaves
    the data set size out as a constant). ``fields`` override the result. How the demo data (32 px
    digits) runs a preset."""
    values = recipe_defaults(recipe)
    if train_images is not None and values.get("ema"):
        ratio = IMAGENET_TRAIN_IMAGES / train_images
        values["ema_decay"] = max(0.0, 1.0 - (1.0 - values["ema_decay"]) * ratio)
        values["ema_steps"] = max(1, round(values["ema_steps"] / ratio))
    base = TrainConfig(data="x", **{k: v for k, v in values.items() if k != "recipe"})
    values = scale_sizes(values, eval_size / (base.val_image_size or base.image_size))
    values.setdefault("image_size", eval_size)
    values["lr"] = base.base_lr * batch_size / base.batch_size
    values["batch_size"] = batch_size
    return TrainConfig(**{**values, **fields})
