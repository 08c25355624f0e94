"""Classify a folder / S3 prefix of images, or a prepared split, with a registered model on Ray Data.

    python jobs/batch_predict.py --model models:/digits-resnet20@champion \\
        --input demo-output/digits-shards --split val --output preds/ --concurrency 2

Writes Parquet rows (key, label, top_indices, top_classes, top_probabilities, error) and prints a
summary; with a labelled split, top-1/top-5 error are printed and logged to the version's MLflow run.
Undecodable files are listed with their error. On a cluster: ray job submit ... -- python jobs/batch_predict.py
"""

from __future__ import annotations

import logging
import os
import sys

import _bootstrap  # noqa: F401  (puts platform/ on sys.path in a bare checkout)
from mlflow.exceptions import MlflowException

from resnet_platform.serving.batch import BatchPredictConfig, BatchPredictError, batch_predict, ensure_ray
from resnet_platform.serving.cli import build_parser, config_from_args
from resnet_platform.storage import StorageError


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser(BatchPredictConfig, "batch_predict.py", __doc__)
    config = config_from_args(BatchPredictConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ensure_ray()
    try:
        summary = batch_predict(config)
    except (BatchPredictError, ValueError, FileNotFoundError, MlflowException, StorageError) as err:
        parser.exit(2, f"batch_predict.py: error: {str(err).splitlines()[0]}\n")
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
