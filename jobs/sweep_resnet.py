"""Sweep ResNet depth x learning rate with Ray Tune (ASHA early stopping), one Ray Train run per trial.

    python jobs/sweep_resnet.py --data DATA_URI --archs resnet18,resnet34 --lr-min 0.01 --lr-max 0.4 \\
        --samples 4 --epochs 30 --workers-per-trial 4 --use-gpu --max-concurrent 2 --name depth-lr
    python jobs/sweep_resnet.py ... --name depth-lr --resume      # continue after an interruption
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import add_verbose_flag, configure_output
from resnet_platform.data.checks import DataCheckError
from resnet_platform.train.init_from import InitFromError
from resnet_platform.tune.cli import build_parser, config_from_args
from resnet_platform.tune.sweep import SweepExistsError, format_report, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    configure_output(args.verbose)
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        outcome = run_sweep(config)
    except SweepExistsError as err:
        parser.error(str(err))
    except (DataCheckError, InitFromError) as err:  # bad data or weights, found before any trial starts
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(format_report(outcome))
    return 3 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
