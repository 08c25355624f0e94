"""Print the model zoo as the paper's Tables 1 and 6: layers, params, GFLOPs, paper's figure."""

from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.jobrunner import run_job
from resnet_platform.models import get_spec, list_archs
from resnet_platform.models.summary import format_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model_summary.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--archs", default="", help="comma-separated names (default: all but cifar 1202)")
    parser.add_argument("--stride", default="v1", choices=["v1", "v1.5"], help="bottleneck stride placement")
    return parser


def archs_of(args: argparse.Namespace) -> list[str]:
    archs = args.archs.split(",") if args.archs else [a for a in list_archs() if not a.endswith("1202")]
    for arch in archs:
        get_spec(arch)  # an unknown name: one line listing the valid ones
    return archs


def main(argv: list[str] | None = None) -> int:
    return run_job(
        build_parser(),
        archs_of,
        lambda args, archs: print(format_table(archs, stride=args.stride)),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
