"""What a person reads: the platform's lines (progress, the per-epoch table, results) and the warnings
and errors of Ray and MLflow, not their INFO chatter; ``--verbose`` brings that back.

- :func:`configure_output`, first thing in every job: logging levels and format in this process, and
  the environment that the processes it starts inherit (MLflow's log level, no progress bars where
  the output is not a terminal).
- :func:`ensure_ray`, how every job joins or starts Ray: the same rules reach each Ray worker process
  of the job through its runtime environment (environment variables and :func:`setup_worker_output`,
  run by Ray in each worker as it starts), local cluster or not.
- :func:`quiet_train_worker`, called by the training loop once Ray Train has set up the worker's
  logging (Ray Train puts the worker's root logger at INFO, which prints its per-report lines).

Where the output is not a terminal (a job's log, CI), MLflow's artifact download bars and Ray Data's
progress bars are off: their frames would be printed as lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from resnet_platform.stopping import install_stop_handlers, stop_signal

VERBOSE_ENV = "RESNET_PLATFORM_VERBOSE"
# Whether the job's own stderr is a terminal: Ray workers have none, so the driver tells them.
TERMINAL_ENV = "RESNET_PLATFORM_TERMINAL"
PLATFORM_LOGGER = "resnet_platform"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SETUP_HOOK = "resnet_platform.console.setup_worker_output"
DATA_BARS_OFF_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"
MLFLOW_URL_LINES_OFF = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
# Lines Ray's worker processes print that say nothing a user can act on (dropped, with the traceback
# or source line that follows them, from what the driver prints unless --verbose): Ray Train's note
# on its PreemptionWatcher actor (every run), its autoscaling client's "safe to ignore" timeout
# (busy hosts), torch's warning about read-only arrays.
FRAMEWORK_NOISE = (
    "has constructor arguments in the object store and max_restarts > 0",
    "Failed to send resource request for train-",
    # torch, on the read-only arrays Ray Data hands to iter_torch_batches (harmless: they are copied
    # to the device); a Python warning printed once per worker, with its source line below it
    "UserWarning: The given NumPy array is not writable",
)
TUNE_STOP_NOTES = ("Stop signal received", "Experiment has been interrupted")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):|\s+\S.*|[A-Za-z_][\w.]*: .*")
# Libraries that log INFO lines on their own handlers (they do not propagate to the root logger).
CHATTY_LOGGERS = ("mlflow", "ray")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's and MLflow's INFO lines (worker reports, Ray Data plans, store messages)",
    )


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def on_terminal() -> bool:
    """Whether a person watches this job's output on a terminal (progress bars) or it goes to a file
    (progress lines): the driver's stderr, passed to its Ray workers by :func:`inherited_env`."""
    inherited = os.environ.get(TERMINAL_ENV)
    if inherited is not None:
        return inherited == "1"
    return sys.stderr.isatty()


def inherited_env(verbose: bool) -> dict[str, str]:
    """The environment that carries the output rules to other processes (Ray workers have no terminal)."""
    env = {
        VERBOSE_ENV: "1" if verbose else "0",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        TERMINAL_ENV: "1" if on_terminal() else "0",
    }
    if not verbose:
        env["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read by MLflow when imported
        env[MLFLOW_URL_LINES_OFF] = "true"
    if os.environ.get(DATA_BARS_OFF_ENV):  # no terminal where the job was started: none anywhere
        env[DATA_BARS_OFF_ENV] = os.environ[DATA_BARS_OFF_ENV]
    return env


def configure_output(verbose: bool = False, platform_level: int = logging.INFO) -> None:
    """Log the platform's lines at ``platform_level`` and everything else from WARNING up (INFO with
    ``verbose``), in ``LOG_FORMAT``; set the environment the processes started from here inherit."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # MLflow's "View run ... at: URL" pair when a run ends: the job's report names the run itself.
        os.environ.setdefault(MLFLOW_URL_LINES_OFF, "true")
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        data_progress_bars_off()
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(format=LOG_FORMAT)  # a no-op where the root logger has a handler already
    logging.getLogger().setLevel(level)
    logging.getLogger(PLATFORM_LOGGER).setLevel(logging.INFO if verbose else platform_level)
    for name in CHATTY_LOGGERS:  # when already imported and configured by the library itself
        logging.getLogger(name).setLevel(level)
    if not verbose:
        from resnet_platform import _compat

        _compat.quiet_token_auth_notice()
        _compat.quiet_tune_output()


def data_progress_bars_off() -> None:
    """No Ray Data progress bars from this job, in any of its processes (unless the user set
    ``RAY_DATA_DISABLE_PROGRESS_BARS`` otherwise). Ray Data reads the variable once, when imported,
    into its ``DataContext`` default; a dataset carries the creating process's context into the
    actors that run it (the streaming split's coordinator among them), so the context of this
    process is switched off too if ``ray.data`` was imported before the variable was set."""
    if os.environ.setdefault(DATA_BARS_OFF_ENV, "1") in ("", "0"):
        return
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


def ray_runtime_env() -> dict:
    """The runtime environment of a job's Ray workers: :func:`inherited_env` and the setup hook."""
    return {"env_vars": inherited_env(is_verbose()), "worker_process_setup_hook": SETUP_HOOK}


def ensure_ray(address: str | None = None, **init_kwargs) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` (as ``ray job submit`` sets it), else start Ray here; no-op
    when this process is already connected. ``init_kwargs`` go to ``ray.init``.

    A job submitted with a runtime environment of its own that sets the same keys keeps its own (Ray
    refuses to merge them): its workers then log as they would without the platform."""
    import ray

    from resnet_platform import _compat

    if ray.is_initialized():  # started here before (or by a library's ray.init()): the driver's rules
        _driver_output_rules(is_verbose())
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    verbose = is_verbose()
    if not sys.stderr.isatty():  # progress bars only on a terminal
        data_progress_bars_off()
    if not verbose:
        _compat.quiet_token_auth_notice()
    kwargs = {
        "log_to_driver": True,
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "runtime_env": ray_runtime_env(),
        **init_kwargs,
    }
    if address == "local":
        with _compat.local_cluster_address_for_workers():
            ray.init(address=address, **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ValueError as err:
            if "Failed to merge" not in str(err) or "runtime_env" in init_kwargs:
                raise
            kwargs.pop("runtime_env")
            ray.init(address=address, **kwargs)
    _driver_output_rules(verbose)


def _driver_output_rules(verbose: bool) -> None:
    """In the driver, once connected: the job's stop handlers and, unless verbose, its filters."""
    from resnet_platform import _compat

    install_stop_handlers()  # after ray.init: its native SIGTERM handler would print a stack dump
    if not verbose:
        _compat.quiet_ray_data_console()
        _compat.filter_worker_log_lines(without_framework_noise)
        for handler in logging.getLogger("ray").handlers:
            if not any(isinstance(f, _NoTuneStopNotes) for f in handler.filters):
                handler.addFilter(_NoTuneStopNotes())


class _NoTuneStopNotes(logging.Filter):
    """Tune's warnings when a sweep is stopped ("Stop signal received", "Experiment has been
    interrupted ... Resume experiment with: Tuner.restore(...)"): the sweep says it was interrupted
    and how to continue (--resume) itself. The interrupt watch (_compat) sees them on its own handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("ray.tune") and str(record.msg).startswith(TUNE_STOP_NOTES))


def without_framework_noise(lines: list[str]) -> list[str]:
    """``lines`` less those naming :data:`FRAMEWORK_NOISE` and the traceback below each; nothing once
    a stop signal reached the job (its workers' errors and native dumps as they are torn down are
    the stop's doing, not faults: the job's own line says it was stopped)."""
    if stop_signal() is not None:
        return []
    kept: list[str] = []
    dropping = False
    for line in lines:
        if any(text in line for text in FRAMEWORK_NOISE):
            dropping = True
        elif not (dropping and _TRACEBACK.fullmatch(line)):
            dropping = False
            kept.append(line)
        elif not line.startswith((" ", "Traceback")):  # the exception's own line ends it
            dropping = False
    return kept


def setup_worker_output() -> None:
    """Ray's ``worker_process_setup_hook`` for the platform's jobs: run in every worker process as it
    starts. Never raises (a worker must not fail over how it logs)."""
    try:
        if is_verbose():
            return
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        from resnet_platform import _compat

        _compat.quiet_ray_data_console()
        if os.environ.get(DATA_BARS_OFF_ENV) not in (None, "", "0"):
            data_progress_bars_off()  # a DataContext made before the variable reached this worker
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).warning("could not quiet this worker's output: %s", e)


def quiet_train_worker() -> None:
    """In a Ray Train worker, after Ray Train configured its logging: the root logger from WARNING up
    (unless verbose), the platform's own lines at INFO."""
    from resnet_platform import _compat

    logging.getLogger(PLATFORM_LOGGER).setLevel(logging.INFO)
    if not is_verbose():
        _compat.hide_training_function_traceback(is_one_line_error)  # the driver prints those
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def is_one_line_error(qualified_name: str) -> bool:
    """Whether the exception class ``module.Class`` is one the jobs report as one line (a
    ``DataCheckError``: bad data, the data-wait watchdog), so a worker need not log its traceback."""
    import importlib

    module, _, name = qualified_name.rpartition(".")
    if not module.startswith(PLATFORM_LOGGER + "."):
        return False
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    from resnet_platform.data.checks import DataCheckError

    return isinstance(cls, type) and issubclass(cls, DataCheckError)
