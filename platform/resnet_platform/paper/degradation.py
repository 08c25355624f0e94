"""The degradation problem (section 4.2, Figure 6): plain against residual nets at 20 and 56 layers,
the same budget for all, over several seeds, as a Ray Tune grid.

The paper's claim: a deeper *plain* net has a higher *training* error than a shallower one (plain-56
above plain-20: an optimization problem, not overfitting), while a deeper ResNet does not (ResNet-56
at or below ResNet-20). One Tune trial per net and seed runs the platform's own CIFAR path
(:func:`~resnet_platform.paper.recipe.train_cifar`: Ray Train DDP, the Ray Data in-memory pipeline,
one tracked MLflow run per net) with the paper's CIFAR recipe scaled to ``epochs`` (lr 0.1, /10 at
1/2 and 3/4 of training, batch 128, momentum 0.9, weight decay 1e-4). The driver then writes

- ``figure6.png``: error against iterations, mean over seeds, training error dashed, test error bold,
  plain nets left, ResNets right (:func:`~resnet_platform.paper.tables.plot_figure6`), and
  ``figure6.json``, the curves behind both panels;
- ``table.md``: a Table 6-style summary (params, training and test error as mean ± std over seeds,
  the training error of every seed) with the verdict on the ordering;
- ``results.json``: the config, every trial, the per-net summary, the verdict and the wall time;

and logs them to one ``<name>-summary`` MLflow run.

Data (``data``): ``digits`` (default) is scikit-learn's bundled handwritten digits, the demo's data
set, with the demo's seeded 80/20 split and bilinear upsampling (``data/digits.py``), held in memory
like a CIFAR archive; or a CIFAR-10 archive or folder; or a data set prepared by
``jobs/prepare_imagenet.py`` (streamed from its Parquet shards).

Warm-up: every net's rate ramps linearly from 0.01 (the rate of the paper's ResNet-110 warm-up) to
0.1 over the first quarter of the epochs (``warmup_epochs``; Goyal et al.'s gradual warm-up, the
training loop's ``warmup_epochs`` with ``warmup_start_factor``), then follows the recipe. The paper
instead keeps ResNet-110 at 0.01 until its training error is below 80% ("about 400 iterations") and
then jumps to 0.1. An epoch of the digits is 12 iterations: that rule ends after a handful of them,
and at the jump ResNet-56's loss spiked to 3-10 and the seeds that spiked hardest lagged for the
rest of the budget (BENCHMARKS.md, "Degradation at small scale"), so the job ramps instead, and ramps
every net alike, plain ones included: a deeper plain net that still trains worse cannot be blamed
on a missing warm-up. ``--warmup-epochs 0`` is the paper's recipe to the letter (no warm-up below
110 layers, its 0.01-until-80% rule from 110).

Modules: ``degradation_config.py`` (the flags, the data source), ``degradation_trial.py`` (one net at
one seed), ``degradation_analysis.py`` (per net over seeds, the verdict), ``degradation_report.py``
(the table, the figure, results.json, the summary run); this one runs the grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from resnet_platform.errors import ConfigError

from .degradation_analysis import NetSummary, mean_curves, summarize, verdict
from .degradation_config import AUGMENTATIONS, DIGITS, FLAG_GROUPS, WARMUP_LR, DegradationConfig, data_source
from .degradation_report import (
    TABLE_COLUMNS,
    DegradationOutcome,
    _pct,
    budget_note,
    figure_data,
    table_markdown,
    verdict_text,
    write_outputs,
)
from .degradation_trial import RESULT_FILE, SeedResult, degradation_trial, in_memory_data, train_net
from .grid import check_cifar, check_prepared, collect_results, open_tracking, prepare_output
from .tables import net_label

__all__ = [
    "AUGMENTATIONS",
    "DIGITS",
    "FLAG_GROUPS",
    "RESULT_FILE",
    "TABLE_COLUMNS",
    "WARMUP_LR",
    "DegradationConfig",
    "DegradationOutcome",
    "NetSummary",
    "SeedResult",
    "budget_note",
    "data_source",
    "degradation_trial",
    "figure_data",
    "in_memory_data",
    "mean_curves",
    "run_degradation",
    "summarize",
    "table_markdown",
    "train_net",
    "trial_label",
    "trial_outcome",
    "verdict",
    "verdict_text",
    "write_outputs",
]


def trial_label(params: dict) -> str:
    """``plain-56 seed 0``: a trial of the grid by its net and seed."""
    return f"{net_label(params['arch'])} seed {params['seed']}"


def trial_outcome(result: dict) -> str:
    """What a finished trial reached (its reported metrics), for its progress line."""
    if "train_error" not in result:
        return "finished"
    return (
        f"training error {_pct(result['train_error'])}%, test error {_pct(result['test_error'])}% "
        f"({result.get('time_total_s', 0):.0f} s)"
    )


def run_degradation(cfg: DegradationConfig) -> DegradationOutcome:
    """Train the grid (nets x seeds) with Ray Tune, then write and log the figure and the tables."""
    from ray import tune

    from resnet_platform import storage
    from resnet_platform.console import ensure_ray, is_verbose
    from resnet_platform.tune import trials

    started = time.monotonic()
    name = cfg.name or f"degradation-{time.strftime('%Y%m%d-%H%M%S')}"
    store = storage.Location.of(storage.absolute(cfg.storage))  # resolved once: Tune's RunConfig
    data = cfg.data if cfg.data == DIGITS else storage.absolute(cfg.data)
    # What the trials will read and write into, tried before Ray starts (paper/grid.py).
    tracking_uri = open_tracking(cfg.tracking_uri, cfg.experiment) if cfg.track else None
    cfg = replace(cfg, name=name, storage=store.uri, data=data, tracking_uri=tracking_uri)
    source = data_source(data)
    if source == "cifar":
        check_cifar(data)
    elif source == "prepared":
        if cfg.train_rows is not None:
            raise ConfigError(
                "--train-rows applies to the digits and CIFAR archives, not to prepared data sets"
            )
        check_prepared(data)
    prepare_output(cfg.output)
    ensure_ray()
    tuner = tune.Tuner(
        trials.trainable(degradation_trial, cfg=cfg),
        param_space={"arch": tune.grid_search(cfg.archs), "seed": tune.grid_search(list(cfg.seeds))},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials),
        run_config=trials.run_config(
            f"{name}-tune",
            store,
            max_failures=cfg.trial_retries,
            verbose=1 if is_verbose() else 0,  # the job's own lines instead of Tune's tables
            callbacks=[trials.trial_lines(trial_label, trial_outcome, len(cfg.archs) * len(cfg.seeds))],
        ),
    )
    texts = collect_results(tuner.fit(), RESULT_FILE, trial_label)
    results = [SeedResult.from_dict(json.loads(text)) for text in texts]
    return write_outputs(cfg, results, wall_s=time.monotonic() - started)
