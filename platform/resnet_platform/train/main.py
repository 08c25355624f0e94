"""One call for the job: fit a config and, unless told not to, track it in MLflow.

The MLflow run (:class:`~resnet_platform.tracking.training_run.TrainingRun`) is opened by the driver
before the workers start (they log into it by id) and closed after the fit, with the best checkpoint
logged as a model and optionally registered.
"""

from __future__ import annotations

from dataclasses import replace

from .config import TrainConfig
from .runner import TrainingOutcome, run_training


def train_and_track(config: TrainConfig, *, track: bool = True) -> TrainingOutcome:
    tracker = None
    if track:  # MLflow is imported only by a tracked run
        from resnet_platform.tracking.training_run import TrainingRun

        tracker = TrainingRun(config.tracking_uri)
        config = replace(config, tracking_uri=tracker.tracking_uri)  # the workers log to the same store
    return run_training(config, tracker=tracker)


def format_report(outcome: TrainingOutcome) -> str:
    cols = [
        "epoch",
        "train_loss",
        "train_top1_error",
        "val_top1_error",
        "val_top5_error",
        "images_per_s",
        "data_wait_s",
    ]
    lines = ["  ".join(f"{c:>16}" for c in cols)]
    for row in outcome.history:
        lines.append("  ".join(f"{row.get(c, float('nan')):>16.4f}" for c in cols))
    lines.append(f"run: {outcome.run_path}")
    if outcome.best_metrics:
        lines.append(f"best validation top-1 error: {outcome.best_metrics['val_top1_error']:.4f}")
    if outcome.mlflow_run_id:
        lines.append(f"MLflow run: {outcome.mlflow_run_id}")
    if outcome.model_version:
        lines.append(f"registered model version: {outcome.model_version}")
    return "\n".join(lines)


__all__ = ["format_report", "train_and_track"]
