"""How the platform runs Ray Tune trials: one idiom for the sweeps and the paper grid.

- **Trainable**: a function that fits one ``TorchTrainer`` (Ray 2.60 refuses ``Tuner(TorchTrainer)``),
  its fixed settings given with ``tune.with_parameters`` and almost no resources of its own (its
  Ray Train workers reserve theirs): :func:`trainable`.
- **What varies**: ``Tuner(param_space=...)``, grid searches and distributions only.
- **What comes back**: numbers as reported metrics (every epoch's through Ray Train's
  ``TuneReportCallback``, or the trial's own ``tune.report``); what is not a number (a net's curves,
  its layer responses) as files in the trial's checkpoint (:func:`report`).
- **Read back** through the ``ResultGrid``'s public API: ``Result.metrics`` (``trial_id``, ``done``),
  ``.config``, ``.metrics_dataframe``, ``.checkpoint``, ``.error`` (:func:`trial_id`, :func:`read_file`).
- **Progress**: a job that silences Tune's status tables (``run_config(verbose=0)``) logs one line of
  its own per trial as it starts and ends (:func:`trial_lines`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from resnet_platform import storage

# A trial holds almost nothing (0 is refused); its Ray Train workers reserve their own CPUs/GPUs,
# so max concurrent trials x workers per trial must fit the cluster.
TRIAL_RESOURCES = {"CPU": 0.01}

log = logging.getLogger(__name__)


def trainable(fn: Callable[..., None], **fixed: Any):
    """``fn(params, **fixed)`` as a Tune trainable: ``params`` from the param space, ``fixed``
    put in Ray's object store once."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(fn, **fixed), TRIAL_RESOURCES)


def run_config(
    name: str,
    store: storage.Location,
    *,
    max_failures: int = 0,
    verbose: int | None = None,
    callbacks: Sequence[Any] = (),
):
    """Tune's RunConfig: the experiment ``name`` under ``store`` (resolved where the job's storage URI
    entered, once; Tune hands its filesystem to the trials itself); a failed
    trial is retried ``max_failures`` times (default none: its Ray Train run has its own
    ``max_failures``). ``verbose``: Tune's own output (1: its status tables and a box per trial; 0:
    none, with ``_compat.quiet_tune_output``); default: 1 only with the job's ``--verbose``.
    ``callbacks``: Tune callbacks (:func:`trial_lines`)."""
    from ray import tune

    from resnet_platform.console import is_verbose

    if verbose is None:
        verbose = 1 if is_verbose() else 0

    return tune.RunConfig(
        name=name,
        storage_path=store.path,
        storage_filesystem=store.fs,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        verbose=verbose,
        callbacks=list(callbacks),
    )


def trial_lines(label: Callable[[dict], str], outcome: Callable[[dict], str], total: int):
    """A Tune callback logging one line per trial as it starts and as it ends (or fails): the job's
    progress in place of Tune's tables. ``label(config)`` names the trial (``plain-56 seed 0``);
    ``outcome(last_result)`` says what it reached."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __init__(self) -> None:
            self.ended = 0

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            log.info("%s: started", label(trial.config))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.ended += 1
            log.info(
                "%s: %s (%d of %d done)",
                label(trial.config),
                outcome(trial.last_result or {}),
                self.ended,
                total,
            )

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.ended += 1
            log.warning("%s: failed (%d of %d done)", label(trial.config), self.ended, total)

    return TrialLines()


def report(metrics: Mapping[str, float], files: Mapping[str, str]) -> None:
    """Report a trial's result: ``metrics`` for Tune, ``files`` (name -> text) in its checkpoint."""
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))


def read_file(result, name: str) -> str | None:
    """A file a trial reported with :func:`report` (None when it reported none)."""
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as directory:
        path = Path(directory) / name
        return path.read_text() if path.is_file() else None


def trial_id(result) -> str:
    return result.metrics["trial_id"]  # Tune sets it on every trial's last result, reported or not


__all__ = ["TRIAL_RESOURCES", "read_file", "report", "run_config", "trainable", "trial_id"]
