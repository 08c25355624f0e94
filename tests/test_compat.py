"""Each Ray/MLflow workaround of ``resnet_platform/_compat.py``: checked on the installed version, still
working (the private attribute is there and behaves as relied on), and still needed (the library has
not grown the public way). When one of these fails after an upgrade, recheck the workaround named in
the test: widen its range in ``WORKAROUNDS``, or delete it and call the library directly."""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import types

import pytest

from resnet_platform import _compat
from resnet_platform._compat import WORKAROUNDS


@pytest.mark.parametrize("name", sorted(WORKAROUNDS))
def test_installed_version_is_one_the_workaround_was_checked_on(name):
    from importlib.metadata import version

    w = WORKAROUNDS[name]
    assert w.covers_installed(), (
        f"{w.package} {version(w.package)} is installed; _compat.{name} was checked on {w.package}"
        f"{w.versions} only. Recheck it ({w.why}), then widen its range or remove it."
    )


def test_every_compat_function_names_its_workaround():
    public = {
        n
        for n, v in vars(_compat).items()
        if inspect.isfunction(v) and v.__module__ == _compat.__name__ and not n.startswith("_")
    }
    assert public == set(WORKAROUNDS)


# ------------------------------------------------------------------------------------- Ray Tune


@pytest.mark.slow  # imports Ray Tune: ~3 s
def test_tune_interrupt_is_seen_in_tunes_own_sigint_handler():
    """Tune's SIGINT handler (the one ``Tuner.fit`` installs) still logs the warning the watch reads."""
    from ray.tune import tune as tune_module

    original = signal.getsignal(signal.SIGINT)
    try:
        event = tune_module._setup_signal_catching()
        handler = signal.getsignal(signal.SIGINT)
        assert handler is not original
        with _compat.watch_tune_interrupt() as watch:
            assert not watch.interrupted
            handler(signal.SIGINT, None)
        assert event.is_set() and watch.interrupted
    finally:
        signal.signal(signal.SIGINT, original)
    assert watch not in logging.getLogger("ray.tune").handlers


def test_tune_results_still_do_not_say_the_run_was_interrupted():
    from ray.tune import ExperimentAnalysis, ResultGrid

    assert not [n for n in dir(ResultGrid) if "interrupt" in n.lower()]
    assert "interrupted" not in inspect.signature(ExperimentAnalysis.__init__).parameters


def _asha(max_t: int):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric="val_top1_error",
        mode="min",
        max_t=max_t,
        grace_period=1,
        reduction_factor=2,
    )


def test_asha_max_t_lets_a_trial_train_its_last_epoch():
    from ray.tune.schedulers import TrialScheduler

    epochs = 3
    trial = types.SimpleNamespace(trial_id="t0")
    # Still needed: at max_t == epochs ASHA answers STOP to the last epoch's report.
    plain = _asha(epochs)
    plain.on_trial_add(None, trial)
    decisions = [plain.on_trial_result(None, trial, {"epoch": e, "val_top1_error": 0.5}) for e in (1, 2, 3)]
    assert decisions[-1] == TrialScheduler.STOP
    # Works: one past the last epoch, the trial is never stopped for having reached max_t.
    ours = _asha(_compat.asha_max_t(epochs))
    ours.on_trial_add(None, trial)
    decisions = [ours.on_trial_result(None, trial, {"epoch": e, "val_top1_error": 0.5}) for e in (1, 2, 3)]
    assert decisions == [TrialScheduler.CONTINUE] * 3


@pytest.mark.parametrize(
    "failed, stopped_early, run, expected",
    [
        (True, False, "FAILED", "FAILED"),
        (True, False, "RUNNING", "FAILED"),
        (False, True, "FAILED", "FINISHED"),  # ASHA's stop, seen by the trial as a failure
        (False, True, "RUNNING", "FINISHED"),
        (False, False, "FINISHED", None),
        (False, False, "FAILED", None),  # a trial that failed on its own stays FAILED
    ],
)
def test_sweep_child_run_status(failed, stopped_early, run, expected):
    assert _compat.sweep_child_run_status(failed, stopped_early, run) == expected


def test_quiet_tune_output_picks_the_engine_that_is_silent_at_verbose_0(monkeypatch):
    """Still needed: the default engine is the one whose start box ignores verbosity; the variable
    set by ``quiet_tune_output`` switches Tune to the legacy engine (no AIR verbosity)."""
    from ray.tune.experimental.output import AirVerbosity, TuneTerminalReporter, get_air_verbosity

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT")
    assert get_air_verbosity(0) == AirVerbosity(0)
    assert "Configuration for experiment" in inspect.getsource(TuneTerminalReporter.experiment_started)
    _compat.quiet_tune_output()
    assert get_air_verbosity(0) is None


# ------------------------------------------------------------------------------------ Ray Train


def test_data_config_private_settings_are_the_ones_given():
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    opts = ExecutionOptions(preserve_order=True)
    config = DataConfig(execution_options={"val": opts}, enable_shard_locality=False)
    assert _compat.data_config_shard_locality(config) is False
    assert _compat.data_config_shard_locality(DataConfig()) is True
    resolved = _compat.data_config_execution_options(config, "val")
    assert isinstance(resolved, ExecutionOptions) and resolved.preserve_order and resolved is not opts
    # Still needed: no public accessor, and Ray's own split still evens every dataset out.
    assert not hasattr(config, "enable_shard_locality") and not hasattr(config, "execution_options")
    assert "equal=True" in inspect.getsource(DataConfig.configure)


def test_train_storage_context_has_the_methods_the_checkpoint_retry_calls():
    from ray.train.v2._internal.execution.storage import StorageContext

    persist = inspect.signature(StorageContext.persist_current_checkpoint).parameters
    assert list(persist)[1:3] == ["checkpoint", "checkpoint_dir_name"]
    assert list(inspect.signature(StorageContext.build_checkpoint_path_from_name).parameters)[1:] == [
        "checkpoint_name"
    ]


def test_ray_train_still_leaves_its_sigint_handler_and_the_block_puts_the_old_one_back():
    """Ray Train's fit installs a handler that holds the run's controller, and keeps no note of the
    one it replaced (the day it does, this workaround can go); the block puts that one back."""
    from ray.train.v2.api import data_parallel_trainer as dpt

    source = inspect.getsource(dpt.DataParallelTrainer)
    assert "self._register_sigint_handler(controller)" in source and "getsignal" not in source
    original = signal.getsignal(signal.SIGINT)
    trainer = object.__new__(dpt.DataParallelTrainer)
    try:
        with _compat.sigint_handler_restored():
            trainer._register_sigint_handler(controller=None)
            installed = signal.getsignal(signal.SIGINT)
            assert installed is not original and installed.__qualname__.endswith("sigint_handler")
        assert signal.getsignal(signal.SIGINT) is original
    finally:
        signal.signal(signal.SIGINT, original)


# ------------------------------------------------------------------------------------- Ray core


def test_placement_group_cleaner_still_finds_the_cluster_by_auto_detection():
    from ray.train.v2._internal.state.util import is_actor_alive

    assert "address" not in inspect.signature(is_actor_alive).parameters


def test_local_cluster_address_is_set_for_the_block_then_put_back(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_GCS_SERVER_PORT", "1234")
    with _compat.local_cluster_address_for_workers() as address:
        port = address.rsplit(":", 1)[1]
        assert os.environ["RAY_ADDRESS"] == address and os.environ["RAY_GCS_SERVER_PORT"] == port
    assert "RAY_ADDRESS" not in os.environ and os.environ["RAY_GCS_SERVER_PORT"] == "1234"


@pytest.mark.slow  # a worker process: seconds
def test_ray_workers_of_the_local_cluster_find_it(ray_local):
    """The session's Ray was started the platform's way: its worker processes name their own cluster
    even with other Ray instances on the machine."""

    @ray_local.remote(num_cpus=0)
    def detected() -> str:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        return canonicalize_bootstrap_address_or_die(None)

    assert ray_local.get(detected.remote()) == ray_local.get_runtime_context().gcs_address


def test_ray_data_console_is_quieted_in_this_process():
    import ray.data  # noqa: F401  (configures its logger)
    from ray.data._internal.logging import DEFAULT_CONFIG, SessionFileHandler

    # Still needed: Ray Data's own console handler prints INFO and bypasses the root logger.
    assert DEFAULT_CONFIG["handlers"]["console"]["level"] == "INFO"
    assert DEFAULT_CONFIG["loggers"]["ray.data"]["propagate"] is False
    from ray._private.log import PlainRayHandler

    # A handler someone else put on the non-propagating logger, shared with the root logger (as a
    # user's log config does, and pytest's caplog): it keeps its level, so INFO lines elsewhere stay.
    theirs = logging.Handler(logging.INFO)
    logging.getLogger("ray.data").addHandler(theirs)
    handlers = logging.getLogger("ray.data").handlers
    saved = [(h.level, list(h.filters)) for h in handlers]
    try:
        _compat.quiet_ray_data_console()
        consoles = [h for h in handlers if type(h) is PlainRayHandler]
        assert consoles and all(h.level == logging.WARNING for h in consoles)
        assert all(h.level == 0 for h in handlers if isinstance(h, SessionFileHandler))  # files keep all
        assert theirs.level == logging.INFO
        notice = logging.LogRecord(
            "ray.data", logging.WARNING, "", 0, "Progress bars disabled. To enable", None, None
        )
        assert not any(h.filter(notice) for h in consoles)
    finally:
        for h, (level, filters) in zip(handlers, saved, strict=True):
            h.setLevel(level)
            h.filters[:] = filters
        logging.getLogger("ray.data").removeHandler(theirs)
    # The notice filtered out is still Ray Data's own wording.
    from ray.data._internal import progress

    assert "Progress bars disabled" in inspect.getsource(progress)


def test_training_function_traceback_is_dropped_only_for_errors_the_driver_reports():
    from ray.train.v2._internal.util import construct_user_exception_with_traceback

    from resnet_platform.console import is_one_line_error
    from resnet_platform.train.data_wait import DataWaitTimeout

    logger = logging.getLogger(_compat.TRAIN_FUNCTION_ERROR_LOGGER)
    records: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = records.append
    saved = list(logger.filters)
    logger.addHandler(catch)
    try:
        _compat.hide_training_function_traceback(is_one_line_error)
        for error in (DataWaitTimeout("no train batch"), RuntimeError("a bug")):
            try:
                raise error
            except Exception as e:  # Ray Train's own call, as its thread runner makes it
                construct_user_exception_with_traceback(e)
    finally:
        logger.removeHandler(catch)
        logger.filters[:] = saved
    logged = [r.getMessage() for r in records if "Error in training function" in r.getMessage()]
    # Still needed: Ray logs the traceback itself; the platform's one-line error is dropped, a bug is not.
    assert len(logged) == 1 and "RuntimeError: a bug" in logged[0] and "Traceback" in logged[0]


def test_forwarded_worker_lines_go_through_the_filter():
    """``ray.init(log_to_driver=True)`` still registers the driver's printer of forwarded lines under
    the name the filter looks for; the filter then sees each batch and prints what it keeps."""
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    source = inspect.getsource(worker.connect)
    assert (
        f'"{_compat.FORWARDED_LOGS_HANDLER}"' in source
        and "global_worker_stdstream_dispatcher.add_handler" in source
    )
    saved = list(dispatcher.handlers)
    printed: list[list[str]] = []
    try:
        dispatcher.add_handler(_compat.FORWARDED_LOGS_HANDLER, lambda data: printed.append(data["lines"]))
        assert _compat.filter_worker_log_lines(lambda lines: [line for line in lines if line != "noise"])
        dispatcher.emit({"lines": ["noise", "a line"], "pid": 1, "is_err": False})
        dispatcher.emit({"lines": ["noise"], "pid": 1, "is_err": False})
    finally:
        dispatcher.handlers = saved
    assert printed == [["a line"]]


# --------------------------------------------------------------------------------------- MLflow


def test_latest_metrics_keep_their_steps():
    from mlflow.entities import Metric, RunData

    run = types.SimpleNamespace(data=RunData(metrics=[Metric("loss", 0.5, 1, 7), Metric("lr", 0.1, 1, 9)]))
    assert sorted((m.key, m.step) for m in _compat.latest_metrics(run)) == [("loss", 7), ("lr", 9)]
    # Still needed: the public view has the values only.
    assert run.data.metrics == {"loss": 0.5, "lr": 0.1}


def test_global_tracking_uri_is_scoped_to_the_block(monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with _compat.use_global_tracking_uri("sqlite:////nowhere/compat.db"):
        assert mlflow.get_tracking_uri() == "sqlite:////nowhere/compat.db"
    assert mlflow.get_tracking_uri() == before and "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.slow  # a fresh SQLite store: seconds of schema migrations
def test_model_version_source_is_still_resolved_through_the_global_uri(logged_model):
    """Still needed: with a store the client opens itself (the SQLite default, the demo's), its
    create_model_version looks a ``models:/m-...`` source up in the process-wide tracking URI. With
    that pointing at a dead server, the call fails; scoped to the store, it works."""
    from mlflow.exceptions import MlflowException

    store = logged_model
    client, model, source = store.client, store.model, f"models:/{store.model.model_id}"
    with _compat.use_global_tracking_uri(store.dead), pytest.raises(MlflowException) as refused:
        client.create_model_version("m", source=source, run_id=store.run_id, model_id=model.model_id)
    assert store.dead in str(refused.value), refused.value  # it went to the global URI
    with _compat.use_global_tracking_uri(store.uri):
        mv = client.create_model_version("m", source=source, run_id=store.run_id, model_id=model.model_id)
    assert str(mv.version) == "1"


@pytest.fixture
def logged_model(tmp_path, monkeypatch):
    """A fresh SQLite store holding a run, a logged model ``m-...`` and a registered model ``m``
    (no version yet), and a process-wide URI to point elsewhere (``dead``: nothing listens)."""
    from fixtures.ports import free_port

    from resnet_platform.tracking.runs import client_for, start_run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    run_id = start_run(uri, "compat", "logged-model")
    model = client.create_logged_model(
        experiment_id=client.get_run(run_id).info.experiment_id, name="m", source_run_id=run_id
    )
    client.create_registered_model("m")
    dead = f"http://127.0.0.1:{free_port()}"
    return types.SimpleNamespace(uri=uri, dead=dead, client=client, run_id=run_id, model=model)


@pytest.mark.slow  # a fresh SQLite store: seconds of schema migrations
def test_model_uris_resolve_through_the_given_client_not_the_global_uri(logged_model, tmp_path):
    """``model_artifact_uri`` resolves ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and
    ``runs:/`` through the client it is given while the process-wide URI points at a dead server;
    still needed: MLflow's own download of the same URI goes to the process-wide registry."""
    import mlflow

    uri, dead, client, run_id, model = (
        getattr(logged_model, k) for k in ("uri", "dead", "client", "run_id", "model")
    )
    with _compat.use_global_tracking_uri(uri):
        client.create_model_version(
            "m", source=f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id
        )
    client.set_registered_model_alias("m", "champion", "1")
    with _compat.use_global_tracking_uri(dead):
        assert _compat.model_artifact_uri(client, "models:/m@champion") == model.artifact_location
        assert _compat.model_artifact_uri(client, "models:/m/1") == model.artifact_location
        run_uri = client.get_run(run_id).info.artifact_uri
        assert _compat.model_artifact_uri(client, f"runs:/{run_id}/model") == f"{run_uri}/model"
        assert _compat.model_artifact_uri(client, "s3://b/p") == "s3://b/p"
        with pytest.raises(Exception) as refused:
            mlflow.artifacts.download_artifacts(
                artifact_uri="models:/m@champion",
                dst_path=str(tmp_path / "dl"),
                tracking_uri=uri,
                registry_uri=uri,
            )
    assert dead.split("//")[1] in str(refused.value), refused.value  # it asked the process-wide URI


# ------------------------------------------------------------------------------ the test runner


@pytest.mark.xdist_group("compat_probe")
def test_xdist_groups_reach_the_scheduler(request):
    """``make test`` runs ``--dist loadgroup``: a grouped test's id must carry its group, or
    pytest-xdist schedules it like any other (tests/conftest.py's shim for pytest 9.2)."""
    grouped = request.node.nodeid.endswith("@compat_probe")
    assert grouped == bool(getattr(request.config.option, "loadgroup", False)), request.node.nodeid


def test_ray_train_snapshot_still_loses_inf_scores_and_keeps_the_unranked_one():
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _TrainingResultState

    def stored(value: float):
        state = _TrainingResultState(checkpoint_dir_name="c", metrics={"val_top1_error": value})
        return json.loads(state.model_dump_json())["metrics"]["val_top1_error"]

    assert stored(float("inf")) is None  # the workaround is still needed
    assert stored(_compat.unranked_score()) == _compat.unranked_score() > 1.0  # worse than any error
