"""MLflow tracking for resnet-platform: every run lifecycle (a training run, a sweep's parent and
children, the paper grid's summary), rank-0 logging, curves, model logging, registry.

Lifecycles, on the driver, in plain values (``train/``, ``tune/`` and ``paper/`` call these and
never MLflow itself)::

    run = TrainingRun(uri); run.open(RunDescription(...)); ...; run.record(TrainingRecord(...))
    sweep = SweepRun(uri); sweep.open(...); TrialRun(uri, sweep.run_id, name, trial_id) per trial
    record_summary_run(uri, experiment, name, params=..., tags=..., files=..., metrics=...)

The building blocks underneath::

    uri = resolve_tracking_uri(args.tracking_uri)          # pass this exact string to the workers
    run_id = find_run(uri, exp, name) if resume else None
    run_id = start_run(uri, exp, name, params=config, tags={...}, existing_run_id=run_id)
    ...  # workers: with RunLogger(uri, run_id) as rl: rl.log_step(...); rl.log_epoch(...)
    info = log_resnet_model(uri, run_id, state_dict, ModelSpec.for_arch(arch, ...), registered_name=...)
    end_run(uri, run_id)

Consumers::

    m = load_model("models:/resnet50-imagenet@champion")
    m.predict_topk(["cat.jpg"], k=5)
"""

from .curves import plot_error_curves
from .inference import (
    InputLimits,
    InputRejected,
    LoadedModel,
    ModelSpec,
    Prediction,
    Preprocess,
    check_rows,
    image_from_request,
    load_from_files,
)
from .limits import TrackingLimits, bounded_mlflow_http
from .model_logging import LoggedModelInfo, log_resnet_model, save_resnet_model
from .params import flatten_params, redact, redact_text
from .registry import (
    alias_version,
    decide_promotion,
    download_model,
    load_model,
    promote,
    resolve_model_artifact_uri,
    set_alias,
    version_metric,
)
from .runs import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    client_for,
    default_tags,
    end_run,
    find_run,
    git_commit,
    resolve_tracking_uri,
    start_run,
)
from .summary_run import record_summary_run
from .sweep_runs import SweepRun, TrialEnd, TrialRun
from .training_run import (
    BestModel,
    Recorded,
    RunDescription,
    TrackingUnavailableError,
    TrainingRecord,
    TrainingRun,
)
from .worker_logger import RunLogger

__all__ = [
    "BestModel",
    "DEFAULT_EXPERIMENT",
    "DEFAULT_TRACKING_URI",
    "InputLimits",
    "InputRejected",
    "LoadedModel",
    "LoggedModelInfo",
    "ModelSpec",
    "Prediction",
    "Preprocess",
    "Recorded",
    "RunDescription",
    "RunLogger",
    "SweepRun",
    "TrackingLimits",
    "TrackingUnavailableError",
    "TrainingRecord",
    "TrainingRun",
    "TrialEnd",
    "TrialRun",
    "alias_version",
    "bounded_mlflow_http",
    "check_rows",
    "client_for",
    "decide_promotion",
    "default_tags",
    "download_model",
    "end_run",
    "find_run",
    "flatten_params",
    "git_commit",
    "image_from_request",
    "load_from_files",
    "load_model",
    "log_resnet_model",
    "plot_error_curves",
    "promote",
    "record_summary_run",
    "redact",
    "redact_text",
    "resolve_model_artifact_uri",
    "resolve_tracking_uri",
    "save_resnet_model",
    "set_alias",
    "start_run",
    "version_metric",
]
