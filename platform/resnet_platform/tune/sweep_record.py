"""After a sweep: its rows read back from Tune's ResultGrid, the best trial's model recorded from the
checkpoint Ray Train kept as its best, the results on the parent MLflow run, the report printed."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from resnet_platform import storage
from resnet_platform.tracking.sweep_runs import SweepRun
from resnet_platform.tracking.training_run import Recorded, TrainingRun
from resnet_platform.train.config import TrainConfig

from . import trials
from .results import TrialRow, format_table, plot_error_vs_lr, to_csv, to_markdown
from .sweep_config import METRIC, PLOT_PNG, RESULTS_CSV, RESULTS_MD, SweepOutcome

log = logging.getLogger(__name__)


def collect_rows(results: Iterable, base: TrainConfig, *, finished: bool = True) -> list[TrialRow]:
    """One row per started trial from the ResultGrid (``results``): its hyperparameters, its
    reported epochs; what a trial did not vary comes from ``base``. ``finished``: the sweep ran to
    its end, so every trial not in error is TERMINATED; otherwise only those whose last result Tune
    marked done (the others are UNFINISHED)."""
    rows = []
    for result in results:
        params = result.config
        if params is None:  # the trial never started (an interrupted sweep)
            continue
        df = result.metrics_dataframe
        best_err, best_epoch, epochs_run = math.nan, 0, 0
        if df is not None and METRIC in df and len(df):
            df = df.dropna(subset=[METRIC])
            if len(df):
                i = df[METRIC].idxmin()
                best_err = float(df.loc[i, METRIC])
                best_epoch = int(df.loc[i, "epoch"])
                epochs_run = int(df["epoch"].max())
        if result.error is not None:
            status = "ERROR"
        elif finished or result.metrics.get("done"):
            status = "TERMINATED"
        else:
            status = "UNFINISHED"
        rows.append(
            TrialRow(
                trial=trials.trial_id(result),
                arch=params["arch"],
                lr=float(params["lr"]),
                weight_decay=float(params.get("weight_decay", base.weight_decay)),
                batch_size=int(params.get("batch_size", base.batch_size)),
                best_val_top1_error=best_err,
                best_epoch=best_epoch,
                epochs_run=epochs_run,
                stopped_early=status == "TERMINATED" and 0 < epochs_run < base.epochs,
                status=status,
            )
        )
    return rows


def best_recorded_checkpoint(fs: pafs.FileSystem, trial_path: str) -> tuple[Any, dict[str, Any]] | None:
    """The checkpoint Ray Train recorded as the trial's best, with the metrics reported with it.

    Read from the run's own record (``Result.from_path``: the checkpoint manager's snapshot, which
    lists only checkpoints whose upload finished), never by listing storage: a listing can return a
    half-written directory, and with ``--checkpoint-every > 1`` the best epoch may have no
    checkpoint at all. Returns None when the trial registered no checkpoint.
    """
    from ray.train import Result

    try:
        result = Result.from_path(trial_path, storage_filesystem=fs)
    except RuntimeError as e:  # no run folder or no snapshot: the trial never reported a checkpoint
        log.warning("no Ray Train record at %s: %s", trial_path, e)
        return None
    scored = [
        (c, m) for c, m in result.best_checkpoints or [] if m and not math.isnan(m.get(METRIC, math.nan))
    ]
    if not scored:
        return None
    checkpoint, metrics = min(scored, key=lambda cm: cm[1][METRIC])
    return checkpoint, dict(metrics)


def _as_dict(value) -> dict:
    """A checkpoint stores its config as a dict or as JSON text."""
    return json.loads(value) if isinstance(value, str) else dict(value)


def log_best_model(
    tracking_uri: str,
    trials: storage.Location,
    best: TrialRow,
    register_as: str | None,
    manifest,
    base: TrainConfig,
) -> Recorded | None:
    """Record the best trial's model (weights + architecture, from the checkpoint Ray Train recorded
    as its best) into its child run; register it if asked."""
    from resnet_platform.train.checkpoint import load_checkpoint
    from resnet_platform.train.run_record import training_record

    trial = trials.child(best.trial)
    recorded = best_recorded_checkpoint(trial.fs, trial.path)
    if recorded is None:
        log.warning("best trial %s left no checkpoint: no model logged", best.trial)
        return None
    checkpoint, best_metrics = recorded  # the weights' own metrics, not the best epoch's
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    config = replace(
        TrainConfig.from_dict(_as_dict(state["config"])),
        register_as=register_as,
        mlflow_run_id=best.mlflow_run_id,
    )
    record = training_record(config, manifest, list(state["history"]), best_metrics, checkpoint)
    run = TrainingRun(tracking_uri, base.tracking_limits(), run_id=best.mlflow_run_id)
    return run.record(record)


def log_results(sweep_run: SweepRun, outcome: SweepOutcome) -> None:
    """The results table (markdown, CSV), the error-vs-lr plot and summary metrics on the parent."""
    rows = outcome.rows
    summary = {
        "trials": len(rows),
        "trials_stopped_early": sum(r.stopped_early for r in rows),
        "trials_failed": sum(r.status == "ERROR" for r in rows),
    }
    if outcome.best is not None:
        summary["best_val_top1_error"] = outcome.best.best_val_top1_error
    with tempfile.TemporaryDirectory() as tmp:
        plot = plot_error_vs_lr(rows, Path(tmp) / PLOT_PNG, title=f"sweep {outcome.name}")
        sweep_run.log_results(
            texts={RESULTS_MD: to_markdown(rows), RESULTS_CSV: to_csv(rows)},
            figures={PLOT_PNG: plot},
            metrics=summary,
        )


def format_report(outcome: SweepOutcome) -> str:
    lines = [format_table(outcome.rows), f"sweep: {outcome.path}"]
    if outcome.parent_run_id:
        lines.append(f"MLflow parent run: {outcome.parent_run_id}")
    if outcome.interrupted:
        lines.append("interrupted: rerun with --resume (same --name and --storage) to finish it")
    if outcome.best is not None:
        lines.append(
            f"best: trial {outcome.best.trial} {outcome.best.arch} lr {outcome.best.lr:.4g} "
            f"val top-1 error {outcome.best.best_val_top1_error:.4f} (MLflow run {outcome.best.mlflow_run_id})"
        )
    if outcome.model_version:
        lines.append(f"registered model version: {outcome.model_version}")
    return "\n".join(lines)
