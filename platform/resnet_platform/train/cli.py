"""Flags of ``jobs/train_imagenet.py``: generated from ``TrainConfig`` (one declaration per setting),
grouped, every default the paper's recipe unless ``--recipe`` names a preset (``train/recipes.py``):
the preset's values become the parser's defaults, so ``--help`` shows them and every flag given
overrides them."""

from __future__ import annotations

import argparse
import dataclasses

from resnet_platform.settings import HelpFormatter, add_flags, values_from_args

from .config import FLAG_GROUPS, TrainConfig
from .presets import RELATIVE_SIZES, relative_sizes
from .recipes import RECIPES, recipe_defaults, recipe_of

# Field defaults, read without building (and validating) a config.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

# Where the images are read and decoded: the same flags on every job that trains.
DATA_PATH_FLAGS = ("data_node_label", "data_node_resource", "decode", "prefetch_batches")
# Limits on the data: the same flags on every job that reads prepared shards.
DATA_LIMIT_FLAGS = ("max_image_pixels", "max_skipped_fraction")


class PresetSize(int):
    """A size the parser's default holds because the preset set it (argparse hands back a default
    object unchanged): :func:`config_from_args` tells it from a flag the user gave, and scales it
    with an overridden ``--image-size`` (``presets.relative_sizes``)."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The job's parser; ``argv`` (the arguments it will parse) picks the ``--recipe`` whose values
    are the defaults (the paper's when ``argv`` is None or names none)."""
    recipe = recipe_of(argv or [])
    p = argparse.ArgumentParser(
        prog="train_imagenet.py",
        description="Train a ResNet with Ray Train DDP on sharded ImageNet (local folder or s3://).",
        formatter_class=HelpFormatter,
    )
    groups = add_flags(
        p, TrainConfig, groups=FLAG_GROUPS, required=("data",), defaults=recipe_defaults(recipe)
    )
    preset = RECIPES[recipe]
    p.set_defaults(**{n: PresetSize(preset[n]) for n in ("image_size", *RELATIVE_SIZES) if n in preset})
    _both_switches(p, groups)
    groups["tracking"].add_argument("--no-mlflow", action="store_true", help="do not track this run")
    return p


def _both_switches(parser: argparse.ArgumentParser, groups: dict) -> None:
    """A switch a preset turns on becomes ``--no-x`` under that preset: accept ``--x`` and ``--no-x``
    under every preset, so the same command line works whichever ``--recipe`` it names."""
    switches = {name for values in RECIPES.values() for name, v in values.items() if isinstance(v, bool)}
    present = {opt for action in parser._actions for opt in action.option_strings}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in sorted(switches):
        group = groups[fields[name].metadata["resnet_platform"]["group"]]
        on, off = "--" + name.replace("_", "-"), "--no-" + name.replace("_", "-")
        if on not in present:
            group.add_argument(on, dest=name, action="store_true", help=argparse.SUPPRESS)
        if off not in present:
            group.add_argument(off, dest=name, action="store_false", help=argparse.SUPPRESS)


def parse_config(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``argv`` with the parser of the recipe it names."""
    parser = build_parser(argv)
    return parser, parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the flags say; a preset's sizes follow an ``--image-size`` given on the command line
    (``--recipe fast --image-size 32``: start 27, evaluation 43), unless given too."""
    values = values_from_args(args, TrainConfig)
    size = values.get("image_size")
    if size is not None and not isinstance(size, PresetSize):
        given = {n for n in RELATIVE_SIZES if not isinstance(values.get(n), PresetSize)}
        values.update(relative_sizes(values.get("recipe", "paper"), size, given=given))
    return TrainConfig(**{k: int(v) if isinstance(v, PresetSize) else v for k, v in values.items()})
