"""How a job stops on SIGTERM (what Kubernetes and job schedulers send) or SIGINT (Ctrl-C): as a
:class:`Stopped` exception in the main thread, so the job's ``finally`` and ``except`` blocks run
(the MLflow run marked KILLED and resumable, the Serve application deleted) and it ends with one line.

Ray's driver installs a native SIGTERM handler when it connects (``ray.init``: the core worker's
failure signal handler) that prints a stack dump (``*** SIGTERM received ***``, ``logging.cc``
frames) before the process dies. Python's own handler replaces it when installed after ``ray.init``:
:func:`resnet_platform.console.ensure_ray` calls :func:`install_stop_handlers` right after it.
Imports nothing from the platform (``console`` and ``jobrunner`` both use it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT reached the job. A ``KeyboardInterrupt``, so code that already treats a
    Ctrl-C as "killed, not failed" (the training run's MLflow status) treats SIGTERM the same."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_active = False  # inside run_job: the stop handlers are the job's
_received: list[int] = []  # the signals received during this run_job, in order


def _on_stop_signal(signum: int, frame: Any) -> None:
    if _received:  # a second signal while the job winds down: let it finish its cleanup
        _received.append(signum)
        return
    _received.append(signum)
    current = signal.getsignal(signal.SIGINT)
    if signum != signal.SIGINT and callable(current) and current is not _on_stop_signal:
        # A library's own graceful Ctrl-C is in force (Tune's inside Tuner.fit, Ray Train's inside
        # TorchTrainer.fit): SIGTERM takes the same path, as a scheduler's stop should.
        current(signal.SIGINT, frame)
        return
    raise Stopped(signum)


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`Stopped` in the main thread (a no-op elsewhere, and outside
    :func:`stop_handlers`: a library or test that calls the package keeps its own handlers)."""
    if not _active or threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


@contextlib.contextmanager
def stop_handlers() -> Iterator[None]:
    global _active
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _active = True
    _received.clear()
    install_stop_handlers()
    try:
        yield
    finally:
        _active = False
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stop_signal() -> int | None:
    """The signal that stopped this job, if one did (a library's graceful path may have handled it)."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Raise :class:`Stopped` if a stop signal reached this job: after a library call whose own
    graceful path took the signal and returned (Ray Train's abort), the job still stops here."""
    if _received:
        raise Stopped(_received[0])
