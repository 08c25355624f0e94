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
import os
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)
from mlflow.exceptions import MlflowException

from resnet_platform.console import add_verbose_flag, configure_output, ensure_ray
from resnet_platform.serving.batch import BatchPredictConfig, BatchPredictError, batch_predict
from resnet_platform.settings import HelpFormatter, add_flags, values_from_args
from resnet_platform.storage import StorageError


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the usage examples in the description kept as written."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(
        prog="batch_predict.py", description=__doc__, formatter_class=_HelpFormatter
    )
    groups = {"model": "model", "data": "input and placement", "compute": "model actors", "output": "output"}
    add_flags(parser, BatchPredictConfig, groups=groups, required=("model", "input", "output"))
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    config = BatchPredictConfig(**values_from_args(args, BatchPredictConfig))
    configure_output(args.verbose, platform_level=logging.WARNING)
    ensure_ray()
    try:
        summary = batch_predict(config)
    except (BatchPredictError, ValueError, FileNotFoundError, MlflowException, StorageError) as err:
        parser.exit(2, f"batch_predict.py: error: {str(err).splitlines()[0]}\n")
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
