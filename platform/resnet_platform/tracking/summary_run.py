"""A run that only holds results: the paper grid's summary (Table 6, Figures 6 and 7, and each net's
errors as metrics), created, filled and closed in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .runs import end_run, resolve_tracking_uri, start_run
from .training_run import log_results


def record_summary_run(
    tracking_uri: str | None,
    experiment: str,
    name: str,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    files: Sequence[str | Path],
    metrics: Mapping[str, float],
) -> str:
    """A run that only holds results (the paper grid's tables and figures): created, filled and
    closed in one call. Returns its id."""
    uri = resolve_tracking_uri(tracking_uri)
    run_id = start_run(uri, experiment, name, params, tags)
    log_results(uri, run_id, files=files, metrics=metrics)
    end_run(uri, run_id)
    return run_id


__all__ = ["record_summary_run"]
