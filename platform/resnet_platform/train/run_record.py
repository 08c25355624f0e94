"""A training run in MLflow's terms: the values :mod:`resnet_platform.tracking.training_run` opens
it with and records at the end, taken from the config, the manifest and the best checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resnet_platform.data.manifest import Manifest
from resnet_platform.data.transforms import eval_preprocessing
from resnet_platform.tracking.inference import ModelSpec
from resnet_platform.tracking.training_run import MODEL_METRICS, BestModel, RunDescription, TrainingRecord

from .checkpoint import load_checkpoint, load_model_config
from .config import TrainConfig
from .resolution import eval_sizes

# Settings that are not the run's parameters (``resume`` is how this submission started, which
# differs between the submissions of one run: train/resume.py).
NOT_LOGGED = ("mlflow_run_id", "fault", "resume")


def describe_run(config: TrainConfig) -> RunDescription:
    return RunDescription(
        experiment=config.experiment,
        name=config.name,
        arch=config.arch,
        lr=config.base_lr,
        data=config.data,
        num_workers=config.num_workers,
        use_gpu=config.use_gpu,
        params={k: v for k, v in config.to_dict().items() if k not in NOT_LOGGED},
        resume=config.resume != "never",  # resolved by the driver (train/resume.py): must or never
        limits=config.tracking_limits(),
    )


def training_record(
    config: TrainConfig,
    manifest: Manifest,
    history: Sequence[Mapping[str, float]],
    best_metrics: Mapping[str, Any],
    best_checkpoint=None,
) -> TrainingRecord:
    """``best_checkpoint``: a ``ray.train.Checkpoint`` whose model the run logs (None: no model)."""

    def load_best_model() -> BestModel:
        return best_model(best_checkpoint, config, manifest, best_metrics)

    return TrainingRecord(
        config={k: v for k, v in config.to_dict().items() if k != "fault"},
        arch=config.arch,
        history=history,
        best_metrics=best_metrics,
        load_best_model=load_best_model if best_checkpoint is not None else None,
        best_checkpoint=best_checkpoint.path if best_checkpoint is not None else None,
        register_as=config.register_as,
    )


def best_model(
    checkpoint, config: TrainConfig, manifest: Manifest, best_metrics: Mapping[str, Any]
) -> BestModel:
    """The checkpoint's weights (the EMA's with ``--register-ema``) and their validation errors, with
    the classes and the evaluation preprocessing of ``config``."""
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
        model_config = load_model_config(directory)
    eval_crop, eval_resize = eval_sizes(config)
    spec = ModelSpec(
        arch=model_config["arch"],
        num_classes=model_config["num_classes"],
        options=model_config["options"],
        class_names=manifest.class_names,
        wnids=manifest.classes,
        # Served as validated: the same crop, resize and normalization
        # (train/resolution.py: --val-image-size / --val-resize-size may differ from training's).
        **{
            **eval_preprocessing(eval_crop, config.augmentation, config.normalization),
            "resize_size": eval_resize,
        },
    )
    # --register-ema: the EMA's weights and validation errors are the model's.
    prefix = "ema_" if config.registers_ema else ""
    return BestModel(
        weights=state["model_ema"]["model"] if config.registers_ema else state["model"],
        step=int(state["step"]),
        spec=spec,
        metrics={k: best_metrics[prefix + k] for k in MODEL_METRICS if prefix + k in best_metrics},
    )
