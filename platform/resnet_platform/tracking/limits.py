"""Deadlines for MLflow calls, so a tracking server that is down or hung never stalls training.

MLflow's REST client has no per-call timeout argument: it reads ``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` on every request
(``mlflow/utils/rest_utils.py``, MLflow 3.17). With its defaults (120 s, 7 retries, factor 2) one
call to a dead server takes minutes. :func:`bounded_mlflow_http` sets those variables only while
the platform's own calls run and puts the previous values back afterwards, so a user's process
keeps its own settings. While a scope is open, other threads of the same process (MLflow's
system-metrics sampler) see the bounded values too, which is what we want there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"


@dataclass(frozen=True)
class TrackingLimits:
    """How long one MLflow call may take, and how often a logger tries again during an outage.

    Worst case for one call: ``(max_retries + 1) * timeout_s`` plus backoff (1 s, 2 s, ...).
    """

    timeout_s: int = 10  # per HTTP request (MLflow reads it as an int)
    max_retries: int = 1
    backoff_factor: int = 1
    retry_interval_s: float = 30.0  # while the server is down, try again at most this often
    max_buffered: int = 200_000  # metric points kept for later; the oldest step points go first
    # After a successful fit the driver waits this long for a server that is down, so the run is
    # still recorded (epochs, model, FINISHED) when the outage ends soon; the work is done by then.
    final_wait_s: float = 60.0


_lock = threading.Lock()
_depth = 0
_saved: dict[str, str | None] = {}
_URLLIB3 = logging.getLogger("urllib3.connectionpool")


class _NoRetryChatter(logging.Filter):
    """urllib3 logs a WARNING for every retry of a refused connection; during an outage the
    platform says it once itself. Installed only while a scope is open."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying (")


_quiet = _NoRetryChatter()


@contextmanager
def bounded_mlflow_http(limits: TrackingLimits | None = None) -> Iterator[None]:
    """MLflow HTTP calls inside this block use ``limits``; the environment is restored on exit.

    Re-entrant and thread-safe: nested or concurrent scopes share the first scope's values, and
    the variables return to what they were when the last scope closes.
    """
    global _depth
    limits = limits or TrackingLimits()
    with _lock:
        if _depth == 0:
            values = {
                _TIMEOUT: str(int(limits.timeout_s)),
                _RETRIES: str(int(limits.max_retries)),
                _BACKOFF: str(int(limits.backoff_factor)),
            }
            _saved.clear()
            for key, value in values.items():
                _saved[key] = os.environ.get(key)
                os.environ[key] = value
            _URLLIB3.addFilter(_quiet)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for key, value in _saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                _saved.clear()
                _URLLIB3.removeFilter(_quiet)


def is_outage(error: BaseException) -> bool:
    """True for errors that mean "the server is not answering" (retry later), False for a request
    the server refused (a 4xx: sending it again would fail again)."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):  # the client wraps network errors as INTERNAL_ERROR (500)
        status = error.get_http_status_code()
        return status >= 500 or status in (408, 429)
    return isinstance(error, OSError)  # requests' errors are OSErrors


__all__ = ["TrackingLimits", "bounded_mlflow_http", "is_outage"]
