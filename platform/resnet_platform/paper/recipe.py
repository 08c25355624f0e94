"""The paper's CIFAR-10 recipe (section 4.2) on the platform's Ray Train / checkpoint / MLflow path.

Batch 128, lr 0.1, momentum 0.9, weight decay 1e-4, lr divided by 10 at 32k and 48k iterations,
stop at 64k; 4-pixel zero padding + random 32x32 crop + horizontal flip; ResNet-110 (and deeper)
starts at lr 0.01 until the training error is below 80%. Iterations become epochs with
``steps = ceil(train_rows / batch)``: on the 50k training set 391 steps per epoch, so 32k/48k/64k
iterations are epochs 82/123/164 (on the 45k split: 352 steps, epochs 91/136/182). With ``epochs``
given, the milestones keep their places at 1/2 and 3/4 of training.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from resnet_platform.data.cifar import VAL_SIZE, Cifar10, cifar_datasets, read_cifar10
from resnet_platform.data.transforms import NORMALIZATION_STATS
from resnet_platform.models import build_model
from resnet_platform.tracking.training_run import TrainingRun
from resnet_platform.train.config import TrainConfig
from resnet_platform.train.runner import TrainingOutcome, run_training

from .cifar_recipe import CIFAR_RECIPE, cifar_config  # noqa: F401  (re-exported: the recipe as a config)
from .responses import LayerResponses, layer_responses, plot_layer_responses
from .schedule import (  # noqa: F401  (re-exported: the recipe's numbers live in schedule.py)
    PAPER_ITERATIONS,
    PAPER_MILESTONES,
    milestones_at,
    schedule_in_epochs,
    steps_per_epoch,
)

log = logging.getLogger(__name__)


@dataclass
class CifarRun:
    outcome: TrainingOutcome
    config: TrainConfig
    params: int
    test_error: float  # final epoch's (val = test), or the best-by-validation checkpoint's (45k/5k split)
    responses: LayerResponses | None

    @property
    def history(self) -> list[dict]:
        return self.outcome.history

    @property
    def train_error(self) -> float:
        return float(self.outcome.final.get("train_top1_error", float("nan")))


def _best_model(outcome: TrainingOutcome):
    from resnet_platform.train.checkpoint import load_checkpoint, load_model_config

    if outcome.best_checkpoint is None:
        return None
    with outcome.best_checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
        model_config = load_model_config(directory)
    model = build_model(model_config["arch"], model_config["num_classes"], **model_config["options"])
    model.load_state_dict(state["model"])
    return model


def train_cifar(
    data: str,
    *,
    val_split: bool = False,
    track: bool = True,
    cifar: Cifar10 | None = None,
    measure_responses: bool = True,
    iterations: int = PAPER_ITERATIONS,
    milestones: tuple[int, ...] = PAPER_MILESTONES,
    epochs: int | None = None,
    **overrides,
) -> CifarRun:
    """Read the archive at ``data``, train with the CIFAR recipe, then measure the best checkpoint
    on the test set (error and Figure 7's layer responses), logged to the run's MLflow run."""
    cifar = cifar if cifar is not None else read_cifar10(data)
    n_val = VAL_SIZE if val_split else 0
    config = cifar_config(
        data,
        train_rows=len(cifar.train_labels) - n_val,
        iterations=iterations,
        milestones=milestones,
        epochs=epochs,
        **overrides,
    )
    tracker = TrainingRun(config.tracking_uri) if track else None
    if tracker is not None:
        config = replace(config, tracking_uri=tracker.tracking_uri)
    datasets = cifar_datasets(
        cifar,
        val_split=val_split,
        seed=config.seed or 0,
        augment=config.augmentation == "pad-crop",
        placement=config.placement,
    )
    outcome = run_training(config, tracker=tracker, datasets=datasets, manifest=cifar.manifest(n_val))
    model = _best_model(outcome)
    params = sum(p.numel() for p in build_model(config.arch, len(cifar.classes)).parameters())
    responses = None
    if model is not None and (measure_responses or val_split):
        mean, std = NORMALIZATION_STATS[config.normalization]
        responses = layer_responses(model, cifar.test_images, cifar.test_labels, mean=mean, std=std)
    if val_split:
        test_error = responses.error if responses is not None else float("nan")
    else:
        test_error = float(outcome.final.get("val_top1_error", float("nan")))
    run = CifarRun(outcome, config, params, test_error, responses)
    if tracker is not None and outcome.mlflow_run_id:
        _log_test_results(tracker, run)
    return run


def _log_test_results(tracker: TrainingRun, run: CifarRun) -> None:
    """The test error, the parameter count and the layer responses, into the run's MLflow run."""
    # The run's epochs are logged already: plain metrics at the last step.
    metrics = {"test_top1_error": run.test_error, "params": float(run.params)}
    with tempfile.TemporaryDirectory() as tmp:
        dicts, figures = {}, {}
        if run.responses is not None:
            dicts["layer_responses.json"] = run.responses.to_dict()
            figures["layer_responses.png"] = plot_layer_responses(
                {run.config.arch: run.responses}, Path(tmp) / "layer_responses.png"
            )
        tracker.log_results(
            metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
            step=int(run.outcome.final.get("step", 0)),
            dicts=dicts,
            figures=figures,
        )
