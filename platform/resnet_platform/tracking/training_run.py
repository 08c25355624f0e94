"""The MLflow run of one training, on the driver: opened before the workers start (rank 0 logs into
it by id with :class:`~resnet_platform.tracking.worker_logger.RunLogger`), recorded and closed after
the fit::

    run = TrainingRun(tracking_uri)              # the URI resolved: hand run.tracking_uri to the workers
    run_id = run.open(RunDescription(...))       # TrackingUnavailableError when MLflow does not answer
    ...                                          # the fit
    recorded = run.record(TrainingRecord(...))   # artifacts and the best model; marks the run FINISHED
    run.close(failed=True)                       # on the failure path instead

It takes plain values and its own dataclasses, never a training config: ``train/`` describes its run
in these terms (``train/run_record.py``). Every call runs under the run's
:class:`~resnet_platform.tracking.limits.TrackingLimits`. Opening must succeed (a wrong URI is
refused in seconds, before any work); after that an outage never fails the run: :meth:`close` tries
twice and says in one line when it could not mark the run, and :meth:`record` logs what it can.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_platform.errors import UserError

from .curves import plot_error_curves
from .inference import ModelSpec
from .limits import TrackingLimits, bounded_mlflow_http, is_outage
from .lineage import record_run_origin, record_version_parent
from .model_logging import log_resnet_model
from .origin import WeightsOrigin
from .params import redact
from .runs import client_for, end_run, find_run, resolve_tracking_uri, start_run
from .worker_logger import RunLogger

log = logging.getLogger(__name__)

MODEL_METRICS = ("val_top1_error", "val_top5_error")  # the best model's, logged (and tagged) with it


class TrackingUnavailableError(UserError, RuntimeError):
    """The MLflow server cannot open the run: refused before any work, with the URI named."""


@dataclass(frozen=True)
class RunDescription:
    """A training run as MLflow records it when it opens."""

    experiment: str
    name: str
    arch: str
    lr: float
    data: str
    num_workers: int
    use_gpu: bool
    params: Mapping[str, Any]  # every setting: logged redacted and flattened
    resume: bool = False  # reopen the newest run of this name in the experiment
    limits: TrackingLimits = field(default_factory=TrackingLimits)

    def tags(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "data": self.data,
            "num_workers": self.num_workers,
            "worker_kind": "gpu" if self.use_gpu else "cpu",
        }


@dataclass(frozen=True)
class BestModel:
    """The best checkpoint's weights and what serving needs to use them."""

    weights: Mapping[str, Any]  # a state dict
    step: int  # the training step it was saved at
    spec: ModelSpec
    metrics: Mapping[str, float] = field(default_factory=dict)  # MODEL_METRICS of these weights


@dataclass(frozen=True)
class TrainingRecord:
    """What a finished training leaves in its run."""

    config: Mapping[str, Any]  # logged (redacted) as config.json
    arch: str  # model_summary.md
    history: Sequence[Mapping[str, float]]  # one row per epoch, with "epoch" and "step"
    best_metrics: Mapping[str, Any]  # the metrics reported with the best checkpoint
    # Loads the best checkpoint's model when the run logs one (called once, after the artifacts).
    load_best_model: Callable[[], BestModel] | None = None
    best_checkpoint: str | None = None  # where that checkpoint is: named when it cannot be logged
    register_as: str | None = None  # register the model under this name

    @property
    def final(self) -> Mapping[str, float]:
        return self.history[-1] if self.history else {}


@dataclass(frozen=True)
class Recorded:
    model_uri: str | None  # None when no model was logged
    model_version: str | None  # the registered version, when registered
    closed: bool  # whether the run was marked FINISHED


class TrainingRun:
    """Driver-side MLflow for one training run. ``run_id``: record into a run that exists already."""

    def __init__(
        self, tracking_uri: str | None = None, limits: TrackingLimits | None = None, run_id: str | None = None
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.limits = limits or TrackingLimits()
        self.run_id = run_id

    def open(self, run: RunDescription) -> str:
        self.limits = run.limits
        try:
            with bounded_mlflow_http(self.limits):
                self.run_id = self._start(run)
        except Exception as e:
            if not is_outage(e):
                raise
            raise TrackingUnavailableError(
                f"MLflow at {self.tracking_uri} is not answering ({_one_line(e)}): start it, fix "
                "--tracking-uri, or train with --no-mlflow"
            ) from e
        return self.run_id

    def _start(self, run: RunDescription) -> str:
        existing = find_run(self.tracking_uri, run.experiment, run.name) if run.resume else None
        tags = {**run.tags(), "ray_job_id": os.environ.get("RAY_JOB_ID") or _ray_job_id()}
        return start_run(
            self.tracking_uri, run.experiment, run.name, run.params, tags, existing_run_id=existing
        )

    def close(self, failed: bool = False, status: str | None = None) -> bool:
        """Mark the run FINISHED or FAILED (``status`` overrides, e.g. KILLED). Never raises for an
        outage and never takes more than two bounded tries: on the failure path the real error must
        come out, not MLflow's. Returns whether the run was marked."""
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

    def record(self, record: TrainingRecord) -> Recorded:
        """Artifacts (config, curves, final metrics, model summary) and the best model, then FINISHED.

        Waits (bounded) for a server that is down; whatever still cannot be logged is one warning
        each, and the run is marked FINISHED when the server takes it."""
        from resnet_platform.models.summary import format_table

        self.wait_for_server()
        model_uri = model_version = None
        with (
            RunLogger(self.tracking_uri, self.run_id, limits=self.limits, restarted=False) as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            # Epochs rank 0 could not deliver (MLflow was down when it closed) come from the
            # checkpoint's history; epochs the run already holds are skipped by log_epoch.
            held = run.last_epoch  # None while the server's history is unknown: filtered on send
            missing = [r for r in record.history if held is None or int(r["epoch"]) > held]
            for row in missing:
                run.log_epoch(int(row["epoch"]), row, step=int(row["step"]))
            if missing and held is not None:
                log.warning(
                    "MLflow run %s: epochs %s logged from the checkpoint's history (rank 0 could not send them)",
                    self.run_id,
                    ", ".join(str(int(r["epoch"])) for r in missing),
                )
            run.log_dict(redact(dict(record.config)), "config.json")
            run.log_dict({"final": record.final, "best": record.best_metrics}, "final_metrics.json")
            run.log_text(format_table([record.arch]), "model_summary.md")
            if record.history:
                run.log_figure(
                    plot_error_curves(list(record.history), Path(tmp) / "error_curves.png"),
                    "error_curves.png",
                )
            if record.load_best_model is not None:
                best = record.load_best_model()
                try:
                    with bounded_mlflow_http(self.limits):
                        info = log_resnet_model(
                            self.tracking_uri,
                            self.run_id,
                            best.weights,
                            best.spec,
                            registered_name=record.register_as,
                            metrics=best.metrics,
                            step=best.step,
                        )
                except Exception as e:
                    if not is_outage(e):
                        raise
                    log.error(
                        "best model not logged: MLflow at %s is not answering (%s); its checkpoint is %s",
                        self.tracking_uri,
                        _one_line(e),
                        record.best_checkpoint,
                    )
                else:
                    model_uri, model_version = info.model_uri, info.version
                    log.info(
                        "logged model %s%s",
                        info.model_uri,
                        f" as {info.registered_uri}" if info.version else "",
                    )
        return Recorded(model_uri, model_version, self.close())

    def record_origin(self, origin: WeightsOrigin) -> None:
        """Tag the run with where its initial weights came from (``--init-from``)."""
        with bounded_mlflow_http(self.limits):
            record_run_origin(self.tracking_uri, self.run_id, origin)

    def record_parent(self, name: str, version: str, origin: WeightsOrigin) -> None:
        """Name the parent on the version this run registered (tags and description)."""
        with bounded_mlflow_http(self.limits):
            record_version_parent(self.tracking_uri, name, version, origin)

    def log_results(
        self,
        *,
        metrics: Mapping[str, float] | None = None,
        step: int = 0,
        dicts: Mapping[str, Any] | None = None,
        figures: Mapping[str, str | Path] | None = None,
    ) -> None:
        """Results measured after the fit (the paper's test error, layer responses): finite
        ``metrics`` at ``step``, ``dicts`` as JSON artifacts, ``figures`` (PNG paths) by name."""
        log_results(self.tracking_uri, self.run_id, metrics=metrics, step=step, dicts=dicts, figures=figures)


def log_results(
    tracking_uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    step: int = 0,
    texts: Mapping[str, str] | None = None,
    dicts: Mapping[str, Any] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    files: Sequence[str | Path] = (),
) -> None:
    """Artifacts and metrics into an existing run (any state); NaN metrics are skipped."""
    with RunLogger(tracking_uri, run_id, restarted=False) as run:
        for name, text in (texts or {}).items():
            run.log_text(text, name)
        for name, value in (dicts or {}).items():
            run.log_dict(value, name)
        for name, png in (figures or {}).items():
            run.log_figure(png, name)
        for path in files:
            run.log_artifact_file(path)
        points = RunLogger._metrics(metrics or {}, step, int(time.time() * 1000))
        if points:
            run.client.log_batch(run_id, metrics=points, synchronous=True)


def _one_line(e: BaseException | None) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 240 else text[:237] + "..."


def _ray_job_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    except Exception:  # the tag is informative only
        return None


__all__ = [
    "BestModel",
    "Recorded",
    "RunDescription",
    "TrackingUnavailableError",
    "TrainingRecord",
    "TrainingRun",
    "log_results",
]
