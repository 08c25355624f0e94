"""The driver side of a training run: check inputs, wire a TorchTrainer, fit, hand the best
checkpoint to MLflow.

Everything that can be wrong with the inputs (arch, data URI, manifest, storage, run name) is
checked here in seconds, before any worker starts.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.data import ExecutionOptions, ExecutionResources
from ray.train import CheckpointConfig, LoggingConfig, RunConfig
from ray.train.torch import TorchTrainer

from resnet_platform import _compat, storage
from resnet_platform.console import ensure_ray, is_verbose
from resnet_platform.data.checks import check_prepared_data, check_splits, find_data_error
from resnet_platform.data.manifest import Manifest, PreparedData
from resnet_platform.data.skip_ledger import close_ledgers
from resnet_platform.errors import UserError
from resnet_platform.stopping import raise_if_stopped

from . import init_from
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data_config import ExactValidationDataConfig
from .data_wait import set_no_progress_backstop
from .elastic import scaling_config
from .loop import train_loop_per_worker
from .preemption import failure_config
from .worker_data import transform_config_of

if TYPE_CHECKING:  # MLflow and matplotlib stay out of processes that only build or run a trainer
    from resnet_platform.tracking.training_run import TrainingRun

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


class RunExistsError(UserError, ValueError):
    pass


@dataclass
class TrainingOutcome:
    name: str
    run_path: str  # storage URI of the run (checkpoints live below it)
    history: list[dict[str, float]]
    best_checkpoint: ray.train.Checkpoint | None
    best_metrics: dict[str, Any]
    mlflow_run_id: str | None = None
    model_uri: str | None = None  # the best model, when logged
    model_version: str | None = None  # its registered version, when registered
    mlflow_closed: bool | None = None  # whether the MLflow run was marked FINISHED (None: not tracked)
    skipped: dict[str, int] = field(default_factory=dict)  # split -> images skipped (data/skip_ledger.py)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def run_exists(fs: pafs.FileSystem, path: str, name: str) -> bool:
    return fs.get_file_info(f"{path.rstrip('/')}/{name}").type != pafs.FileType.NotFound


def build_datasets(config: TrainConfig, data: PreparedData | None = None) -> dict[str, ray.data.Dataset]:
    """Train and val streams, read and decoded where ``config.placement`` says. Deterministic runs
    read the training split in stored order: Ray Data reseeds its shuffles per execution, which a
    resumed run would restart from. ``data``: ``config.data`` already opened (else opened here)."""
    from resnet_platform.data.pipeline import build_split_dataset

    common = {
        "run": config.run_uri,  # skips are recorded per run (data/skip_ledger.py)
        "seed": config.seed,
        "placement": config.placement,
        "decode": config.decode,
        "max_image_pixels": config.max_image_pixels,
    }
    data = data or PreparedData.open(config.data)
    datasets = {
        "val": build_split_dataset(
            data, "val", train=False, transform=transform_config_of(config, train=False), **common
        ),
    }
    if not config.uses_epoch_plan:  # with the plan, each worker builds its own training stream
        datasets["train"] = build_split_dataset(
            data, "train", train=not config.deterministic,
            transform=transform_config_of(config, train=True), **common,
        )  # fmt: skip
    return datasets


def build_trainer(
    config: TrainConfig, datasets: dict[str, ray.data.Dataset], callbacks: list | None = None
) -> TorchTrainer:
    """``callbacks``: Ray Train ``UserCallback``s for the RunConfig (a Tune trial passes
    ``TuneReportCallback`` so each epoch's report reaches Tune)."""
    fs, path = storage.resolve(config.storage_uri())
    # Always our own ingest options: Ray's defaults copy the deprecated ``exclude_resources`` (Ray 2.60
    # warns on every run). The label selector holds every data task of every dataset on the data nodes.
    placement = config.placement
    # The read-ahead's object-store budget (--ingest-object-store-gib), per stream; Ray's own is half the store.
    budget = config.ingest_object_store_gib * 2**30 or None
    ingest = ExecutionOptions(
        preserve_order=config.deterministic,
        label_selector=placement.data_selector,
        resource_limits=ExecutionResources(object_store_memory=budget) if budget else None,
    )
    set_no_progress_backstop(datasets, config)  # above the data-wait watchdog's limits
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        # N fixed, or MIN-MAX elastic (train/elastic.py); never on a data node (label or resource).
        scaling_config=scaling_config(
            config, resources_per_worker=resources, label_selector=placement.worker_selector_on(ray.nodes())
        ),
        run_config=RunConfig(
            name=config.name,
            storage_path=path,
            storage_filesystem=fs,
            callbacks=list(callbacks or []),
            failure_config=failure_config(config),  # preemptions have their own budget
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute=config.score_metric,  # the EMA's with --register-ema
                checkpoint_score_order="min",
            ),
            # Ray Train's own INFO lines repeat every metric of every report; rank 0 prints its own.
            logging_config=LoggingConfig(
                log_level=os.environ.get("RESNET_PLATFORM_TRAIN_LOG_LEVEL")
                or ("INFO" if is_verbose() else "WARNING")
            ),
        ),
        datasets=datasets,
        dataset_config=ExactValidationDataConfig(execution_options=ingest),
    )


def prepare_config(config: TrainConfig, manifest: Manifest) -> TrainConfig:
    """Fill in what the driver knows: class count, a run name, absolute storage and data (each
    worker opens the data itself for its epoch plan, in Ray's working directory, not the job's)."""
    # A generated name is a new run: the random tail keeps two jobs started in the same second
    # apart (with --resume auto, the second would otherwise continue the first).
    name = config.name or f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    train = manifest.splits.get("train")
    return replace(
        config,
        num_classes=len(manifest.classes),
        train_images=train.num_rows if train is not None else None,
        name=name,
        storage=config.storage_uri(),
        data=storage.absolute(config.data) if config.data else config.data,
    )


def check_run_name(config: TrainConfig) -> TrainConfig:
    """The run name against ``--resume`` (train/resume.py): the config to run, its ``resume`` now
    ``must`` (a run continued: the same settings, checked here) or ``never`` (a new run). Nothing
    is written here: :func:`remember_settings` stores them once the run's other checks passed."""
    from . import resume

    continued = check_name_and_resume(config.storage, config.name, config.resume, RunExistsError, kind="run")
    if continued:
        resume.check_same_settings(config.run_uri, config.to_dict())  # a run without stored ones passes
        log.info(
            "continuing run %s (--resume %s) from its latest stored checkpoint, if any",
            config.run_uri,
            config.resume,
        )
    return replace(config, resume="must" if continued else "never")


def remember_settings(config: TrainConfig) -> None:
    """Store the run's settings for the next resume to compare with, unless stored already."""
    from . import resume

    if resume.stored_settings(config.run_uri) is None:
        resume.store_settings(config.run_uri, config.to_dict())


def check_name_and_resume(
    storage_uri: str, name: str, resume: bool | str, error: type[Exception], *, kind: str
) -> bool:
    """The one rule of ``--name`` and ``--resume`` (training runs and sweeps; ``train/resume.py``):
    auto continues ``kind`` when ``name`` is taken at ``storage_uri`` and starts it when not; must
    (a sweep's ``--resume``: True) needs it taken, never (False) needs it free; ``error`` says which
    was wrong. Returns whether it is continued."""
    from .resume import resolve

    fs, path = storage.resolve(storage_uri)
    return resolve(resume, run_exists(fs, path, name), storage.join(storage_uri, name), kind, error)


def run_training(
    config: TrainConfig,
    *,
    tracker: TrainingRun | None = None,
    datasets: dict[str, ray.data.Dataset] | None = None,
    manifest: Manifest | None = None,
    callbacks: list | None = None,
) -> TrainingOutcome:
    """Fit ``config``; ``tracker`` (a :class:`~resnet_platform.tracking.training_run.TrainingRun`)
    opens and closes the MLflow run around the fit and logs the best model.

    ``datasets`` (``{"train", "val"}`` of uint8 HWC rows) with their ``manifest`` (classes) replace
    the prepared Parquet data at ``config.data``: how CIFAR-10 archives are trained.
    ``callbacks`` go to Ray Train's RunConfig (a Tune trial's ``TuneReportCallback``)."""
    if (datasets is None) != (manifest is None):
        raise ValueError("pass datasets and manifest together")
    if datasets is not None:  # in-memory rows (CIFAR archives): no shards for an epoch plan to read
        config = replace(config, epoch_order="stream")
    if datasets is None and storage.is_s3(config.data):
        storage.check_reachable(config.data)  # one line within the S3 deadline, not a pyarrow stall
    prepared = None
    if manifest is None:
        prepared = PreparedData.open(config.data)  # the manifest read once for the checks and both splits
        manifest = prepared.manifest
        check_prepared_data(config.data, manifest)  # splits not empty, labels inside the class count
    else:
        check_splits(config.data, manifest)
    # Write access, proved with a probe object: read-only credentials fail here, not an epoch later.
    storage.check_writable(config.storage_uri())
    config = prepare_config(config, manifest)
    config = check_run_name(config)  # resume: auto -> must or never
    requested = config  # the settings a resubmit compares with: --init-from as given, not pinned
    config, origin = init_from.prepare(config)  # --init-from checked and pinned before any worker starts
    ensure_ray()
    try:
        if tracker is not None:
            from .run_record import describe_run, training_record  # tracked runs only: imports MLflow

            config = replace(config, mlflow_run_id=tracker.open(describe_run(config)))
            if origin is not None:
                tracker.record_origin(origin)
        remember_settings(requested)  # after every refusal (MLflow down too): a refused run writes nothing
        trainer = build_trainer(
            config,
            datasets if datasets is not None else build_datasets(config, prepared),
            callbacks=callbacks,
        )
        if config.resume == "never":  # a ledger left by an earlier run of this name (its driver died)
            close_ledgers(config.run_uri, SPLITS)
        with _compat.sigint_handler_restored():
            result = trainer.fit()
        raise_if_stopped()  # SIGTERM taken by Ray Train's own abort: the run is killed, not finished
        raise_if_diverged(result)
    except BaseException as err:
        close_ledgers(config.run_uri, SPLITS)
        if tracker is not None:  # bounded, and never raises over ``err``
            tracker.close(failed=True, status="KILLED" if isinstance(err, KeyboardInterrupt) else None)
        data_error = find_data_error(err) if isinstance(err, Exception) else None
        if data_error is not None:  # a corrupt shard, the skip budget: one line, not a traceback
            raise data_error from err
        raise
    outcome = summarize(config, result)
    outcome.skipped = close_ledgers(config.run_uri, SPLITS)  # the run's record of unusable images
    if tracker is not None:
        record = training_record(
            config, manifest, outcome.history, outcome.best_metrics, outcome.best_checkpoint
        )
        try:
            recorded = tracker.record(record)
        except BaseException:
            tracker.close(failed=True)
            raise
        if origin is not None and recorded.model_version:
            tracker.record_parent(config.register_as, recorded.model_version, origin)
        outcome.model_uri = recorded.model_uri
        outcome.model_version = recorded.model_version
        outcome.mlflow_closed = recorded.closed
    return outcome


def raise_if_diverged(result) -> None:
    """The workers' loss guard stopped the run (``train/loss_guard.py``): its one line, as the error."""
    from .loop import NON_FINITE_LOSS
    from .loss_guard import NonFiniteLossError

    value = getattr(result, "return_value", None)
    if isinstance(value, dict) and value.get(NON_FINITE_LOSS):
        raise NonFiniteLossError(value[NON_FINITE_LOSS])


def summarize(config: TrainConfig, result) -> TrainingOutcome:
    history: list[dict[str, float]] = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as directory:
            history = list(load_checkpoint(directory)["history"])
    best = None
    best_metrics: dict[str, Any] = {}
    if result.best_checkpoints:
        ckpt, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1][config.score_metric])
        best = ckpt
    return TrainingOutcome(
        name=config.name,
        run_path=f"{config.storage.rstrip('/')}/{config.name}",
        history=history,
        best_checkpoint=best,
        best_metrics=dict(best_metrics),
        mlflow_run_id=config.mlflow_run_id,
    )
