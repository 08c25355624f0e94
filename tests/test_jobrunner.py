"""The job runner in-process (``resnet_platform/jobrunner.py``, ``stopping.py``): exit statuses, one
line per error, and how SIGTERM reaches the job's own cleanup or a library's graceful stop. The
subprocess tests (tests/test_job_errors.py, tests/test_job_lifecycle.py) run real jobs."""

from __future__ import annotations

import argparse
import os
import signal
import time

import pytest

from resnet_platform import stopping
from resnet_platform.errors import ConfigError, UserError
from resnet_platform.jobrunner import run_job


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe.py")
    p.add_argument("--n", type=int, default=1)
    return p


def configure(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    return args.n


def exit_of(body, *argv: str, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as done:
        run_job(parser(), configure, body, argv=list(argv))
    return done.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_statuses_and_one_line(capsys):
    assert run_job(parser(), configure, lambda args, n: None, argv=[]) == 0
    assert run_job(parser(), configure, lambda args, n: 3, argv=[]) == 3
    assert exit_of(lambda args, n: None, "--n", "0", capsys=capsys) == (
        2,
        ["probe.py: error: --n must be at least 1, got 0"],
    )

    def missing(args, n):
        raise UserError("/data: no manifest.json (run jobs/prepare_imagenet.py)\nsecond line")

    assert exit_of(missing, capsys=capsys) == (
        1,
        ["probe.py: error: /data: no manifest.json (run jobs/prepare_imagenet.py)"],
    )

    def inconsistent(args, n):  # settings found wrong against the data, after the configuration
        raise ConfigError("--train-rows applies to the digits")

    assert exit_of(inconsistent, capsys=capsys) == (
        2,
        ["probe.py: error: --train-rows applies to the digits"],
    )

    def bug(args, n):
        raise RuntimeError("a bug keeps its traceback")

    with pytest.raises(RuntimeError):
        run_job(parser(), configure, bug, argv=[])


def test_sigterm_runs_the_jobs_cleanup_then_one_line_and_128_plus_15(capsys):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    cleaned = []

    def body(args, n):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the handler
        finally:
            cleaned.append(True)

    assert exit_of(body, capsys=capsys) == (143, ["probe.py: stopped by SIGTERM"])
    assert cleaned == [True]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigterm_takes_a_librarys_own_ctrl_c_path_when_one_is_installed(capsys):
    """As inside Tuner.fit: the library's SIGINT handler stops its work and the call returns; the
    job ends with its own status (the sweep's 3) and knows which signal stopped it."""
    seen = []

    def body(args, n):
        signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs between bytecodes
        assert seen == [signal.SIGINT] and stopping.stop_signal() == signal.SIGTERM
        return 3

    assert run_job(parser(), configure, body, argv=[]) == 3


def test_a_library_stop_that_returns_still_stops_the_job(capsys):
    """As Ray Train's abort: its handler returns, the fit returns, and the job stops after it."""

    def body(args, n):
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        stopping.raise_if_stopped()

    assert exit_of(body, capsys=capsys) == (143, ["probe.py: stopped by SIGTERM"])
