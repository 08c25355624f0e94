"""A sweep's MLflow runs: one parent run named after the sweep, one child run per trial.

The driver opens the parent (:class:`SweepRun`); each trial opens its child (:class:`TrialRun`,
tag ``mlflow.parentRunId``) that its rank-0 worker logs every epoch into. After the sweep the driver
closes the children ASHA stopped (:meth:`SweepRun.close_trials`), tags the best trial on the parent
and the child, logs the best trial's model into its child (a :class:`TrainingRun` on that run id),
then the results table and plot on the parent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from resnet_platform._compat import sweep_child_run_status

from .runs import client_for, end_run, resolve_tracking_uri, start_run
from .training_run import Recorded, RunDescription, TrainingRecord, TrainingRun, log_results

log = logging.getLogger(__name__)

PARENT_ROLE = "sweep"


def find_child_runs(tracking_uri: str, experiment: str, parent_run_id: str) -> dict[str, str]:
    """Trial id -> child run id, for the runs of one sweep (the oldest when there are several)."""
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


def find_sweep_run(tracking_uri: str, experiment: str, path: str) -> str | None:
    """The newest parent run of the sweep stored at ``path``, or None."""
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


class TrialRun(TrainingRun):
    """A trial's child run: created (or reopened when an interrupted trial restarts) under the
    sweep's parent run; recorded with config, curves and final metrics but no model (the driver logs
    the best trial's model once all trials are done)."""

    def __init__(self, tracking_uri: str, parent_run_id: str, sweep_name: str, trial_id: str) -> None:
        super().__init__(tracking_uri)
        self.parent_run_id = parent_run_id
        self.sweep_name = sweep_name
        self.trial_id = trial_id

    def _start(self, run: RunDescription) -> str:
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "sweep.name": self.sweep_name,
            "sweep.trial_id": self.trial_id,
            "lr": run.lr,
            **run.tags(),
        }
        existing = find_child_runs(self.tracking_uri, run.experiment, self.parent_run_id).get(self.trial_id)
        name = f"{run.arch}-lr{run.lr:.3g}-{self.trial_id}"
        return start_run(self.tracking_uri, run.experiment, name, run.params, tags, existing_run_id=existing)

    def record(self, record: TrainingRecord) -> Recorded:
        return super().record(replace(record, load_best_model=None))


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, as the sweep's driver saw it."""

    run_id: str  # its child run
    epochs_run: int
    stopped_early: bool  # ASHA stopped it before the last epoch
    failed: bool  # the trial raised


class SweepRun:
    """The sweep's parent run, on the driver."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment: str | None = None
        self.run_id: str | None = None

    def open(
        self, experiment: str, name: str, path: str, params: Mapping[str, Any], *, resume: bool = False
    ) -> str:
        """Create the parent run (``resume``: reopen the one of the sweep stored at ``path``)."""
        existing = find_sweep_run(self.tracking_uri, experiment, path) if resume else None
        self.experiment = experiment
        self.run_id = start_run(
            self.tracking_uri,
            experiment,
            name,
            params,
            {"sweep.role": PARENT_ROLE, "sweep.name": name, "sweep.path": path},
            existing_run_id=existing,
        )
        return self.run_id

    def children(self) -> dict[str, str]:
        """Trial id -> its child run id."""
        return find_child_runs(self.tracking_uri, self.experiment, self.run_id)

    def close_trials(self, trials: Iterable[TrialEnd]) -> None:
        """Tag each child with how its trial ended; close the runs of trials ASHA stopped mid-fit."""
        client = client_for(self.tracking_uri)
        for trial in trials:
            client.set_tag(trial.run_id, "sweep.stopped_early", str(trial.stopped_early).lower())
            client.set_tag(trial.run_id, "sweep.epochs_run", str(trial.epochs_run))
            # A trial ASHA stopped was marked FAILED by its own run: being stopped early is a normal end.
            status = sweep_child_run_status(
                trial.failed, trial.stopped_early, client.get_run(trial.run_id).info.status
            )
            if status is not None:
                end_run(self.tracking_uri, trial.run_id, status)

    def tag_best(self, trial_id: str, run_id: str | None, arch: str, lr: float) -> None:
        client = client_for(self.tracking_uri)
        for key, value in {
            "sweep.best_trial": trial_id,
            "sweep.best_run_id": run_id or "",
            "sweep.best_arch": arch,
            "sweep.best_lr": f"{lr:.6g}",
        }.items():
            client.set_tag(self.run_id, key, value)
        if run_id:
            client.set_tag(run_id, "sweep.best", "true")

    def log_results(
        self,
        *,
        texts: Mapping[str, str],
        figures: Mapping[str, str | Path],
        metrics: Mapping[str, float],
    ) -> None:
        """The results table (``texts`` by artifact name), plots and summary metrics on the parent."""
        log_results(self.tracking_uri, self.run_id, texts=texts, figures=figures, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        end_run(self.tracking_uri, self.run_id, status)


__all__ = [
    "PARENT_ROLE",
    "SweepRun",
    "TrialEnd",
    "TrialRun",
    "find_child_runs",
    "find_sweep_run",
]
