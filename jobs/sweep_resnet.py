"""Sweep ResNet depth x learning rate with Ray Tune (ASHA early stopping), one Ray Train run per trial.

    python jobs/sweep_resnet.py --data DATA_URI --archs resnet18,resnet34 --lr-min 0.01 --lr-max 0.4 \\
        --samples 4 --epochs 30 --workers-per-trial 4 --use-gpu --max-concurrent 2 --name depth-lr
    python jobs/sweep_resnet.py ... --name depth-lr --resume      # continue after an interruption
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.jobrunner import run_job
from resnet_platform.tune.cli import build_parser, config_from_args


def sweep(args, config) -> int:
    from resnet_platform.tune.sweep import format_report, run_sweep  # Ray Tune, once the flags are valid

    outcome = run_sweep(config)
    print(format_report(outcome))
    return 3 if outcome.interrupted else 0  # 3: interrupted, rerun with --resume


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), config_from_args, sweep, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
