"""Train a ResNet on sharded ImageNet with Ray Train DDP.

    python jobs/train_imagenet.py --data DATA_URI --arch resnet50          # local Ray
    python jobs/train_imagenet.py --data DATA_URI --recipe torchvision-v2 --epochs 100   # a preset
    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/train_imagenet.py --data s3://bucket/imagenet --num-workers 16 --use-gpu ...
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.jobrunner import run_job
from resnet_platform.train.cli import build_parser, config_from_args
from resnet_platform.train.recipes import describe


def train(args, config) -> None:
    # Torch and Ray Train are imported once the settings are known to be valid: a bad flag is a
    # second's wait, not ten.
    from resnet_platform.train.main import format_report, train_and_track

    print(describe(config), flush=True)  # the effective values (MLflow gets them all as params)
    print(format_report(train_and_track(config, track=not args.no_mlflow)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # --recipe's preset gives the parser's defaults; flags override them
    return run_job(build_parser(argv), config_from_args, train, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
