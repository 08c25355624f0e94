"""Classify images with a registered model: top-5 classes and probabilities per image.

python jobs/predict.py --model models:/resnet50-imagenet@champion cat.jpg dog.jpg
"""

from __future__ import annotations

import argparse
import logging

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import add_verbose_flag, configure_output
from resnet_platform.tracking import load_model, resolve_tracking_uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    configure_output(args.verbose, platform_level=logging.WARNING)
    model = load_model(args.model, tracking_uri=resolve_tracking_uri(args.tracking_uri), device=args.device)
    for path in args.images:
        (top,) = model.predict_topk([path], k=args.top_k)
        print(path)
        for rank, p in enumerate(top, 1):
            print(f"  {rank}. {p.label:<30} {p.probability:.4f}")


if __name__ == "__main__":
    main()
