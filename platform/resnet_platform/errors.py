"""The one base class of the mistakes a person running a job can fix.

A :class:`UserError` names what to change (a flag, a path, the data, a service's address) in its
first line. Every job runs through :func:`resnet_platform.jobrunner.run_job`, which prints that line
after the job's name and exits 1, with no traceback (``--verbose`` adds the traceback). A new kind of
user-facing error joins by subclassing :class:`UserError`; nothing else needs to know about it.

This module imports nothing, so every layer (``storage``, ``data``, ``tracking``, ``train``) can
subclass it without an import cycle.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix: the job prints its first line, naming what to fix, and exits 1."""


class ConfigError(UserError, ValueError):
    """A setting out of its range or inconsistent with another, found before anything starts (exit 2,
    as for an unknown flag)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (a data set, an archive, a source tree) is not there or not in
    the layout the job reads."""


def one_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message (libraries and Ray append notes, retries and
    remote tracebacks below it), else the error's class name. The one formatter of every one-line error."""
    for line in str(error).splitlines():
        line = line.strip()
        if line:
            return line
    return type(error).__name__
