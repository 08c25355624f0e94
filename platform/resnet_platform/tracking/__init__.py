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

from resnet_platform._lazy import lazy_exports

_EXPORTS = {
    "plot_error_curves": ".curves",
    "InputLimits": ".inference",
    "InputRejected": ".inference",
    "LoadedModel": ".inference",
    "ModelSpec": ".inference",
    "Prediction": ".inference",
    "Preprocess": ".inference",
    "check_rows": ".inference",
    "image_from_request": ".inference",
    "load_from_files": ".inference",
    "TrackingLimits": ".limits",
    "bounded_mlflow_http": ".limits",
    "LoggedModelInfo": ".model_logging",
    "log_resnet_model": ".model_logging",
    "save_resnet_model": ".model_logging",
    "flatten_params": ".params",
    "redact": ".params",
    "redact_text": ".params",
    "alias_version": ".registry",
    "decide_promotion": ".registry",
    "download_model": ".registry",
    "load_model": ".registry",
    "promote": ".registry",
    "resolve_model_artifact_uri": ".registry",
    "set_alias": ".registry",
    "version_metric": ".registry",
    "DEFAULT_EXPERIMENT": ".runs",
    "DEFAULT_TRACKING_URI": ".runs",
    "client_for": ".runs",
    "default_tags": ".runs",
    "end_run": ".runs",
    "ensure_experiment": ".runs",
    "find_run": ".runs",
    "git_commit": ".runs",
    "resolve_tracking_uri": ".runs",
    "start_run": ".runs",
    "record_summary_run": ".summary_run",
    "SweepRun": ".sweep_runs",
    "TrialEnd": ".sweep_runs",
    "TrialRun": ".sweep_runs",
    "BestModel": ".training_run",
    "Recorded": ".training_run",
    "RunDescription": ".training_run",
    "TrackingUnavailableError": ".training_run",
    "TrainingRecord": ".training_run",
    "TrainingRun": ".training_run",
    "RunLogger": ".worker_logger",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
