"""What the paper's two grids (``degradation.py``, ``reproduce.py``) do on the driver around the
Tune run, written once: open what the trials will write into before Ray starts, and read the
trials' results back afterwards.

A user's mistake must end the job with one line (``jobrunner.run_job``), so everything a trial would
otherwise find out hours later (an output path that is a file, a tracking server that does not
answer) is tried here first, and a trial that failed on a user's error (a
:class:`~resnet_platform.errors.UserError` raised inside its Ray worker) is reported as that error's
one line, not as the remote traceback Ray wraps it in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from resnet_platform.errors import UserError, one_line


class OutputFolderError(UserError):
    """The folder the job writes its tables and figures to cannot be made."""


class TrialsFailedError(UserError):
    """Trials of a grid failed on errors the user can fix (each named by its trial)."""


def prepare_output(output: str) -> Path:
    """Make the output folder now, before the grid trains: a path that is a file, or not writable,
    fails in a second instead of after the last trial."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"--output {output}: cannot make the folder ({one_line(e)})") from e
    return out


def check_cifar(data: str) -> None:
    """Read the CIFAR-10 archive or folder whole on the driver, labels included: what each trial's
    read would refuse (a missing batch, a label outside the classes) fails once, here, naming it,
    for a few seconds of reading, not in every trial after Ray started."""
    from resnet_platform.data.cifar import read_cifar10

    read_cifar10(data)


def check_prepared(data: str) -> None:
    """A prepared data set's manifest, splits and label range, checked on the driver as a training
    run's driver checks them (footers only), before the trials do it each."""
    from resnet_platform.data.checks import check_prepared_data
    from resnet_platform.data.manifest import read_manifest

    check_prepared_data(data, read_manifest(data))


def open_tracking(tracking_uri: str | None, experiment: str) -> str:
    """The resolved tracking URI, with the store and ``experiment`` created now (before trials that
    log into them start together); a server that does not answer is one line naming it."""
    from resnet_platform.tracking.limits import is_outage
    from resnet_platform.tracking.runs import ensure_experiment, resolve_tracking_uri
    from resnet_platform.tracking.training_run import TrackingUnavailableError

    try:
        return ensure_experiment(tracking_uri, experiment)
    except Exception as e:
        if not is_outage(e):
            raise
        raise TrackingUnavailableError(
            f"MLflow at {resolve_tracking_uri(tracking_uri)} is not answering ({one_line(e)}): start it, "
            "fix --tracking-uri, or run with --no-mlflow"
        ) from e


def _cause(error: BaseException) -> BaseException:
    """The exception the trial raised, under Ray's wrapper (``RayTaskError.cause``)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def collect_results(grid, name: str, label: Callable[[dict], str]) -> list[str]:
    """The file ``name`` every trial of ``grid`` (a Tune ``ResultGrid``) reported. Failed trials:
    a :class:`TrialsFailedError` with each one's line when every failure is a user's error, else a
    ``RuntimeError`` with Ray's whole message (a bug keeps its traceback)."""
    from resnet_platform.tune import trials

    texts, failed = [], []
    for r in grid:
        text = trials.read_file(r, name) if r.error is None else None
        if text is None:
            failed.append((label(r.config or {}), r.error))
            continue
        texts.append(text)
    if not failed:
        return texts
    if all(isinstance(_cause(e), UserError) for _, e in failed):
        lines = "; ".join(f"{who}: {one_line(_cause(e))}" for who, e in failed)
        raise TrialsFailedError(f"{len(failed)} of {len(grid)} trials failed: {lines}")
    raise RuntimeError("trials failed: " + "; ".join(f"{who}: {e}" for who, e in failed))
