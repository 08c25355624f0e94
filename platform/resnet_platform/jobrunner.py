"""How every job in ``jobs/`` starts and ends: :func:`run_job`, the one ``main`` they share.

1. **Start**: parse the flags (argparse prints its usage and exits 2 on an unknown flag), add
   ``--verbose``, set up the output (:func:`resnet_platform.console.configure_output`), then build the
   job's configuration from the flags. Building it validates every setting (types and ranges,
   declared beside each setting) *before* Ray starts: a bad value costs a second, not a cluster.
2. **Run** the job's body with SIGTERM and SIGINT turned into :class:`Stopped` (a
   ``KeyboardInterrupt``) in the main thread, so the job's own ``finally`` and ``except`` blocks run:
   the MLflow run is marked KILLED (and ``--resume`` continues it), the Serve application is deleted.
   Ray's driver installs a native handler for SIGTERM that prints a stack dump
   (``*** SIGTERM received ***``) when it connects; :func:`install_stop_handlers` is called again
   by :func:`resnet_platform.console.ensure_ray` right after ``ray.init`` (``stopping.py``).
3. **End** with one line and an exit status a scheduler can act on:

   ========  ===================================================================================
   0         done (or the job's own status, e.g. the sweep's 3: interrupted, rerun with --resume)
   1         a :class:`~resnet_platform.errors.UserError`: missing or unprepared data, an unknown
             registered model or alias, unreachable storage or tracking, a run that already exists
   2         a setting out of range or inconsistent (as argparse does for an unknown flag): a
             ``ValueError`` while the configuration is built, or a
             :class:`~resnet_platform.errors.ConfigError` wherever the job finds it
   130/143   stopped by SIGINT / SIGTERM (128 + the signal's number)
   ========  ===================================================================================

   Every error line is ``<job>: error: <what to fix>``; ``--verbose`` prints the traceback above it.
   Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from resnet_platform.console import add_verbose_flag, configure_output
from resnet_platform.errors import ConfigError, UserError, one_line
from resnet_platform.stopping import Stopped, stop_handlers, stop_signal

C = TypeVar("C")

EXIT_USER_ERROR = 1
EXIT_BAD_SETTINGS = 2


def run_job(
    parser: argparse.ArgumentParser,
    configure: Callable[[argparse.Namespace], C],
    body: Callable[[argparse.Namespace, C], int | None],
    *,
    argv: list[str] | None = None,
    platform_level: int = logging.INFO,
) -> int:
    """Parse ``argv`` with ``parser``, build the configuration with ``configure(args)`` (validation:
    a ``ValueError`` there exits 2), then return ``body(args, config)``'s status (None: 0).

    ``platform_level``: the level of the platform's own lines (jobs that print a result themselves
    use WARNING). Exits through ``parser.exit`` with one line on a user's error or a stop signal."""
    if not any("--verbose" in a.option_strings for a in parser._actions):
        add_verbose_flag(parser)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    configure_output(verbose, platform_level=platform_level)
    with stop_handlers():
        try:
            try:
                config = configure(args)
            except (ValueError, argparse.ArgumentTypeError) as err:
                _exit(parser, EXIT_BAD_SETTINGS, err, verbose)
            status = body(args, config)
        except KeyboardInterrupt as stop:  # Stopped, or a library's own Ctrl-C path ending in one
            signum = stop.signum if isinstance(stop, Stopped) else stop_signal() or signal.SIGINT
            name = signal.Signals(signum).name
            parser.exit(128 + signum, f"{parser.prog}: stopped by {name}\n")
        except UserError as err:  # a ConfigError found by the body (settings against the data): 2 too
            _exit(
                parser, EXIT_BAD_SETTINGS if isinstance(err, ConfigError) else EXIT_USER_ERROR, err, verbose
            )
    return 0 if status is None else int(status)


def config_from_flags(cls: type[C]) -> Callable[[argparse.Namespace], C]:
    """The ``configure`` of a job whose flags are all ``cls``'s settings (``settings.add_flags``):
    building ``cls`` validates them."""
    from resnet_platform.settings import values_from_args

    return lambda args: cls(**values_from_args(args, cls))


def _exit(parser: argparse.ArgumentParser, code: int, err: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(err, file=sys.stderr)
    parser.exit(code, f"{parser.prog}: error: {one_line(err)}\n")
