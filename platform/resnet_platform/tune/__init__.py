"""Hyperparameter sweeps with Ray Tune: search space, ASHA, one Ray Train run per trial, MLflow."""

from resnet_platform._lazy import lazy_exports

_EXPORTS = {
    "TrialRow": ".results",
    "format_table": ".results",
    "plot_error_vs_lr": ".results",
    "SearchSpace": ".space",
    "parse_list": ".space",
    "SweepConfig": ".sweep",
    "SweepExistsError": ".sweep",
    "SweepOutcome": ".sweep",
    "format_report": ".sweep",
    "run_sweep": ".sweep",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
