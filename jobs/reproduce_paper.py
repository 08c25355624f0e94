"""Reproduce the paper's CIFAR-10 experiments: plain against residual nets as a Ray Tune grid.

    python jobs/reproduce_paper.py --data /data/cifar-10-python.tar.gz --output paper-results
    ray job submit --address http://head:8265 --working-dir . -- \\
        python jobs/reproduce_paper.py --data s3://bucket/cifar-10-python.tar.gz --use-gpu \\
            --max-concurrent-trials 8 --depths 20,32,44,56,110 --storage s3://bucket/runs

Writes table6.md (params and test error beside the paper's Table 6), figure6.png (training error
dashed, test error bold, against iterations; plain left, ResNets right), figure7.png (std of the 3x3
layer responses) and results.json to --output, and logs them to a summary MLflow run; every net is
also its own tracked training run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.jobrunner import run_job
from resnet_platform.paper.reproduce import ReproduceConfig, reproduce
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce_paper.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    groups = add_flags(
        p,
        ReproduceConfig,
        groups={"paper": "the comparison", "execution": "execution", "output": "output and tracking"},
        required=("data",),
    )
    groups["output"].add_argument("--no-mlflow", action="store_true", help="do not track the grid")
    return p


def check(args: argparse.Namespace) -> ReproduceConfig:
    """Building the config checks every setting and each net's training config (before Ray)."""
    return ReproduceConfig(track=not args.no_mlflow, **values_from_args(args, ReproduceConfig))


def run(args: argparse.Namespace, config: ReproduceConfig) -> None:
    outcome = reproduce(config)
    print(Path(outcome.files["table6.md"]).read_text())
    for name, path in outcome.files.items():
        print(f"{name}: {path}")


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), check, run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
