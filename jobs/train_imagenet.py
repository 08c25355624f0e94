"""Train a ResNet on sharded ImageNet with Ray Train DDP.

    python jobs/train_imagenet.py --data DATA_URI --arch resnet50          # local Ray
    python jobs/train_imagenet.py --data DATA_URI --recipe torchvision-v2 --epochs 100   # a preset
    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/train_imagenet.py --data s3://bucket/imagenet --num-workers 16 --use-gpu ...
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import add_verbose_flag, configure_output
from resnet_platform.data.checks import DataCheckError
from resnet_platform.storage import StorageError
from resnet_platform.tracking.training_run import TrackingUnavailableError
from resnet_platform.train.cli import build_parser, config_from_args
from resnet_platform.train.init_from import InitFromError
from resnet_platform.train.main import format_report, train_and_track
from resnet_platform.train.recipes import describe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)  # --recipe's preset gives the defaults; flags override them
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    configure_output(args.verbose)
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    print(describe(config), flush=True)  # the effective values (MLflow gets them all as params)
    # Bad data (named data set, split or shard), storage, MLflow or --init-from the run cannot use: one line.
    try:
        outcome = train_and_track(config, track=not args.no_mlflow)
    except (DataCheckError, StorageError, TrackingUnavailableError, InitFromError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(format_report(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
