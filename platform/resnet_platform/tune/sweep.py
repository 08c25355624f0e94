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

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from resnet_platform import storage
from resnet_platform._compat import asha_max_t, watch_tune_interrupt
from resnet_platform.tracking.sweep_runs import SweepRun, TrialEnd
from resnet_platform.train import init_from
from resnet_platform.train.config import TrainConfig

from . import trials
from .results import best_row
from .sweep_config import (
    METRIC,
    MODE,
    PLOT_PNG,
    RESULTS_CSV,
    RESULTS_MD,
    TRIALS_DIR,
    SweepConfig,
    SweepExistsError,
    SweepOutcome,
)
from .sweep_record import best_recorded_checkpoint, collect_rows, format_report, log_best_model, log_results
from .sweep_trial import train_trial

__all__ = [
    "METRIC",
    "MODE",
    "PLOT_PNG",
    "RESULTS_CSV",
    "RESULTS_MD",
    "TRIALS_DIR",
    "SweepConfig",
    "SweepExistsError",
    "SweepOutcome",
    "best_recorded_checkpoint",
    "collect_rows",
    "format_report",
    "run_sweep",
    "train_trial",
]

log = logging.getLogger(__name__)


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


@dataclass
class SweepPlan:
    """What the checks before a sweep resolved: the base config with the data's class count and
    absolute storage, the manifest, and where the sweep lives."""

    base: TrainConfig
    manifest: Any
    name: str
    store: storage.Location  # the storage, resolved once here; everything of the sweep lies below it

    @property
    def fs(self) -> Any:
        return self.store.fs

    @property
    def sweep(self) -> storage.Location:
        """``<storage>/<name>``: Tune's experiment folder."""
        return self.store.child(self.name)

    @property
    def sweep_uri(self) -> str:
        return self.sweep.uri

    @property
    def exp_path(self) -> str:
        return self.sweep.path

    @property
    def trials(self) -> storage.Location:
        return self.sweep.child(TRIALS_DIR)

    @property
    def trials_uri(self) -> str:
        return self.trials.uri


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Every check that needs nothing running, before Ray starts: the config, the prepared data,
    write access, and that the sweep exists exactly when ``--resume`` says it does."""
    from resnet_platform.data.checks import check_prepared_data
    from resnet_platform.data.manifest import read_manifest
    from resnet_platform.train.runner import check_name_and_resume

    config.validate()
    base = config.base
    manifest = read_manifest(base.data)
    check_prepared_data(base.data, manifest)  # before any trial starts: splits, label range
    # Trials run in their own working directories: a relative --data or --storage is made absolute here.
    base = replace(
        base, num_classes=len(manifest.classes), storage=base.storage_uri(), data=storage.absolute(base.data)
    )
    for arch in config.space.archs:  # --init-from fits every network of the grid, pinned once for all
        base, _ = init_from.prepare(replace(base, arch=arch))
    base = replace(base, arch=config.base.arch)
    storage.check_writable(base.storage)  # write access proved before any trial starts
    name = config.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name_and_resume(base.storage, name, config.resume, SweepExistsError, kind="sweep")
    return SweepPlan(base, manifest, name, storage.Location.of(base.storage))


def build_tuner(config: SweepConfig, plan: SweepPlan, trainable):
    """A new Tuner (ASHA over the search space), or with ``--resume`` the stored one restored."""
    from ray import tune
    from ray.tune import Tuner
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if config.resume:
        return Tuner.restore(plan.exp_path, trainable, resume_errored=True, storage_filesystem=plan.fs)
    return Tuner(
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
        run_config=trials.run_config(plan.name, plan.store),
    )


def run_sweep(config: SweepConfig) -> SweepOutcome:
    """Run (or, with ``config.resume``, continue) the sweep; returns its table and best trial."""
    from ray.tune import Tuner

    from resnet_platform.train.runner import ensure_ray

    plan = plan_sweep(config)
    ensure_ray()
    if config.resume and not Tuner.can_restore(plan.exp_path, storage_filesystem=plan.fs):
        raise SweepExistsError(f"--resume: {plan.sweep_uri} holds no Tune experiment state to restore")
    sweep_run = SweepRun(plan.base.tracking_uri)
    parent_run_id = sweep_run.open(
        plan.base.experiment, plan.name, plan.sweep_uri, _parent_params(config), resume=config.resume
    )
    log.info("sweep %s: %d trials, MLflow parent run %s", plan.name, config.space.num_trials, parent_run_id)
    context = {
        "base": replace(plan.base, tracking_uri=sweep_run.tracking_uri).to_dict(),
        "trials_uri": plan.trials_uri,
        "tracking_uri": sweep_run.tracking_uri,
        "parent_run_id": parent_run_id,
        "name": plan.name,
    }
    try:
        tuner = build_tuner(config, plan, trials.trainable(train_trial, context=context))
        with watch_tune_interrupt() as watch:
            grid = tuner.fit()
    except BaseException:
        sweep_run.close("FAILED")
        raise
    return finish_sweep(config, plan, sweep_run, grid, interrupted=watch.interrupted)


def finish_sweep(
    config: SweepConfig, plan: SweepPlan, sweep_run: SweepRun, grid, *, interrupted: bool
) -> SweepOutcome:
    """Read the trials back; an unfinished sweep closes KILLED (resumable); a finished one closes its
    children, tags the best trial, records its model and logs the results on the parent."""
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if interrupted:  # Tune marks the trials it stopped on Ctrl-C as TERMINATED
        unfinished = unfinished or len(grid)
    rows = collect_rows(grid, plan.base, finished=not unfinished)
    children = sweep_run.children()
    for row in rows:
        row.mlflow_run_id = children.get(row.trial)
    outcome = SweepOutcome(plan.name, plan.sweep_uri, rows, sweep_run.run_id, interrupted=bool(unfinished))
    if unfinished:
        log.warning(
            "sweep %s interrupted with %d trials unfinished: continue it with --resume", plan.name, unfinished
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
            recorded = log_best_model(
                sweep_run.tracking_uri,
                plan.trials,
                best,
                config.register_best,
                plan.manifest,
                plan.base,
            )
            if recorded is not None:
                outcome.model_uri, outcome.model_version = recorded.model_uri, recorded.model_version
    log_results(sweep_run, outcome)
    sweep_run.close("FINISHED")
    return outcome
