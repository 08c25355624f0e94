"""A hyperparameter sweep: Ray Tune over a driver function that fits one distributed TorchTrainer.

Trials run as every Tune job of the platform does (:mod:`.trials`): each runs :func:`train_trial`,
a function trainable that builds and fits a ``TorchTrainer`` with
:func:`~resnet_platform.train.runner.run_training`; Ray Train's ``TuneReportCallback`` forwards
every epoch's report (rank 0's metrics) to Tune, where ASHA compares ``val_top1_error`` at its rungs
and stops the worse trials; the driver reads them back from the ``ResultGrid``. A trial itself holds
almost no resources; its Train workers reserve theirs, so ``max_concurrent`` x ``workers_per_trial``
must fit the cluster.

Ray must run its dashboard (``ray[default]``; the default of ``ray start`` and ``ray.init``): when ASHA
stops a trial, or it reaches ``max_t``, Tune kills the trial's actor and with it the TrainController,
and only Ray Train's placement-group cleaner, which asks the dashboard's state API, frees the
worker group's reserved CPUs. Without it (``include_dashboard=False``) the next trial waits forever.

Storage, under ``<storage>/<name>``: Tune's experiment state (what ``--resume`` restores, finished
trials are not rerun) and ``trials/<trial id>``, each trial's Ray Train run with its checkpoints (an
interrupted trial continues from its latest one).

MLflow (:mod:`resnet_platform.tracking.sweep_runs`): one parent run named after the sweep, a child
run per trial that its rank-0 worker logs every epoch into; after the sweep the best trial's model
from its best checkpoint (registered with ``register_best``) in its child, the results table and the
error-vs-learning-rate plot on the parent.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from resnet_platform import storage
from resnet_platform._compat import asha_max_t, watch_tune_interrupt
from resnet_platform.errors import UserError
from resnet_platform.tracking.sweep_runs import SweepRun, TrialEnd, TrialRun
from resnet_platform.tracking.training_run import Recorded, TrainingRun
from resnet_platform.train.config import TrainConfig

from . import trials
from .results import TrialRow, best_row, format_table, plot_error_vs_lr, to_csv, to_markdown
from .space import SearchSpace

log = logging.getLogger(__name__)

METRIC = "val_top1_error"
MODE = "min"
TRIALS_DIR = "trials"
RESULTS_MD = "sweep_results.md"
RESULTS_CSV = "sweep_results.csv"
PLOT_PNG = "val_error_vs_lr.png"


class SweepExistsError(UserError, ValueError):
    pass


@dataclass
class SweepConfig:
    """``base`` holds every training setting a trial does not vary (data, epochs, workers per
    trial, storage, experiment, ...); ``space`` what it does."""

    base: TrainConfig
    space: SearchSpace
    name: str | None = None
    grace_epochs: int = 1
    reduction_factor: float = 2.0
    max_concurrent: int = 1
    register_best: str | None = None
    resume: bool = False
    search_seed: int | None = None  # seeds the learning-rate draws

    def validate(self) -> None:
        self.space.validate(self.base.num_workers)
        if not 1 <= self.grace_epochs <= self.base.epochs:
            raise ValueError(f"grace epochs must be between 1 and epochs ({self.base.epochs})")
        if self.reduction_factor <= 1:
            raise ValueError(f"reduction factor must be greater than 1, got {self.reduction_factor}")
        if self.max_concurrent < 1:
            raise ValueError(f"max concurrent trials must be at least 1, got {self.max_concurrent}")


@dataclass
class SweepOutcome:
    name: str
    path: str  # storage URI of the sweep (Tune state + trials/)
    rows: list[TrialRow]
    parent_run_id: str | None
    interrupted: bool = False
    best: TrialRow | None = None
    model_uri: str | None = None  # the best trial's model, when logged
    model_version: str | None = None  # its registered version, when registered


# ------------------------------------------------------------------------------------ trial side


def train_trial(params: dict[str, Any], context: dict[str, Any]) -> None:
    """The Tune function trainable: one distributed training run with this trial's hyperparameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from resnet_platform.train.runner import run_exists, run_training

    trial_id = tune.get_context().get_trial_id()
    base = TrainConfig.from_dict(context["base"])
    overrides = {k: params[k] for k in ("arch", "lr", "weight_decay", "batch_size") if k in params}
    fs, root = storage.resolve(context["trials_uri"])
    config = replace(
        base,
        **overrides,
        storage=context["trials_uri"],
        name=trial_id,
        # A trial restarted by a resumed sweep continues its Train run from the latest checkpoint.
        resume=run_exists(fs, root, trial_id),
    )
    tracker = None
    if context.get("parent_run_id"):
        tracker = TrialRun(context["tracking_uri"], context["parent_run_id"], context["name"], trial_id)
    run_training(config, tracker=tracker, callbacks=[TuneReportCallback()])


# ----------------------------------------------------------------------------------- driver side


def _scheduler(config: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler

    # time_attr "epoch": a trial restarted from a checkpoint goes on counting where it left off.
    return ASHAScheduler(
        time_attr="epoch",
        max_t=asha_max_t(config.base.epochs),
        grace_period=config.grace_epochs,
        reduction_factor=config.reduction_factor,
    )


def _parent_params(config: SweepConfig) -> dict[str, Any]:
    space = config.space
    return {
        "space": {
            "archs": ",".join(space.archs),
            "lrs": ",".join(map(str, space.lrs)) or None,
            "lr_min": space.lr_min,
            "lr_max": space.lr_max,
            "samples": space.samples,
            "weight_decays": ",".join(map(str, space.weight_decays)) or None,
            "batch_sizes": ",".join(map(str, space.batch_sizes)) or None,
            "num_trials": space.num_trials,
        },
        "scheduler": {
            "name": "ASHA",
            "metric": METRIC,
            "mode": MODE,
            "grace_epochs": config.grace_epochs,
            "reduction_factor": config.reduction_factor,
            "max_t": config.base.epochs,
        },
        "max_concurrent": config.max_concurrent,
        "base": {
            k: v
            for k, v in config.base.to_dict().items()
            if k not in ("mlflow_run_id", "fault", "arch", "lr", "name", "resume", "register_as")
        },
    }


def run_sweep(config: SweepConfig) -> SweepOutcome:
    """Run (or, with ``config.resume``, continue) the sweep; returns its table and best trial."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from resnet_platform.data.checks import check_prepared_data
    from resnet_platform.data.manifest import read_manifest
    from resnet_platform.train.runner import check_name_and_resume, ensure_ray

    config.validate()  # every check that needs nothing running comes first
    base = config.base
    manifest = read_manifest(base.data)
    check_prepared_data(base.data, manifest)  # before any trial starts: splits, label range
    base = replace(base, num_classes=len(manifest.classes), storage=base.storage_uri())
    storage.check_writable(base.storage)  # write access proved before any trial starts
    name = config.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    fs, root = storage.resolve(base.storage)
    sweep_uri = storage.join(base.storage, name)
    exp_path = f"{root.rstrip('/')}/{name}"
    check_name_and_resume(base.storage, name, config.resume, SweepExistsError, kind="sweep")

    ensure_ray()
    from ray.tune import Tuner

    if config.resume and not Tuner.can_restore(exp_path, storage_filesystem=fs):
        raise SweepExistsError(f"--resume: {sweep_uri} holds no Tune experiment state to restore")

    sweep_run = SweepRun(base.tracking_uri)
    tracking_uri = sweep_run.tracking_uri
    parent_run_id = sweep_run.open(
        base.experiment, name, sweep_uri, _parent_params(config), resume=config.resume
    )
    log.info("sweep %s: %d trials, MLflow parent run %s", name, config.space.num_trials, parent_run_id)
    context = {
        "base": replace(base, tracking_uri=tracking_uri).to_dict(),
        "trials_uri": storage.join(sweep_uri, TRIALS_DIR),
        "tracking_uri": tracking_uri,
        "parent_run_id": parent_run_id,
        "name": name,
    }
    trainable = trials.trainable(train_trial, context=context)
    try:
        if config.resume:
            tuner = Tuner.restore(exp_path, trainable, resume_errored=True, storage_filesystem=fs)
        else:
            tuner = Tuner(
                trainable,
                param_space=config.space.param_space(),
                tune_config=tune.TuneConfig(
                    metric=METRIC,
                    mode=MODE,
                    scheduler=_scheduler(config),
                    num_samples=config.space.samples,
                    # Tune ignores max_concurrent_trials when given a BasicVariantGenerator: set it here.
                    search_alg=BasicVariantGenerator(
                        max_concurrent=config.max_concurrent, random_state=config.search_seed
                    ),
                ),
                run_config=trials.run_config(name, base.storage),
            )
        with watch_tune_interrupt() as watch:
            grid = tuner.fit()
    except BaseException:
        sweep_run.close("FAILED")
        raise

    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if watch.interrupted:  # Tune marks the trials it stopped on Ctrl-C as TERMINATED
        unfinished = unfinished or len(grid)
    rows = collect_rows(grid, base, finished=not unfinished)
    children = sweep_run.children()
    for row in rows:
        row.mlflow_run_id = children.get(row.trial)
    outcome = SweepOutcome(name, sweep_uri, rows, parent_run_id, interrupted=bool(unfinished))
    if unfinished:
        log.warning(
            "sweep %s interrupted with %d trials unfinished: continue it with --resume", name, unfinished
        )
        sweep_run.close("KILLED")
        return outcome
    sweep_run.close_trials(
        TrialEnd(r.mlflow_run_id, r.epochs_run, r.stopped_early, failed=r.status == "ERROR")
        for r in rows
        if r.mlflow_run_id
    )
    best = outcome.best = best_row(rows)
    if best is not None:
        sweep_run.tag_best(best.trial, best.mlflow_run_id, best.arch, best.lr)
        if best.mlflow_run_id:
            recorded = _log_best_model(
                tracking_uri, fs, context["trials_uri"], best, config.register_best, manifest, base
            )
            if recorded is not None:
                outcome.model_uri, outcome.model_version = recorded.model_uri, recorded.model_version
    _log_results(sweep_run, outcome)
    sweep_run.close("FINISHED")
    return outcome


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


def _log_best_model(
    tracking_uri: str,
    fs,
    trials_uri: str,
    best: TrialRow,
    register_as: str | None,
    manifest,
    base: TrainConfig,
) -> Recorded | None:
    """Record the best trial's model (weights + architecture, from the checkpoint Ray Train recorded
    as its best) into its child run; register it if asked."""
    from resnet_platform.train.checkpoint import load_checkpoint
    from resnet_platform.train.run_record import training_record

    _, trial_path = storage.resolve(storage.join(trials_uri, best.trial))
    recorded = best_recorded_checkpoint(fs, trial_path)
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


def _log_results(sweep_run: SweepRun, outcome: SweepOutcome) -> None:
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
