"""One trial of the degradation grid: one net at one seed on the platform's training path, reported
to Tune as metrics plus its :class:`SeedResult` (curves included) as a file."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from .degradation_config import DIGITS, DegradationConfig, data_source
from .tables import TrialResult


def in_memory_data(cfg: DegradationConfig):
    """The digits or a CIFAR-10 archive as a :class:`~resnet_platform.data.cifar.Cifar10` (arrays),
    cut to ``train_rows`` training images when set."""
    from resnet_platform.data.cifar import Cifar10, read_cifar10

    if cfg.data == DIGITS:
        from resnet_platform.data.digits import DIGIT_NAMES, digits_arrays

        train_x, train_y, test_x, test_y = digits_arrays(size=cfg.digits_size)
        data = Cifar10(train_x, train_y, test_x, test_y, list(DIGIT_NAMES))
    else:
        data = read_cifar10(cfg.data)
    if cfg.train_rows is not None:
        data = replace(
            data,
            train_images=data.train_images[: cfg.train_rows],
            train_labels=data.train_labels[: cfg.train_rows],
        )
    return data


@dataclass
class SeedResult:
    """One trained net at one seed."""

    seed: int
    seconds: float  # the trial's wall time, start-up and tracking included
    result: TrialResult

    def to_dict(self) -> dict:
        return {"seed": self.seed, "seconds": self.seconds, "result": asdict(self.result)}

    @classmethod
    def from_dict(cls, d: dict) -> SeedResult:
        return cls(int(d["seed"]), float(d["seconds"]), TrialResult(**d["result"]))


def train_net(cfg: DegradationConfig, arch: str, seed: int) -> SeedResult:
    """Train one net at one seed with the recipe, on the platform's training path; tracked unless
    ``cfg.track`` is off. A run of the same name already in storage (a retried trial) is continued
    from its last checkpoint, in the same MLflow run."""
    from resnet_platform import storage
    from resnet_platform.models import build_model
    from resnet_platform.train.runner import run_exists

    from .recipe import cifar_config, train_cifar

    started = time.monotonic()
    run_storage, run_name = f"{cfg.storage.rstrip('/')}/{cfg.name}", f"{arch}-seed{seed}"
    # Resolved again here, in the trial's process: ``cfg`` is plain data (the driver's filesystem
    # object does not travel with it), so the worker makes its own from the URI.
    fs, path = storage.resolve(run_storage)
    overrides: dict[str, Any] = dict(
        cfg.net_settings(arch, seed),
        storage=run_storage,
        name=run_name,
        resume=run_exists(fs, path, run_name),
        tracking_uri=cfg.tracking_uri,
    )
    if data_source(cfg.data) == "prepared":
        from resnet_platform.data.manifest import read_manifest
        from resnet_platform.train.main import train_and_track

        manifest = read_manifest(cfg.data)
        config = cifar_config(cfg.data, train_rows=manifest.splits["train"].num_rows, **overrides)
        outcome = train_and_track(config, track=cfg.track)
        params = sum(p.numel() for p in build_model(arch, len(manifest.classes)).parameters())
        test_error = float(outcome.final.get("val_top1_error", float("nan")))
        train_error = float(outcome.final.get("train_top1_error", float("nan")))
    else:
        run = train_cifar(
            cfg.data, cifar=in_memory_data(cfg), track=cfg.track, measure_responses=False, **overrides
        )
        outcome, params, test_error, train_error = run.outcome, run.params, run.test_error, run.train_error
    keep = ("epoch", "step", "lr", "train_loss", "train_top1_error", "val_top1_error")
    result = TrialResult(
        arch=arch,
        params=params,
        test_error=test_error,
        train_error=train_error,
        history=[{k: h[k] for k in keep if k in h} for h in outcome.history],
        mlflow_run_id=outcome.mlflow_run_id,
    )
    return SeedResult(seed, time.monotonic() - started, result)


RESULT_FILE = "result.json"  # a trial's SeedResult, in its Tune checkpoint


def degradation_trial(params: dict[str, Any], cfg: DegradationConfig) -> None:
    """The Tune function trainable (:mod:`resnet_platform.tune.trials`): one net at one seed; reports
    its errors as metrics and its :class:`SeedResult` (with the curves) as a file."""
    from resnet_platform.tune import trials

    result = train_net(cfg, params["arch"], int(params["seed"]))
    trials.report(
        {"train_error": result.result.train_error, "test_error": result.result.test_error},
        {RESULT_FILE: json.dumps(result.to_dict())},
    )
