"""Plain against residual CIFAR nets as a Ray Tune grid: Table 6, Figure 6 and Figure 7.

One Tune trial per net, run as every Tune job of the platform is (:mod:`resnet_platform.tune.trials`):
a function trainable (:func:`reproduce_trial`, which runs :func:`recipe.train_cifar`) over a param
space of architectures, reporting its errors as metrics and its :class:`TrialResult` (curves, layer
responses) as a file in its checkpoint. Each trial is a tracked MLflow run; the driver then writes
``table6.md``, ``figure6.png``, ``figure7.png`` and ``results.json`` to the output folder and logs
them to one summary MLflow run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resnet_platform.data.cifar import VAL_SIZE
from resnet_platform.errors import ConfigError
from resnet_platform.models import get_spec
from resnet_platform.settings import check_ranges, setting

from .cifar_recipe import cifar_config, passed_through
from .grid import check_cifar, collect_results, open_tracking, prepare_output
from .responses import plot_layer_responses
from .tables import TrialResult, degradation_summary, net_label, plot_figure6, table6_markdown

log = logging.getLogger(__name__)

FAMILIES = ("plain", "resnet")
CIFAR_TRAIN_ROWS = 50_000  # CIFAR-10's training set: the paper's 64k iterations in epochs


@dataclass
class ReproduceConfig:
    """The paper's CIFAR-10 comparison (Table 6, Figures 6 and 7): one declaration per setting, the
    flags of ``jobs/reproduce_paper.py`` generated from them."""

    data: str = setting(help="CIFAR-10 python archive or folder (path or URI)", group="paper")
    depths: tuple[int, ...] = setting((20, 32, 44, 56), "6n+2 depths (110 optional)", group="paper")
    families: tuple[str, ...] = setting(FAMILIES, "plain and/or resnet", group="paper")
    epochs: int | None = setting(
        None, "epochs per net (default: the paper's 64k iterations)", group="paper", at_least=1
    )
    val_split: bool = setting(False, "the paper's 45k/5k split", group="paper")
    batch_size: int = setting(128, "global batch per net", group="paper", at_least=1)
    num_workers: int = setting(1, "DDP workers per net", group="execution", at_least=1)
    use_gpu: bool = setting(False, "one GPU per worker", group="execution")
    cpus_per_worker: float = setting(0.5, "CPUs reserved per training worker", group="execution", above=0)
    data_node_label: str | None = setting(
        None, "see train_imagenet.py --help", group="execution", metavar="KEY=VALUE"
    )
    data_node_resource: str | None = setting(None, "see train_imagenet.py --help", group="execution")
    max_concurrent_trials: int = setting(1, "nets trained at once", group="execution", at_least=1)
    seed: int | None = setting(0, group="execution")
    storage: str = setting("runs", "where runs and checkpoints go (path or s3://)", group="output")
    name: str | None = setting(None, "grid name (default: paper-TIMESTAMP)", group="output")
    output: str = setting("paper-results", "where Table 6 and the figures are written", group="output")
    experiment: str = setting("resnet-cifar10-paper", group="output")
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="output"
    )
    track: bool = setting(True, group="output", cli=False)  # the job's --no-mlflow

    def __post_init__(self) -> None:
        """Every setting checked here, on the driver, before Ray starts: the declared ranges, the
        families, and each net's training config as its trial will build it."""
        self.depths = tuple(int(d) for d in self.depths)
        self.families = tuple(self.families)
        check_ranges(self)
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families or not self.depths:
            raise ConfigError(
                f"--families must be one or both of {', '.join(FAMILIES)} and --depths at least one depth, "
                f"got {','.join(self.families) or 'none'} and {','.join(map(str, self.depths)) or 'none'}"
            )
        train_rows = CIFAR_TRAIN_ROWS - (VAL_SIZE if self.val_split else 0)  # for the default schedule
        for arch in self.archs:  # unknown depths fail here, listing the valid nets
            cifar_config(self.data, train_rows=train_rows, epochs=self.epochs, **self.net_settings(arch))

    @property
    def archs(self) -> list[str]:
        archs = [f"cifar_{f}{d}" for f in self.families for d in self.depths]
        for arch in archs:
            get_spec(arch)
        return archs

    def net_settings(self, arch: str) -> dict[str, Any]:
        """The TrainConfig fields (over ``cifar_config``'s recipe) of the net ``arch``, less where its
        run is kept (storage, name, tracking URI: the trial adds them) and the epochs."""
        same = "batch_size num_workers use_gpu cpus_per_worker data_node_label data_node_resource seed experiment"
        return dict(passed_through(self, same.split()), arch=arch)


@dataclass
class ReproduceOutcome:
    results: list[TrialResult]
    files: dict[str, str]
    summary_run_id: str | None = None


RESULT_FILE = "result.json"  # a trial's TrialResult, in its Tune checkpoint


def reproduce_trial(params: dict[str, Any], cfg: ReproduceConfig) -> None:
    """The Tune function trainable: train the net ``params["arch"]`` and report what the tables need
    (its errors as metrics, its :class:`TrialResult` as a file)."""
    from resnet_platform.tune import trials

    from .recipe import train_cifar

    arch = params["arch"]
    run = train_cifar(
        cfg.data,
        val_split=cfg.val_split,
        track=cfg.track,
        epochs=cfg.epochs,
        storage=f"{cfg.storage.rstrip('/')}/{cfg.name}",
        name=arch,
        tracking_uri=cfg.tracking_uri,
        **cfg.net_settings(arch),
    )
    result = TrialResult(
        arch=arch,
        params=run.params,
        test_error=run.test_error,
        train_error=run.train_error,
        history=[
            {k: h[k] for k in ("epoch", "step", "train_top1_error", "val_top1_error")} for h in run.history
        ],
        responses=run.responses.to_dict() if run.responses is not None else None,
        mlflow_run_id=run.outcome.mlflow_run_id,
    )
    trials.report(
        {"test_error": run.test_error, "train_error": run.train_error},
        {RESULT_FILE: json.dumps(asdict(result))},
    )


def reproduce(cfg: ReproduceConfig) -> ReproduceOutcome:
    from dataclasses import replace

    from ray import tune

    from resnet_platform import storage
    from resnet_platform.train.runner import ensure_ray
    from resnet_platform.tune import trials

    name = cfg.name or f"paper-{time.strftime('%Y%m%d-%H%M%S')}"
    store = storage.Location.of(storage.absolute(cfg.storage))  # resolved once: Tune's RunConfig
    data = storage.absolute(cfg.data)
    # What the trials will read and write into, tried before Ray starts (paper/grid.py).
    tracking_uri = open_tracking(cfg.tracking_uri, cfg.experiment) if cfg.track else None
    cfg = replace(cfg, name=name, storage=store.uri, data=data, tracking_uri=tracking_uri)
    check_cifar(data)
    prepare_output(cfg.output)
    ensure_ray()
    tuner = tune.Tuner(
        trials.trainable(reproduce_trial, cfg=cfg),
        param_space={"arch": tune.grid_search(cfg.archs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials),
        run_config=trials.run_config(f"{name}-tune", store),
    )
    texts = collect_results(tuner.fit(), RESULT_FILE, lambda params: net_label(params["arch"]))
    return write_outputs(cfg, [TrialResult(**json.loads(text)) for text in texts])


def write_outputs(cfg: ReproduceConfig, results: list[TrialResult]) -> ReproduceOutcome:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    schedule = f"{cfg.epochs} epochs" if cfg.epochs else "64k iterations"
    note = (
        f"Ours: {schedule}, batch {cfg.batch_size}, {'45k/5k split' if cfg.val_split else 'test set as validation'}; "
        + degradation_summary(results)
    )
    files = {
        "table6.md": out / "table6.md",
        "figure6.png": plot_figure6(results, out / "figure6.png"),
        "results.json": out / "results.json",
    }
    files["table6.md"].write_text(table6_markdown(results, note=note))
    files["results.json"].write_text(json.dumps([asdict(r) for r in results], indent=1))
    responses = {
        r.label: r.responses for r in sorted(results, key=lambda r: (r.residual, r.depth)) if r.responses
    }
    if responses:
        files["figure7.png"] = plot_layer_responses(responses, out / "figure7.png")
    summary_run_id = None
    if cfg.track:
        from resnet_platform.tracking.summary_run import record_summary_run

        metrics = {}
        for r in results:
            metrics[f"test_error_{r.arch}"] = r.test_error
            metrics[f"train_error_{r.arch}"] = r.train_error
        summary_run_id = record_summary_run(
            cfg.tracking_uri,
            cfg.experiment,
            f"{cfg.name}-summary",
            params={
                "depths": ",".join(map(str, cfg.depths)),
                "families": ",".join(cfg.families),
                "epochs": cfg.epochs,
            },
            tags={"paper.role": "summary"},
            files=list(files.values()),
            metrics=metrics,
        )
    return ReproduceOutcome(results, {k: str(v) for k, v in files.items()}, summary_run_id)
