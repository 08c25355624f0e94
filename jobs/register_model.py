"""Point a registry alias (champion, candidate) at a model version, optionally only if it is better.

    python jobs/register_model.py --name resnet50-imagenet --version 3 --alias champion --only-if-better

Lower ``--metric`` is better; it is read from the version's tags (set at registration) or its run.
Exit status 0 whether or not the alias moved; the reason is printed.
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.jobrunner import run_job
from resnet_platform.tracking import decide_promotion, resolve_tracking_uri, set_alias


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="register_model.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--version", required=True, help="model version to point the alias at")
    parser.add_argument("--alias", default="champion", help="alias, e.g. champion or candidate")
    parser.add_argument(
        "--only-if-better", action="store_true", help="move the alias only if this version's metric is lower"
    )
    parser.add_argument("--metric", default="val_top1_error", help="metric compared by --only-if-better")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    return parser


def promote(args: argparse.Namespace) -> bool:
    """Prints whether the alias moved and why; returns whether it did."""
    uri = resolve_tracking_uri(args.tracking_uri)
    ok, reason = decide_promotion(
        args.name,
        args.version,
        args.alias,
        only_if_better=args.only_if_better,
        metric=args.metric,
        tracking_uri=uri,
    )
    if ok:
        set_alias(args.name, args.alias, args.version, uri)
    print(f"{'promoted' if ok else 'not promoted'}: {reason}")
    return ok


def main(argv: list[str] | None = None) -> bool:
    """Whether the alias moved (the process exits 0 either way)."""
    moved: list[bool] = []
    run_job(
        build_parser(),
        lambda args: args,
        lambda args, _: moved.append(promote(args)),
        argv=argv,
        platform_level=logging.WARNING,
    )
    return bool(moved and moved[0])


if __name__ == "__main__":
    main()
    sys.exit(0)
