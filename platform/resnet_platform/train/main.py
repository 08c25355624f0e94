"""One call for the job: fit a config and, unless told not to, track it in MLflow.

The MLflow run is opened by the driver before the workers start (they log into it by id) and
closed here after the fit, with the best checkpoint logged as a model and optionally registered.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from resnet_platform.data.manifest import Manifest
from resnet_platform.data.transforms import eval_preprocessing

from .checkpoint import load_checkpoint, load_model_config
from .config import TrainConfig
from .resolution import eval_sizes
from .runner import TrainingOutcome, run_training

log = logging.getLogger(__name__)


class TrackingUnavailableError(RuntimeError):
    """The MLflow server cannot open the run: refused before any work, with the URI named."""


class MlflowTracker:
    """Driver-side MLflow for one training run (rank 0 of the workers logs the metrics).

    Every call runs under :class:`~resnet_platform.tracking.limits.TrackingLimits`. Opening the
    run must succeed (a wrong URI is refused in seconds, before any work); after that an outage
    never fails the run: :meth:`close` tries twice and says in one line when it could not mark
    the run, and :meth:`finish` logs what it can.
    """

    def __init__(self, tracking_uri: str | None = None, limits=None) -> None:
        from resnet_platform.tracking.limits import TrackingLimits
        from resnet_platform.tracking.runs import resolve_tracking_uri

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.limits = limits or TrackingLimits()
        self.run_id: str | None = None

    def open(self, config: TrainConfig, manifest: Manifest) -> str:
        from resnet_platform.tracking.limits import bounded_mlflow_http, is_outage
        from resnet_platform.tracking.runs import find_run, start_run

        self.limits = config.tracking_limits()
        tags = {
            "arch": config.arch,
            "data": config.data,
            "num_workers": config.num_workers,
            "worker_kind": "gpu" if config.use_gpu else "cpu",
            "ray_job_id": os.environ.get("RAY_JOB_ID") or _ray_job_id(),
        }
        params = {k: v for k, v in config.to_dict().items() if k not in ("mlflow_run_id", "fault")}
        try:
            with bounded_mlflow_http(self.limits):
                existing = (
                    find_run(self.tracking_uri, config.experiment, config.name) if config.resume else None
                )
                self.run_id = start_run(
                    self.tracking_uri, config.experiment, config.name, params, tags, existing_run_id=existing
                )
        except Exception as e:
            if not is_outage(e):
                raise
            raise TrackingUnavailableError(
                f"MLflow at {self.tracking_uri} is not answering ({_one_line(e)}): start it, fix "
                "--tracking-uri, or train with --no-mlflow"
            ) from e
        return self.run_id

    def close(self, failed: bool = False, status: str | None = None) -> bool:
        """Mark the run FINISHED or FAILED (``status`` overrides, e.g. KILLED). Never raises for an
        outage and never takes more than two bounded tries: on the failure path the real error must
        come out, not MLflow's. Returns whether the run was marked."""
        from resnet_platform.tracking.limits import bounded_mlflow_http, is_outage
        from resnet_platform.tracking.runs import end_run

        if not self.run_id:
            return True
        status = status or ("FAILED" if failed else "FINISHED")
        error: Exception | None = None
        for attempt in range(2):
            try:
                with bounded_mlflow_http(self.limits):
                    end_run(self.tracking_uri, self.run_id, status)
                return True
            except Exception as e:
                if not is_outage(e) and not failed:
                    raise
                error = e
                if attempt == 0:
                    time.sleep(2)
        log.error(
            "could not mark MLflow run %s %s at %s (%s): it stays RUNNING there",
            self.run_id,
            status,
            self.tracking_uri,
            _one_line(error),
        )
        return False

    def wait_for_server(self) -> bool:
        """Up to ``limits.final_wait_s`` for the server to answer (one warning if it is down)."""
        from resnet_platform.tracking.limits import bounded_mlflow_http, is_outage
        from resnet_platform.tracking.runs import client_for

        deadline = time.monotonic() + self.limits.final_wait_s
        warned = False
        while True:
            try:
                with bounded_mlflow_http(self.limits):
                    client_for(self.tracking_uri).get_run(self.run_id)
                if warned:
                    log.warning(
                        "MLflow at %s answers again: recording run %s", self.tracking_uri, self.run_id
                    )
                return True
            except Exception as e:
                if not is_outage(e):
                    raise
                if time.monotonic() >= deadline:
                    return False
                if not warned:
                    log.warning(
                        "MLflow at %s is not answering (%s): training is done; waiting up to %.0f s to "
                        "record run %s",
                        self.tracking_uri,
                        _one_line(e),
                        self.limits.final_wait_s,
                        self.run_id,
                    )
                    warned = True
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def finish(self, config: TrainConfig, manifest: Manifest, outcome: TrainingOutcome) -> None:
        """Artifacts (config, curves, final metrics, model summary) and the best model.

        Waits (bounded) for a server that is down; whatever still cannot be logged is one warning
        each, and the run is marked FINISHED when the server takes it."""
        from resnet_platform.models.summary import format_table
        from resnet_platform.tracking.curves import plot_error_curves
        from resnet_platform.tracking.inference import ModelSpec
        from resnet_platform.tracking.limits import bounded_mlflow_http, is_outage
        from resnet_platform.tracking.model_logging import log_resnet_model
        from resnet_platform.tracking.params import redact
        from resnet_platform.tracking.worker_logger import RunLogger

        self.wait_for_server()
        with (
            RunLogger(self.tracking_uri, self.run_id, limits=self.limits) as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            # Epochs rank 0 could not deliver (MLflow was down when it closed) come from the
            # checkpoint's history; epochs the run already holds are skipped by log_epoch.
            held = run.last_epoch  # None while the server's history is unknown: filtered on send
            missing = [r for r in outcome.history if held is None or int(r["epoch"]) > held]
            for row in missing:
                run.log_epoch(int(row["epoch"]), row, step=int(row["step"]))
            if missing and held is not None:
                log.warning(
                    "MLflow run %s: epochs %s logged from the checkpoint's history (rank 0 could not send them)",
                    self.run_id,
                    ", ".join(str(int(r["epoch"])) for r in missing),
                )
            run.log_dict(redact({k: v for k, v in config.to_dict().items() if k != "fault"}), "config.json")
            run.log_dict({"final": outcome.final, "best": outcome.best_metrics}, "final_metrics.json")
            run.log_text(format_table([config.arch]), "model_summary.md")
            if outcome.history:
                run.log_figure(
                    plot_error_curves(outcome.history, Path(tmp) / "error_curves.png"), "error_curves.png"
                )
            if outcome.best_checkpoint is not None:
                with outcome.best_checkpoint.as_directory() as directory:
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
                metrics = {
                    k: outcome.best_metrics[prefix + k]
                    for k in ("val_top1_error", "val_top5_error")
                    if prefix + k in outcome.best_metrics
                }
                try:
                    with bounded_mlflow_http(self.limits):
                        info = log_resnet_model(
                            self.tracking_uri,
                            self.run_id,
                            state["model_ema"]["model"] if config.registers_ema else state["model"],
                            spec,
                            registered_name=config.register_as,
                            metrics=metrics,
                            step=int(state["step"]),
                        )
                except Exception as e:
                    if not is_outage(e):
                        raise
                    log.error(
                        "best model not logged: MLflow at %s is not answering (%s); its checkpoint is %s",
                        self.tracking_uri,
                        _one_line(e),
                        outcome.best_checkpoint.path,
                    )
                else:
                    outcome.model_version = info.version
                    outcome.extra["model_uri"] = info.model_uri
                    log.info(
                        "logged model %s%s",
                        info.model_uri,
                        f" as {info.registered_uri}" if info.version else "",
                    )
        outcome.extra["mlflow_closed"] = self.close()


def _one_line(e: BaseException | None) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 240 else text[:237] + "..."


def _ray_job_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    except Exception:  # the tag is informative only
        return None


def train_and_track(config: TrainConfig, *, track: bool = True) -> TrainingOutcome:
    tracker = MlflowTracker(config.tracking_uri) if track else None
    if tracker is not None:
        from dataclasses import replace

        config = replace(config, tracking_uri=tracker.tracking_uri)
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


__all__ = ["MlflowTracker", "TrackingUnavailableError", "format_report", "train_and_track"]
