"""Classify images with a registered model: top-5 classes and probabilities per image.

python jobs/predict.py --model models:/resnet50-imagenet@champion cat.jpg dog.jpg
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.errors import ConfigError
from resnet_platform.jobrunner import run_job
from resnet_platform.tracking import load_model, resolve_tracking_uri


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="models:/NAME@alias, models:/NAME/VERSION, runs:/... or a path"
    )
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="classes printed per image")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    parser.add_argument("--device", default="cpu")
    return parser


def check(args: argparse.Namespace) -> argparse.Namespace:
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    return args


def predict(args: argparse.Namespace, _: argparse.Namespace) -> None:
    model = load_model(args.model, tracking_uri=resolve_tracking_uri(args.tracking_uri), device=args.device)
    for path in args.images:
        (top,) = model.predict_topk([path], k=args.top_k)
        print(path)
        for rank, p in enumerate(top, 1):
            print(f"  {rank}. {p.label:<30} {p.probability:.4f}")


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), check, predict, argv=argv, platform_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
