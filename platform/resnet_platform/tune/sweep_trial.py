"""The trial side of a sweep: the Tune function trainable that runs one distributed training with
the trial's hyperparameters (run by every trial, in its own Tune actor)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from resnet_platform import storage
from resnet_platform.tracking.sweep_runs import TrialRun
from resnet_platform.train.config import TrainConfig


def train_trial(params: dict[str, Any], context: dict[str, Any]) -> None:
    """The Tune function trainable: one distributed training run with this trial's hyperparameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from resnet_platform.train.runner import run_exists, run_training

    trial_id = tune.get_context().get_trial_id()
    base = TrainConfig.from_dict(context["base"])
    overrides = {k: params[k] for k in ("arch", "lr", "weight_decay", "batch_size") if k in params}
    # Resolved again here, in the trial's process: the context is plain data (the driver's
    # filesystem object does not travel with it), so the worker makes its own from the URI.
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
