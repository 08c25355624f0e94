"""Flags of ``jobs/train_imagenet.py``: generated from ``TrainConfig`` (one declaration per setting),
grouped, every default the paper's recipe."""

from __future__ import annotations

import argparse
import dataclasses

from resnet_platform.settings import HelpFormatter, add_flags, values_from_args

from .config import FLAG_GROUPS, TrainConfig

# Field defaults, read without building (and validating) a config.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

# Where the images are read and decoded: the same flags on every job that trains.
DATA_PATH_FLAGS = ("data_node_label", "data_node_resource", "decode", "prefetch_batches")
# Limits on the data: the same flags on every job that reads prepared shards.
DATA_LIMIT_FLAGS = ("max_image_pixels", "max_skipped_fraction")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_imagenet.py",
        description="Train a ResNet with Ray Train DDP on sharded ImageNet (local folder or s3://).",
        formatter_class=HelpFormatter,
    )
    groups = add_flags(p, TrainConfig, groups=FLAG_GROUPS, required=("data",))
    groups["tracking"].add_argument("--no-mlflow", action="store_true", help="do not track this run")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**values_from_args(args, TrainConfig))
