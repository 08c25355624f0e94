"""Classify a folder / S3 prefix of images, or a prepared split, with a registered model on Ray Data.

    python jobs/batch_predict.py --model models:/digits-resnet20@champion \\
        --input demo-output/digits-shards --split val --output preds/ --concurrency 2

Writes Parquet rows (key, label, top_indices, top_classes, top_probabilities, error) and prints a
summary; with a labelled split, top-1/top-5 error are printed and logged to the version's MLflow run.
Undecodable files are listed with their error. On a cluster: ray job submit ... -- python jobs/batch_predict.py
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)

from resnet_platform.console import ensure_ray
from resnet_platform.jobrunner import config_from_flags, run_job
from resnet_platform.serving.batch import BatchPredictConfig, batch_predict
from resnet_platform.settings import HelpFormatter, add_flags
from resnet_platform.tracking.registry import pin_version, resolve_tracking_uri


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the usage examples in the description kept as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch_predict.py", description=__doc__, formatter_class=_HelpFormatter
    )
    groups = {"model": "model", "data": "input and placement", "compute": "model actors", "output": "output"}
    add_flags(parser, BatchPredictConfig, groups=groups, required=("model", "input", "output"))
    return parser


def predict(args: argparse.Namespace, config: BatchPredictConfig) -> None:
    if config.model.startswith("models:/"):  # an unknown model or alias: one line before Ray starts
        pin_version(config.model, resolve_tracking_uri(config.tracking_uri))
    ensure_ray()
    print(batch_predict(config).format())


def main(argv: list[str] | None = None) -> int:
    return run_job(
        build_parser(),
        config_from_flags(BatchPredictConfig),
        predict,
        argv=argv,
        platform_level=logging.WARNING,
    )


if __name__ == "__main__":
    sys.exit(main())
