"""Shard an ILSVRC2012 folder into Parquet + manifest.json on a local folder or s3://bucket/prefix.

    python jobs/prepare_imagenet.py --source /data/ILSVRC2012 --output s3://bucket/imagenet

Rerun the same command after an interruption: complete shards are kept, the rest is written.
"""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.data.checks import DEFAULT_MAX_IMAGE_PIXELS
from resnet_platform.data.prepare import PrepareConfig, prepare_imagenet
from resnet_platform.errors import ConfigError
from resnet_platform.jobrunner import run_job


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_imagenet.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--source", required=True, help="ILSVRC2012 root holding train/ and val/")
    p.add_argument("--output", required=True, help="local folder, file:// or s3://bucket/prefix")
    p.add_argument("--splits", default="train,val", help="comma-separated splits (default train,val)")
    p.add_argument("--shard-size-mb", type=float, default=128.0, help="target shard size (default 128)")
    p.add_argument("--max-side", type=int, default=None, help="re-encode images larger than this side")
    p.add_argument("--quality", type=int, default=None, help="JPEG quality when re-encoding (default 90)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="reject images with more pixels (width x height) than this (default: Pillow's limit)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    return config_from_args(build_parser().parse_args(argv))


def config_from_args(a: argparse.Namespace) -> PrepareConfig:
    """Checks the numbers' ranges, before anything is read or Ray starts."""
    for flag, value, least in (
        ("--shard-size-mb", a.shard_size_mb, 0.001),
        ("--max-side", a.max_side, 1),
        ("--quality", a.quality, 1),
        ("--num-cpus", a.num_cpus, 1),
        ("--max-image-pixels", a.max_image_pixels, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be at least {least:g}, got {value}")
    if a.quality is not None and a.quality > 100:
        raise ConfigError(f"--quality must be at most 100, got {a.quality}")
    return PrepareConfig(
        source=a.source,
        output=a.output,
        splits=tuple(s for s in a.splits.split(",") if s),
        shard_size_mb=a.shard_size_mb,
        max_side=a.max_side,
        quality=a.quality,
        num_cpus=a.num_cpus,
        max_image_pixels=a.max_image_pixels,
    )


def prepare(args: argparse.Namespace, config: PrepareConfig) -> int:
    summary = prepare_imagenet(config)
    print(summary)
    return 0 if summary.complete else 1  # images left unread: rerun the same command


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), config_from_args, prepare, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
