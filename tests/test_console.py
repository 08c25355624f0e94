"""Quiet by default (``resnet_platform/console.py``): what a job sets up in its own process, what it
hands to every Ray worker of the job, and that the session's Ray workers (started the platform's way)
really run with it. Cheap checks of the code path the demo and the jobs take, not a demo run."""

from __future__ import annotations

import importlib
import logging

import pytest

from resnet_platform import console

LOGGERS = ("", console.PLATFORM_LOGGER, *console.CHATTY_LOGGERS)


@pytest.fixture
def logging_state(monkeypatch):
    """Logger levels and the output environment put back after the test."""
    for name in (
        console.VERBOSE_ENV,
        "MLFLOW_LOGGING_LEVEL",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
        "RAY_DATA_DISABLE_PROGRESS_BARS",
    ):
        monkeypatch.delenv(name, raising=False)
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_jobs_print_the_platform_and_warnings_only(logging_state):
    import os

    console.configure_output()
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger(console.PLATFORM_LOGGER).level == logging.INFO
    assert all(logging.getLogger(n).level == logging.WARNING for n in console.CHATTY_LOGGERS)
    assert os.environ[console.VERBOSE_ENV] == "0" and os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    # pytest captures the output: not a terminal, so no download bars in it.
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_verbose_restores_the_libraries_info_lines(logging_state):
    import os

    console.configure_output(verbose=True, platform_level=logging.WARNING)
    assert console.is_verbose() and "MLFLOW_LOGGING_LEVEL" not in os.environ
    assert all(logging.getLogger(n).level == logging.INFO for n in LOGGERS)


def test_ray_workers_get_the_same_rules(logging_state):
    console.configure_output()
    env = console.ray_runtime_env()
    assert env["env_vars"][console.VERBOSE_ENV] == "0"
    assert env["env_vars"]["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert env["env_vars"]["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is console.setup_worker_output
    console.configure_output(verbose=True)
    assert "MLFLOW_LOGGING_LEVEL" not in console.ray_runtime_env()["env_vars"]


def test_train_workers_keep_the_platform_lines_only(logging_state):
    logging.getLogger().setLevel(logging.INFO)  # what Ray Train sets in a worker
    console.quiet_train_worker()
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger(console.PLATFORM_LOGGER).getEffectiveLevel() == logging.INFO
    assert logging.getLogger("resnet_platform.train.loop").isEnabledFor(logging.INFO)


@pytest.mark.slow  # a worker process: seconds
def test_the_sessions_ray_workers_run_quiet(ray_local):
    """ray_local is started by ``console.ensure_ray``: its workers ran the setup hook."""

    @ray_local.remote(num_cpus=0)
    def worker_output() -> dict:
        import logging
        import os

        from ray.data._internal.logging import SessionFileHandler

        consoles = [
            h.level for h in logging.getLogger("ray.data").handlers if not isinstance(h, SessionFileHandler)
        ]
        return {
            "verbose": os.environ.get(console.VERBOSE_ENV),
            "mlflow": os.environ.get("MLFLOW_LOGGING_LEVEL"),
            "bars": os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"),
            "ray_data_console": consoles,
        }

    seen = ray_local.get(worker_output.remote())
    assert seen["verbose"] == "0" and seen["mlflow"] == "WARNING" and seen["bars"] == "false"
    assert seen["ray_data_console"]  # the hook imported Ray Data (its console level: see test_compat)


def test_framework_noise_is_dropped_with_its_traceback_and_nothing_else():
    from resnet_platform.console import without_framework_noise

    lines = [
        "[2026-12-07 05:05:15,190 E 1 2] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
        "and ID: '9a' has constructor arguments in the object store and max_restarts > 0",
        "epoch 1/2  loss 0.5",
        "Failed to send resource request for train-2b03. If this only happens transiently ...",
        "Traceback (most recent call last):",
        '  File "client.py", line 58, in send_resource_request',
        "    ray.get(",
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "epoch 2/2  loss 0.4",
        "Traceback (most recent call last):",  # not after noise: kept
    ]
    assert without_framework_noise(lines) == [lines[1], lines[7], lines[8]]


def test_after_a_stop_signal_no_worker_line_is_printed(monkeypatch):
    """Workers torn down by a stop print errors and native dumps that are the stop's, not faults."""
    from resnet_platform import stopping
    from resnet_platform.console import without_framework_noise

    assert without_framework_noise(["epoch 1/2"]) == ["epoch 1/2"]
    monkeypatch.setattr(stopping, "_received", [15])
    assert without_framework_noise(["*** SIGTERM received at time=1 on cpu 0 ***", "epoch 2/2"]) == []
