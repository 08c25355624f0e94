"""A hyperparameter sweep: Ray Tune over a driver function that fits one distributed TorchTrainer.

Ray 2.60 (Train V2) no longer tunes a trainer object (``Tuner(TorchTrainer)``). Each Tune trial
runs :func:`train_trial`, a function trainable that builds and fits a ``TorchTrainer`` with
:func:`~resnet_platform.train.runner.run_training`; Ray Train's ``TuneReportCallback`` forwards
every epoch's report (rank 0's metrics) to Tune, where ASHA compares ``val_top1_error`` at its rungs
and stops the worse trials. A trial itself holds almost no resources (``CPU: 0.01``); its Train
workers reserve theirs, so ``max_concurrent`` x ``workers_per_trial`` must fit the cluster.

Ray must run its dashboard (``ray[default]``; the default of ``ray start`` and ``ray.init``): when ASHA
stops a trial, or it reaches ``max_t``, Tune kills the trial's actor and with it the TrainController,
and only Ray Train's placement-group cleaner, which asks the dashboard's state API, frees the
worker group's reserved CPUs. Without it (``include_dashboard=False``) the next trial waits forever.

Storage, under ``<storage>/<name>``: Tune's experiment state (what ``--resume`` restores, finished
trials are not rerun) and ``trials/<trial id>``, each trial's Ray Train run with its checkpoints (an
interrupted trial continues from its latest one).

MLflow: the driver opens one parent run named after the sweep; each trial opens a child run (tag
``mlflow.parentRunId``) that its rank-0 worker logs every epoch into. After the sweep the driver
closes the children ASHA stopped, tags the best trial on the parent and the child, logs the best
trial's model from its best checkpoint (registered with ``register_best``), and logs the results
table and the error-vs-learning-rate plot on the parent.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from resnet_platform import storage
from resnet_platform._compat import asha_max_t, sweep_child_run_status, tune_trials, watch_tune_interrupt
from resnet_platform.train.config import TrainConfig

from .results import TrialRow, best_row, format_table, plot_error_vs_lr, to_csv, to_markdown
from .space import SearchSpace

log = logging.getLogger(__name__)

METRIC = "val_top1_error"
MODE = "min"
TRIALS_DIR = "trials"
PARENT_ROLE = "sweep"
RESULTS_MD = "sweep_results.md"
RESULTS_CSV = "sweep_results.csv"
PLOT_PNG = "val_error_vs_lr.png"


class SweepExistsError(ValueError):
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
    model_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ trial side


class TrialTracker:
    """A trial's MLflow child run: created (or reopened when an interrupted trial restarts) under
    the sweep's parent run; closed with config, curves and final metrics (no model) after the fit."""

    def __init__(self, tracking_uri: str, parent_run_id: str, sweep_name: str, trial_id: str) -> None:
        from resnet_platform.train.main import MlflowTracker

        self._inner = MlflowTracker(tracking_uri)
        self.tracking_uri = self._inner.tracking_uri
        self.parent_run_id = parent_run_id
        self.sweep_name = sweep_name
        self.trial_id = trial_id

    @property
    def run_id(self) -> str | None:
        return self._inner.run_id

    def open(self, config: TrainConfig, manifest) -> str:
        from resnet_platform.tracking.limits import bounded_mlflow_http
        from resnet_platform.tracking.runs import start_run

        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "sweep.name": self.sweep_name,
            "sweep.trial_id": self.trial_id,
            "arch": config.arch,
            "lr": config.base_lr,
            "data": config.data,
            "num_workers": config.num_workers,
            "worker_kind": "gpu" if config.use_gpu else "cpu",
        }
        params = {k: v for k, v in config.to_dict().items() if k not in ("mlflow_run_id", "fault")}
        run_name = f"{config.arch}-lr{config.base_lr:.3g}-{self.trial_id}"
        self._inner.limits = config.tracking_limits()
        with bounded_mlflow_http(self._inner.limits):
            children = find_child_runs(self.tracking_uri, config.experiment, self.parent_run_id)
            existing = children.get(self.trial_id)
            self._inner.run_id = start_run(
                self.tracking_uri, config.experiment, run_name, params, tags, existing_run_id=existing
            )
        return self._inner.run_id

    def close(self, failed: bool = False, status: str | None = None) -> bool:
        return self._inner.close(failed, status)

    def finish(self, config: TrainConfig, manifest, outcome) -> None:
        # The model is logged for the best trial only, by the driver, once all trials are done.
        self._inner.finish(config, manifest, replace(outcome, best_checkpoint=None))


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
        tracker = TrialTracker(context["tracking_uri"], context["parent_run_id"], context["name"], trial_id)
    run_training(config, tracker=tracker, callbacks=[TuneReportCallback()])


# ----------------------------------------------------------------------------------- driver side


def find_child_runs(tracking_uri: str, experiment: str, parent_run_id: str) -> dict[str, str]:
    """Trial id -> child run id, for the runs of one sweep (the oldest when there are several)."""
    from resnet_platform.tracking.runs import client_for

    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=10000,
    )
    return {r.data.tags["sweep.trial_id"]: r.info.run_id for r in runs if "sweep.trial_id" in r.data.tags}


def _find_parent_run(tracking_uri: str, experiment: str, name: str, path: str) -> str | None:
    from resnet_platform.tracking.runs import client_for

    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`sweep.role` = '{PARENT_ROLE}' and tags.`sweep.path` = '{path}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


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
    from resnet_platform.tracking.runs import end_run, resolve_tracking_uri, start_run
    from resnet_platform.train.runner import ensure_ray, run_exists

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
    exists = run_exists(fs, root, name)
    if exists and not config.resume:
        raise SweepExistsError(
            f"sweep {sweep_uri} already exists: pass --resume to continue it, or another --name"
        )
    if config.resume and not exists:
        raise SweepExistsError(f"--resume: no sweep at {sweep_uri} to continue")

    ensure_ray()
    from ray.tune import Tuner

    if config.resume and not Tuner.can_restore(exp_path, storage_filesystem=fs):
        raise SweepExistsError(f"--resume: {sweep_uri} holds no Tune experiment state to restore")

    tracking_uri = resolve_tracking_uri(base.tracking_uri)
    existing_parent = (
        _find_parent_run(tracking_uri, base.experiment, name, sweep_uri) if config.resume else None
    )
    parent_run_id = start_run(
        tracking_uri,
        base.experiment,
        name,
        _parent_params(config),
        {"sweep.role": PARENT_ROLE, "sweep.name": name, "sweep.path": sweep_uri},
        existing_run_id=existing_parent,
    )
    log.info("sweep %s: %d trials, MLflow parent run %s", name, config.space.num_trials, parent_run_id)
    context = {
        "base": replace(base, tracking_uri=tracking_uri).to_dict(),
        "trials_uri": storage.join(sweep_uri, TRIALS_DIR),
        "tracking_uri": tracking_uri,
        "parent_run_id": parent_run_id,
        "name": name,
    }
    trainable = tune.with_resources(tune.with_parameters(train_trial, context=context), {"CPU": 0.01})
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
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=root,
                    storage_filesystem=fs,
                    failure_config=tune.FailureConfig(max_failures=0),
                    verbose=1,
                ),
            )
        with watch_tune_interrupt() as watch:
            grid = tuner.fit()
    except BaseException:
        end_run(tracking_uri, parent_run_id, "FAILED")
        raise

    trials = tune_trials(grid)
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if watch.interrupted:  # Tune marks the trials it stopped on Ctrl-C as TERMINATED
        unfinished = unfinished or [t.trial_id for t in trials]
    rows = collect_rows(trials, list(grid), base)
    children = find_child_runs(tracking_uri, base.experiment, parent_run_id)
    for row in rows:
        row.mlflow_run_id = children.get(row.trial)
    outcome = SweepOutcome(name, sweep_uri, rows, parent_run_id, interrupted=bool(unfinished))
    if unfinished:
        log.warning(
            "sweep %s interrupted with %d trials unfinished: continue it with --resume", name, len(unfinished)
        )
        end_run(tracking_uri, parent_run_id, "KILLED")
        return outcome
    _close_children(tracking_uri, rows)
    outcome.best = best_row(rows)
    if outcome.best is not None:
        _tag_best(tracking_uri, parent_run_id, outcome.best)
        if outcome.best.mlflow_run_id:
            outcome.model_version = _log_best_model(
                tracking_uri, fs, context["trials_uri"], outcome, config.register_best, manifest, base
            )
    _log_parent(tracking_uri, parent_run_id, outcome)
    end_run(tracking_uri, parent_run_id, "FINISHED")
    return outcome


def collect_rows(trials: list, results: list, base: TrainConfig) -> list[TrialRow]:
    """One row per Tune trial from its reported epochs (``results``: the ResultGrid, same order);
    what a trial did not vary comes from ``base``."""
    rows = []
    for trial, result in zip(trials, results, strict=True):
        df = result.metrics_dataframe
        best_err, best_epoch, epochs_run = math.nan, 0, 0
        if df is not None and METRIC in df and len(df):
            df = df.dropna(subset=[METRIC])
            if len(df):
                i = df[METRIC].idxmin()
                best_err = float(df.loc[i, METRIC])
                best_epoch = int(df.loc[i, "epoch"])
                epochs_run = int(df["epoch"].max())
        params = trial.config
        rows.append(
            TrialRow(
                trial=trial.trial_id,
                arch=params["arch"],
                lr=float(params["lr"]),
                weight_decay=float(params.get("weight_decay", base.weight_decay)),
                batch_size=int(params.get("batch_size", base.batch_size)),
                best_val_top1_error=best_err,
                best_epoch=best_epoch,
                epochs_run=epochs_run,
                stopped_early=trial.status == "TERMINATED" and 0 < epochs_run < base.epochs,
                status=trial.status,
            )
        )
    return rows


def _close_children(tracking_uri: str, rows: list[TrialRow]) -> None:
    """Trials ASHA stopped were ended mid-fit: their child runs are closed here, with the reason."""
    from resnet_platform.tracking.runs import client_for, end_run

    client = client_for(tracking_uri)
    for row in rows:
        if not row.mlflow_run_id:
            continue
        client.set_tag(row.mlflow_run_id, "sweep.stopped_early", str(row.stopped_early).lower())
        client.set_tag(row.mlflow_run_id, "sweep.epochs_run", str(row.epochs_run))
        # A trial ASHA stopped was marked FAILED by its own tracker: being stopped early is a normal end.
        status = sweep_child_run_status(
            row.status, row.stopped_early, client.get_run(row.mlflow_run_id).info.status
        )
        if status is not None:
            end_run(tracking_uri, row.mlflow_run_id, status)


def _tag_best(tracking_uri: str, parent_run_id: str, best: TrialRow) -> None:
    from resnet_platform.tracking.runs import client_for

    client = client_for(tracking_uri)
    for key, value in {
        "sweep.best_trial": best.trial,
        "sweep.best_run_id": best.mlflow_run_id or "",
        "sweep.best_arch": best.arch,
        "sweep.best_lr": f"{best.lr:.6g}",
    }.items():
        client.set_tag(parent_run_id, key, value)
    if best.mlflow_run_id:
        client.set_tag(best.mlflow_run_id, "sweep.best", "true")


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


def _log_best_model(tracking_uri, fs, trials_uri, outcome: SweepOutcome, register_as, manifest, base):
    """Log the best trial's model (weights + architecture) into its child run; register it if asked."""
    from resnet_platform.train.checkpoint import load_checkpoint
    from resnet_platform.train.main import MlflowTracker
    from resnet_platform.train.runner import TrainingOutcome

    best = outcome.best
    _, trial_path = storage.resolve(storage.join(trials_uri, best.trial))
    recorded = best_recorded_checkpoint(fs, trial_path)
    if recorded is None:
        log.warning("best trial %s left no checkpoint: no model logged", best.trial)
        return None
    checkpoint, best_metrics = recorded
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    config = replace(
        TrainConfig.from_dict(_as_dict(state["config"])),
        register_as=register_as,
        mlflow_run_id=best.mlflow_run_id,
    )
    history = list(state["history"])
    outcome.extra["best_checkpoint_metrics"] = best_metrics  # the weights' own, not the best epoch's
    trial_outcome = TrainingOutcome(
        name=best.trial,
        run_path=storage.join(trials_uri, best.trial),
        history=history,
        best_checkpoint=checkpoint,
        best_metrics=dict(best_metrics),
        mlflow_run_id=best.mlflow_run_id,
    )
    tracker = MlflowTracker(tracking_uri, base.tracking_limits())
    tracker.run_id = best.mlflow_run_id
    tracker.finish(config, manifest, trial_outcome)
    outcome.extra["model_uri"] = trial_outcome.extra.get("model_uri")
    return trial_outcome.model_version


def _log_parent(tracking_uri: str, parent_run_id: str, outcome: SweepOutcome) -> None:
    from resnet_platform.tracking.worker_logger import RunLogger

    rows = outcome.rows
    with RunLogger(tracking_uri, parent_run_id) as run, tempfile.TemporaryDirectory() as tmp:
        run.log_text(to_markdown(rows), RESULTS_MD)
        run.log_text(to_csv(rows), RESULTS_CSV)
        plot = plot_error_vs_lr(rows, Path(tmp) / PLOT_PNG, title=f"sweep {outcome.name}")
        run.log_figure(plot, PLOT_PNG)
        summary = {
            "trials": len(rows),
            "trials_stopped_early": sum(r.stopped_early for r in rows),
            "trials_failed": sum(r.status == "ERROR" for r in rows),
        }
        if outcome.best is not None:
            summary["best_val_top1_error"] = outcome.best.best_val_top1_error
        run.client.log_batch(
            parent_run_id,
            metrics=RunLogger._metrics(summary, 0, int(time.time() * 1000)),
            synchronous=True,
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
