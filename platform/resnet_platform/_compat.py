"""Every workaround for a behaviour of Ray or MLflow, in one place, with the versions it was checked on.

Each function here stands in for one Ray or MLflow call the platform would make if the library
offered it (a public accessor, a status, a setting), or works around one behaviour of the library.
:data:`WORKAROUNDS` names, for each function, the package and the versions on which it was checked
and why it exists. ``tests/test_compat.py`` fails when the installed version leaves that range (recheck
the workaround, then widen the range or delete the workaround), and, where it can be checked in a
second, when the library no longer behaves as the workaround relies on, or no longer needs it.

This module imports nothing from the platform: ``tracking/``, ``train/``, ``tune/`` and ``data/`` all
call it. Its functions take and return plain values and library objects.

Gone already: Ray 2.60's Parquet reader V2 was switched off process-wide around ``read_parquet``
(``DataContext.use_datasource_v2 = False``, one read task per shard); since the shard reader
(``data/shard_reader.py``) reads and verifies every shard itself, nothing depends on either reader.
Trial ids and statuses read from the private ``ResultGrid._experiment_analysis.trials``: every Tune
job reads its ``ResultGrid`` through the public API now (``tune/trials.py``:
``Result.metrics["trial_id"]``, ``Result.error``, ``ResultGrid.num_terminated``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version as installed_version

from packaging.specifiers import SpecifierSet
from packaging.version import Version


@dataclass(frozen=True)
class Workaround:
    package: str  # distribution name: "ray" or "mlflow"
    versions: str  # the versions it was checked on, a PEP 440 specifier set
    why: str

    def covers_installed(self) -> bool:
        return Version(installed_version(self.package)) in SpecifierSet(self.versions)


RAY_CHECKED = ">=2.60,<2.61"
MLFLOW_CHECKED = ">=3.17,<3.18"

_STORAGE_CONTEXT = Workaround(
    "ray",
    RAY_CHECKED,
    "Retrying Ray Train's checkpoint upload means calling its StorageContext "
    "(train.get_context().get_storage(), a DeveloperAPI that may change between minor versions): "
    "persist_current_checkpoint and build_checkpoint_path_from_name.",
)

# Function of this module -> the workaround it holds.
WORKAROUNDS: dict[str, Workaround] = {
    "watch_tune_interrupt": Workaround(
        "ray",
        RAY_CHECKED,
        "Tuner.fit() returns normally after a Ctrl-C and reports the trials it stopped as TERMINATED: "
        "the only sign of the interrupt is Tune's 'Stop signal received' warning (ray.tune.tune).",
    ),
    "quiet_tune_output": Workaround(
        "ray",
        RAY_CHECKED,
        "Tune's default output engine (RAY_AIR_NEW_OUTPUT=1) prints a 'Configuration for experiment' "
        "box and 'View detailed results here' at the start of every Tuner.fit, whatever its verbose "
        "(TuneTerminalReporter.experiment_started); the legacy engine at verbose=0 prints nothing.",
    ),
    "asha_max_t": Workaround(
        "ray",
        RAY_CHECKED,
        "ASHA answers STOP at max_t, and Tune then kills the trial's actor before the trial's run can "
        "close its MLflow run and its Train worker group: max_t is one past the last epoch.",
    ),
    "sweep_child_run_status": Workaround(
        "ray",
        RAY_CHECKED,
        "ASHA's stop reaches the trial as an exception inside TorchTrainer.fit(), so the trial's own "
        "tracker marks its MLflow run FAILED; the sweep driver turns that into FINISHED.",
    ),
    "latest_metrics": Workaround(
        "mlflow",
        MLFLOW_CHECKED,
        "RunData.metrics holds the latest value of each metric but not its step; the Metric objects "
        "(with steps) are only on the private RunData._metric_objs.",
    ),
    "model_artifact_uri": Workaround(
        "mlflow",
        MLFLOW_CHECKED,
        "mlflow.artifacts.download_artifacts('models:/NAME@alias', tracking_uri=..., registry_uri=...) "
        "looks the name up in the process-wide registry URI and ignores the one it is given: the "
        "platform resolves models:/ and runs:/ URIs to storage URIs with an explicit client first.",
    ),
    "use_global_tracking_uri": Workaround(
        "mlflow",
        MLFLOW_CHECKED,
        "MlflowClient(uri).create_model_version(source='models:/m-...') looks the logged model up "
        "through the process-wide tracking URI, not the client's; the private "
        "mlflow.tracking._tracking_service.utils._use_tracking_uri scopes that URI to one block.",
    ),
    "data_config_shard_locality": Workaround(
        "ray",
        RAY_CHECKED,
        "A DataConfig subclass that splits some datasets itself needs the enable_shard_locality it "
        "was given; DataConfig keeps it only in the private _enable_shard_locality.",
    ),
    "data_config_execution_options": Workaround(
        "ray",
        RAY_CHECKED,
        "The per-dataset ExecutionOptions a DataConfig was given are resolved only by the private "
        "DataConfig._resolve_execution_options(name).",
    ),
    "sigint_handler_restored": Workaround(
        "ray",
        RAY_CHECKED,
        "TorchTrainer.fit() in the main thread installs a SIGINT handler (DataParallelTrainer."
        "_register_sigint_handler) and never removes it: a Ctrl-C after the fit (while the model is "
        "logged) calls abort on a finished run instead of interrupting, and the handler keeps that "
        "run's TrainController actor alive until the next fit. On a Ctrl-C the handler aborts the run "
        "and calls sys.exit(0): a stop would read as success, so it becomes a KeyboardInterrupt.",
    ),
    "persist_checkpoint": _STORAGE_CONTEXT,
    "checkpoint_target": _STORAGE_CONTEXT,
    "local_cluster_address_for_workers": Workaround(
        "ray",
        RAY_CHECKED,
        "Ray Train's PlacementGroupCleaner queries the state API with address=None: its worker "
        "auto-detects the cluster, and with another Ray instance on the machine it dies with 'Found "
        "multiple active Ray instances' (the worker group's CPUs then leak when a controller dies). "
        "A cluster started by ray.init(address='local') is given a fixed GCS port and RAY_ADDRESS.",
    ),
    "quiet_token_auth_notice": Workaround(
        "ray",
        RAY_CHECKED,
        "ray.init() that starts a local cluster logs a WARNING on every run that token authentication "
        "is on by default (authentication_token_setup._warn_token_auth_enabled); RAY_AUTH_MODE=token "
        "would silence it but is read into RayConfig before a job can set it. The notice that "
        "authentication is OFF is a security warning and is kept.",
    ),
    "filter_worker_log_lines": Workaround(
        "ray",
        RAY_CHECKED,
        "Ray Train's controller creates its PreemptionWatcher actor with max_restarts > 0 and "
        "constructor arguments large enough for the object store, and the core worker logs an ERROR "
        "line about it (core_worker.cc) on every run; on a busy machine its autoscaling client logs "
        "a 'safe to ignore' warning with a traceback. Both are printed in the controller's process "
        "and forwarded to the driver by log_to_driver: the only place that sees them all is the "
        "driver's handler of forwarded lines (ray._private.ray_logging's private dispatcher).",
    ),
    "quiet_ray_data_console": Workaround(
        "ray",
        RAY_CHECKED,
        "Ray Data configures its own 'ray.data' logger when imported, in every process (a console "
        "handler at INFO that does not propagate): execution plans, 'Starting execution', 'execution "
        "finished' per dataset and epoch. Its only knob is a YAML file named by RAY_DATA_LOGGING_CONFIG "
        "(a path on every node); this lowers its console handler's level in the running process.",
    ),
    "hide_training_function_traceback": Workaround(
        "ray",
        RAY_CHECKED,
        "Ray Train V2 logs every exception of the training function with its whole traceback at ERROR "
        "in the worker ('Error in training function:', ray.train.v2._internal.util."
        "construct_user_exception_with_traceback), which reaches the job's output before the driver "
        "can print its one line; a filter on that logger drops the record for the errors it is told.",
    ),
    "unranked_score": Workaround(
        "ray",
        RAY_CHECKED,
        "Ray Train V2 writes its checkpoint snapshot (checkpoint_manager_snapshot.json) with pydantic, "
        "which stores inf and NaN metrics as null; a new controller on the same run (a resubmitted job) "
        "loads the null score and fails ranking the next checkpoint (TypeError: float * NoneType).",
    ),
}


# ------------------------------------------------------------------------------------- Ray Train

TRAIN_FUNCTION_ERROR_LOGGER = "ray.train.v2._internal.util"


class _TrainingFunctionTraceback(logging.Filter):
    def __init__(self, is_reported: Callable[[str], bool]) -> None:
        super().__init__()
        self.is_reported = is_reported

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if not text.startswith("Error in training function"):
            return True
        last = text.strip().splitlines()[-1] if text.strip() else ""
        return not self.is_reported(last.partition(":")[0].strip())


def hide_training_function_traceback(is_reported: Callable[[str], bool]) -> None:
    """In a Ray Train worker: drop Ray's ERROR record of a training-function exception when
    ``is_reported(qualified exception class name)`` says the driver prints that error itself (one
    line). Other errors keep their traceback. Idempotent."""
    logger = logging.getLogger(TRAIN_FUNCTION_ERROR_LOGGER)
    for f in list(logger.filters):
        if isinstance(f, _TrainingFunctionTraceback):
            logger.removeFilter(f)
    logger.addFilter(_TrainingFunctionTraceback(is_reported))


# ------------------------------------------------------------------------------------- Ray Tune


class TuneInterruptWatch(logging.Handler):
    """Notices Tune's "Stop signal received" warning while installed on the ``ray.tune`` logger."""

    MESSAGES = ("Stop signal received", "has been interrupted")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.interrupted = False

    def emit(self, record: logging.LogRecord) -> None:
        if any(m in record.getMessage() for m in self.MESSAGES):
            self.interrupted = True


@contextlib.contextmanager
def watch_tune_interrupt() -> Iterator[TuneInterruptWatch]:
    """Around ``Tuner.fit()``: ``watch.interrupted`` says afterwards whether a Ctrl-C cut it short."""
    watch = TuneInterruptWatch()
    tune_logger = logging.getLogger("ray.tune")
    tune_logger.addHandler(watch)
    try:
        yield watch
    finally:
        tune_logger.removeHandler(watch)


def quiet_tune_output() -> None:
    """Tuner.fit in this process prints no boxes or tables at ``RunConfig(verbose=0)`` (unless the
    user chose an output engine with ``RAY_AIR_NEW_OUTPUT``); read by Tune at each fit."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def asha_max_t(epochs: int) -> int:
    """ASHA's ``max_t`` for trials of ``epochs`` epochs (``time_attr="epoch"``): one past the last, so
    that a trial that trains all its epochs ends by returning, not by being killed."""
    return epochs + 1


def sweep_child_run_status(trial_failed: bool, stopped_early: bool, run_status: str) -> str | None:
    """The status a sweep's child MLflow run is given once the sweep is over, or None to leave it.

    ``trial_failed``: Tune reported the trial in ERROR; ``run_status``: the run's status now."""
    if trial_failed:
        return "FAILED"
    if run_status == "RUNNING" or (stopped_early and run_status == "FAILED"):
        return "FINISHED"
    return None


# ------------------------------------------------------------------------------------ Ray Train


def data_config_shard_locality(config) -> bool:
    """Whether a ``ray.train.DataConfig`` was told to split datasets with locality hints."""
    return bool(config._enable_shard_locality)


def data_config_execution_options(config, dataset_name: str):
    """The ``ExecutionOptions`` a ``ray.train.DataConfig`` applies to ``dataset_name``."""
    return config._resolve_execution_options(dataset_name)


@contextlib.contextmanager
def sigint_handler_restored() -> Iterator[None]:
    """Around ``TorchTrainer.fit()``: the SIGINT handler in place before it is put back after it (a
    Ctrl-C during the fit still aborts the run gracefully, Ray Train's own way)."""
    if threading.current_thread() is not threading.main_thread():  # Ray installs none there
        yield
        return
    saved = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as exit_:  # its handler ends a Ctrl-C with sys.exit(0) once the run is aborted
        raise KeyboardInterrupt("training aborted by Ctrl-C") from exit_
    finally:
        signal.signal(signal.SIGINT, saved)


def persist_checkpoint(checkpoint, checkpoint_dir_name: str):
    """Upload ``checkpoint`` as Ray Train does for ``ray.train.report`` (inside a Train worker): once,
    returning the persisted checkpoint."""
    import ray.train

    store = ray.train.get_context().get_storage()
    return store.persist_current_checkpoint(checkpoint, checkpoint_dir_name)


def checkpoint_target(checkpoint_dir_name: str) -> str:
    """Where Ray Train stores the checkpoint ``checkpoint_dir_name`` of this run (inside a Train worker)."""
    import ray.train

    return ray.train.get_context().get_storage().build_checkpoint_path_from_name(checkpoint_dir_name)


# ------------------------------------------------------------------------------------- Ray core


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_cluster_address_for_workers() -> Iterator[str]:
    """Around ``ray.init(address="local")``: the new cluster's GCS listens on a port chosen here, and its
    processes (which inherit this environment) get ``RAY_ADDRESS`` naming it. The driver's own
    environment is put back afterwards. Yields that address."""
    import ray

    address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    os.environ["RAY_GCS_SERVER_PORT"] = address.rsplit(":", 1)[1]
    os.environ["RAY_ADDRESS"] = address
    try:
        yield address
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


FORWARDED_LOGS_HANDLER = "ray_print_logs"


def filter_worker_log_lines(keep) -> bool:
    """In the driver, after ``ray.init(log_to_driver=True)``: of each batch of lines forwarded from a
    Ray worker process, only ``keep(lines)`` is printed. Returns whether Ray's handler was found."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        for i, (name, handler) in enumerate(dispatcher.handlers):
            if name != FORWARDED_LOGS_HANDLER or getattr(handler, "_keep", None) is keep:
                continue

            def filtered(data, _print=handler):
                lines = keep(list(data.get("lines", ())))
                if lines:
                    _print({**data, "lines": lines})

            filtered._keep = keep
            dispatcher.handlers[i] = (name, filtered)
            return True
    return False


TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _NoTokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


def quiet_token_auth_notice() -> None:
    """Ray's notice that a local cluster has token authentication on (its default) is not printed."""
    logger = logging.getLogger(TOKEN_AUTH_LOGGER)
    if not any(isinstance(f, _NoTokenAuthNotice) for f in logger.filters):
        logger.addFilter(_NoTokenAuthNotice())


class _NoProgressBarNotice(logging.Filter):
    """Ray Data warns once per process that progress bars are off: the platform turns them off itself
    where there is no terminal (their frames would be printed as lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def quiet_ray_data_console(level: int = logging.WARNING) -> None:
    """Ray Data's console lines from ``level`` up in this process, without its notice that progress
    bars are off (its log file keeps everything).

    Only Ray Data's own console handler (the ``PlainRayHandler`` its logging config makes): because
    "ray.data" does not propagate, others attach their handlers to it too (a user's log config,
    pytest's caplog attaches the root logger's capture handler to every non-propagating logger), and
    lowering those would silence the platform's INFO lines everywhere."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger)
    from ray._private.log import PlainRayHandler

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler) is PlainRayHandler:
            handler.setLevel(level)
            if not any(isinstance(f, _NoProgressBarNotice) for f in handler.filters):
                handler.addFilter(_NoProgressBarNotice())


# --------------------------------------------------------------------------------------- MLflow


def latest_metrics(run) -> list:
    """The latest ``mlflow.entities.Metric`` of each metric of ``run`` (value, timestamp and step)."""
    return list(getattr(run.data, "_metric_objs", None) or [])


@contextlib.contextmanager
def use_global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for a block, then put back exactly as it was
    (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def model_artifact_uri(client, model_uri: str) -> str:
    """The storage URI of a model's directory (``mlflow-artifacts:/...``, ``s3://...``, a path) for
    ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID`` or ``runs:/RUN/path``, resolved
    through ``client`` (an ``MlflowClient``); any other URI is returned as it is."""
    for _ in range(5):  # models:/NAME@alias -> models:/m-ID -> storage
        if model_uri.startswith("runs:/"):
            run_id, _, path = model_uri[len("runs:/") :].partition("/")
            return client.get_run(run_id).info.artifact_uri.rstrip("/") + ("/" + path if path else "")
        if not model_uri.startswith("models:/"):
            return model_uri
        ref = model_uri[len("models:/") :].strip("/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            model_uri = client.get_model_version_by_alias(name, alias).source
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
            model_uri = client.get_model_version(name, version).source
        else:  # a logged model id (m-...)
            model_uri = client.get_logged_model(ref).artifact_location
    raise ValueError(f"could not resolve {model_uri!r}: too many indirections")


def unranked_score() -> float:
    """The score of a checkpoint that must rank below every real one (a mid-epoch checkpoint: no
    validation yet) under ``checkpoint_score_order="min"``: finite, where inf would be right, so that
    it survives Ray's snapshot (``WORKAROUNDS["unranked_score"]``). Above any error rate."""
    return 1e9
