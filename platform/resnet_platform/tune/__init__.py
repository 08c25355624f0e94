"""Hyperparameter sweeps with Ray Tune: search space, ASHA, one Ray Train run per trial, MLflow."""

from .results import TrialRow, format_table, plot_error_vs_lr
from .space import SearchSpace, parse_list
from .sweep import SweepConfig, SweepExistsError, SweepOutcome, format_report, run_sweep

__all__ = [
    "SearchSpace",
    "SweepConfig",
    "SweepExistsError",
    "SweepOutcome",
    "TrialRow",
    "format_report",
    "format_table",
    "parse_list",
    "plot_error_vs_lr",
    "run_sweep",
]
