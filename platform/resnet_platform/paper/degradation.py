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
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from resnet_platform.models import get_spec
from resnet_platform.settings import setting

from .tables import PAPER_RESNET_ERROR, TrialResult, net_label, plot_figure6

log = logging.getLogger(__name__)

DIGITS = "digits"
AUGMENTATIONS = ("none", "pad-crop")
WARMUP_LR = 0.01  # the paper's ResNet-110 warm-up rate (recipe.cifar_config)

# Flag groups, in the order ``--help`` shows them.
FLAG_GROUPS = {
    "data": "data",
    "grid": "the comparison",
    "recipe": "the paper's CIFAR recipe, scaled to the budget",
    "execution": "execution",
    "output": "output and tracking",
}


@dataclass
class DegradationConfig:
    """Plain against residual nets at the same budget: the flags of ``jobs/degradation.py`` are
    generated from these fields."""

    data: str = setting(
        DIGITS,
        "'digits' (scikit-learn's digits, the demo's data set, in memory), a CIFAR-10 archive or "
        "folder, or a data set prepared by prepare_imagenet.py (path or URI)",
        group="data",
    )
    digits_size: int = setting(
        16,
        "side of the digits in pixels: the 8x8 glyphs upsampled bilinearly (the demo writes 32; 16 holds "
        "the same information at about a third of the CPU time)",
        group="data",
    )
    train_rows: int | None = setting(
        None, "train on the first N training images only (digits and CIFAR; a smoke run)", group="data"
    )
    depths: tuple[int, ...] = setting(
        (20, 56), "6n+2 depths; the shallowest and deepest are compared", group="grid"
    )
    seeds: tuple[int, ...] = setting((0, 1, 2), "one trial per net and seed", group="grid")
    margin: float = setting(
        0.01,
        "the deepest ResNet may end this much (a fraction) above the shallowest in training error and "
        "still count as not degrading",
        group="grid",
    )
    epochs: int = setting(12, "the budget: epochs per net; lr /10 at 1/2 and 3/4 of them", group="recipe")
    batch_size: int = setting(128, "global batch per net (the paper's 128)", group="recipe")
    lr: float = setting(0.1, "initial learning rate (the paper's 0.1)", group="recipe")
    warmup_epochs: int | None = setting(
        None,
        f"epochs over which every net's lr ramps linearly from {WARMUP_LR} to --lr (Goyal et al.'s gradual "
        "warm-up); default: a quarter of --epochs; 0: the paper's recipe to the letter (no warm-up below "
        f"110 layers; from 110, lr {WARMUP_LR} until the training error is below 80%%)",
        group="recipe",
    )
    augmentation: str | None = setting(
        None,
        "none, or pad-crop (CIFAR's 4-pixel pad + random crop + flip); default: none on the digits "
        "(flipped digits are other digits), pad-crop otherwise",
        group="recipe",
        choices=AUGMENTATIONS,
    )
    num_workers: int = setting(1, "DDP workers per net", group="execution")
    use_gpu: bool = setting(False, "one GPU per worker", group="execution")
    cpus_per_worker: float = setting(
        0.2,
        "CPUs reserved per training worker (one thread each on CPU); leave a whole CPU for the data tasks",
        group="execution",
    )
    max_concurrent_trials: int = setting(2, "nets trained at once", group="execution")
    trial_retries: int = setting(
        1,
        "times a failed trial is started again (continuing from its last checkpoint); on a shared "
        "machine Ray's memory monitor may kill a worker",
        group="execution",
    )
    storage: str = setting("runs", "where runs and checkpoints go (path or s3://)", group="output")
    name: str | None = setting(None, "grid name (default: degradation-TIMESTAMP)", group="output")
    output: str = setting(
        "degradation-results", "where the figure and the tables are written", group="output"
    )
    experiment: str = setting("resnet-degradation", group="output")
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="output"
    )
    track: bool = setting(True, group="output", cli=False)  # the job's --no-mlflow

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.seeds = tuple(int(s) for s in self.seeds)
        if len(set(self.depths)) < 2:
            raise ValueError(f"need at least two depths to compare, got {self.depths}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_concurrent_trials < 1:
            raise ValueError("epochs, batch size and max concurrent trials must be at least 1")
        if self.trial_retries < 0:
            raise ValueError(f"trial retries must not be negative, got {self.trial_retries}")
        if self.train_rows is not None and self.train_rows < 1:
            raise ValueError(f"train rows must be positive, got {self.train_rows}")
        if self.augmentation is not None and self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; valid: {', '.join(AUGMENTATIONS)}")
        if self.margin < 0:
            raise ValueError(f"margin must not be negative, got {self.margin}")
        first_division = max(1, round(self.epochs / 2))  # recipe.cifar_config's first milestone
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < first_division:
            raise ValueError(
                f"warm-up epochs must be at least 0 and end before the first lr division (epoch "
                f"{first_division} of {self.epochs}), got {self.warmup_epochs}"
            )
        self.archs  # noqa: B018  (unknown depths fail here, listing the valid nets)

    @property
    def archs(self) -> list[str]:
        archs = [f"cifar_{family}{d}" for family in ("plain", "resnet") for d in sorted(self.depths)]
        for arch in archs:
            get_spec(arch)
        return archs

    @property
    def resolved_augmentation(self) -> str:
        if self.augmentation is not None:
            return self.augmentation
        return "none" if self.data == DIGITS else "pad-crop"

    @property
    def resolved_warmup_epochs(self) -> int:
        return self.epochs // 4 if self.warmup_epochs is None else self.warmup_epochs

    def warmup_overrides(self) -> dict[str, Any]:
        """The TrainConfig fields of the warm-up, the same for every net: the training loop's linear
        warm-up from ``WARMUP_LR`` (``train/optim.py``, ``lr_factor``), and no error-threshold
        warm-up; none at 0 epochs, where ``recipe.cifar_config`` applies the paper's own rule."""
        epochs = self.resolved_warmup_epochs
        if epochs == 0:
            return {}
        return {
            "warmup_epochs": epochs,
            "warmup_start_factor": min(1.0, WARMUP_LR / self.lr),
            "error_warmup_lr": None,
        }


# ----------------------------------------------------------------------------------------- data


def data_source(data: str) -> str:
    """``digits``, ``prepared`` (a folder or prefix with a manifest.json) or ``cifar``."""
    if data == DIGITS:
        return "digits"
    from resnet_platform.data.manifest import MANIFEST_NAME, read_text
    from resnet_platform.storage import join

    try:
        has_manifest = read_text(join(data, MANIFEST_NAME)) is not None
    except OSError:  # e.g. a path below a file (the .tar.gz itself)
        has_manifest = False
    return "prepared" if has_manifest else "cifar"


def in_memory_data(cfg: DegradationConfig):
    """The digits or a CIFAR-10 archive as a :class:`~resnet_platform.data.cifar.Cifar10` (arrays),
    cut to ``train_rows`` training images when set."""
    from resnet_platform.data.cifar import Cifar10, read_cifar10

    if cfg.data == DIGITS:
        from resnet_platform.data.digits import DIGIT_NAMES, digits_arrays

        train_x, train_y, test_x, test_y = digits_arrays(size=cfg.digits_size)
        data = Cifar10(train_x, train_y, test_x, test_y, list(DIGIT_NAMES))
    else:
        data = read_cifar10(cfg.data)
    if cfg.train_rows is not None:
        data = replace(
            data,
            train_images=data.train_images[: cfg.train_rows],
            train_labels=data.train_labels[: cfg.train_rows],
        )
    return data


# ---------------------------------------------------------------------------------- trial side


@dataclass
class SeedResult:
    """One trained net at one seed."""

    seed: int
    seconds: float  # the trial's wall time, start-up and tracking included
    result: TrialResult

    def to_dict(self) -> dict:
        return {"seed": self.seed, "seconds": self.seconds, "result": asdict(self.result)}

    @classmethod
    def from_dict(cls, d: dict) -> SeedResult:
        return cls(int(d["seed"]), float(d["seconds"]), TrialResult(**d["result"]))


def train_net(cfg: DegradationConfig, arch: str, seed: int) -> SeedResult:
    """Train one net at one seed with the recipe, on the platform's training path; tracked unless
    ``cfg.track`` is off. A run of the same name already in storage (a retried trial) is continued
    from its last checkpoint, in the same MLflow run."""
    from resnet_platform import storage
    from resnet_platform.models import build_model
    from resnet_platform.train.runner import run_exists

    from .recipe import cifar_config, train_cifar

    started = time.monotonic()
    run_storage, run_name = f"{cfg.storage.rstrip('/')}/{cfg.name}", f"{arch}-seed{seed}"
    fs, path = storage.resolve(run_storage)
    overrides: dict[str, Any] = dict(
        arch=arch,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        augmentation=cfg.resolved_augmentation,
        num_workers=cfg.num_workers,
        use_gpu=cfg.use_gpu,
        cpus_per_worker=cfg.cpus_per_worker,
        channels_last=cfg.use_gpu,  # NCHW is about 30% faster for these nets on CPU threads
        seed=seed,
        storage=run_storage,
        name=run_name,
        resume=run_exists(fs, path, run_name),
        experiment=cfg.experiment,
        tracking_uri=cfg.tracking_uri,
    )
    overrides.update(cfg.warmup_overrides())
    if data_source(cfg.data) == "prepared":
        from resnet_platform.data.manifest import read_manifest
        from resnet_platform.train.main import train_and_track

        manifest = read_manifest(cfg.data)
        config = cifar_config(cfg.data, train_rows=manifest.splits["train"].num_rows, **overrides)
        outcome = train_and_track(config, track=cfg.track)
        params = sum(p.numel() for p in build_model(arch, len(manifest.classes)).parameters())
        test_error = float(outcome.final.get("val_top1_error", float("nan")))
        train_error = float(outcome.final.get("train_top1_error", float("nan")))
    else:
        run = train_cifar(
            cfg.data, cifar=in_memory_data(cfg), track=cfg.track, measure_responses=False, **overrides
        )
        outcome, params, test_error, train_error = run.outcome, run.params, run.test_error, run.train_error
    keep = ("epoch", "step", "lr", "train_loss", "train_top1_error", "val_top1_error")
    result = TrialResult(
        arch=arch,
        params=params,
        test_error=test_error,
        train_error=train_error,
        history=[{k: h[k] for k in keep if k in h} for h in outcome.history],
        mlflow_run_id=outcome.mlflow_run_id,
    )
    return SeedResult(seed, time.monotonic() - started, result)


RESULT_FILE = "result.json"  # a trial's SeedResult, in its Tune checkpoint


def degradation_trial(params: dict[str, Any], cfg: DegradationConfig) -> None:
    """The Tune function trainable (:mod:`resnet_platform.tune.trials`): one net at one seed; reports
    its errors as metrics and its :class:`SeedResult` (with the curves) as a file."""
    from resnet_platform.tune import trials

    result = train_net(cfg, params["arch"], int(params["seed"]))
    trials.report(
        {"train_error": result.result.train_error, "test_error": result.result.test_error},
        {RESULT_FILE: json.dumps(result.to_dict())},
    )


# ------------------------------------------------------------------------------ summary, verdict


@dataclass
class NetSummary:
    """One net over its seeds."""

    arch: str
    params: int
    seeds: list[int]
    train_errors: list[float]  # last epoch's (running, train mode: what Figure 6 plots), per seed
    test_errors: list[float]
    seconds: list[float]
    mlflow_run_ids: list[str | None] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return get_spec(self.arch).depth

    @property
    def residual(self) -> bool:
        return get_spec(self.arch).residual

    @property
    def label(self) -> str:
        return net_label(self.arch)

    @property
    def train_error(self) -> float:
        return statistics.fmean(self.train_errors)

    @property
    def test_error(self) -> float:
        return statistics.fmean(self.test_errors)

    @staticmethod
    def _std(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    @property
    def train_error_std(self) -> float:
        return self._std(self.train_errors)

    @property
    def test_error_std(self) -> float:
        return self._std(self.test_errors)

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "label": self.label,
            "depth": self.depth,
            "residual": self.residual,
            "params": self.params,
            "seeds": self.seeds,
            "train_errors": self.train_errors,
            "test_errors": self.test_errors,
            "train_error_mean": self.train_error,
            "train_error_std": self.train_error_std,
            "test_error_mean": self.test_error,
            "test_error_std": self.test_error_std,
            "seconds": self.seconds,
            "mlflow_run_ids": self.mlflow_run_ids,
        }


def summarize(results: list[SeedResult]) -> list[NetSummary]:
    """Per net, seeds in order; nets as the paper's figure orders them (plain, then ResNets, by depth)."""
    by_arch: dict[str, list[SeedResult]] = {}
    for r in results:
        by_arch.setdefault(r.result.arch, []).append(r)
    out = []
    for arch, rs in by_arch.items():
        rs = sorted(rs, key=lambda r: r.seed)
        out.append(
            NetSummary(
                arch=arch,
                params=rs[0].result.params,
                seeds=[r.seed for r in rs],
                train_errors=[r.result.train_error for r in rs],
                test_errors=[r.result.test_error for r in rs],
                seconds=[r.seconds for r in rs],
                mlflow_run_ids=[r.result.mlflow_run_id for r in rs],
            )
        )
    return sorted(out, key=lambda s: (s.residual, s.depth))


def mean_curves(results: list[SeedResult]) -> list[TrialResult]:
    """One TrialResult per net whose history is the mean over seeds, epoch by epoch (the epochs
    every seed has)."""
    by_arch: dict[str, list[SeedResult]] = {}
    for r in results:
        by_arch.setdefault(r.result.arch, []).append(r)
    out = []
    for arch, rs in by_arch.items():
        epochs = min(len(r.result.history) for r in rs)
        history = []
        for i in range(epochs):
            rows = [r.result.history[i] for r in rs]
            history.append(
                {
                    "epoch": rows[0]["epoch"],
                    "step": statistics.fmean(float(h["step"]) for h in rows),
                    "train_top1_error": statistics.fmean(float(h["train_top1_error"]) for h in rows),
                    "val_top1_error": statistics.fmean(float(h["val_top1_error"]) for h in rows),
                }
            )
        out.append(
            TrialResult(
                arch=arch,
                params=rs[0].result.params,
                test_error=statistics.fmean(r.result.test_error for r in rs),
                train_error=statistics.fmean(r.result.train_error for r in rs),
                history=history,
            )
        )
    return sorted(out, key=lambda r: (r.residual, r.depth))


def verdict(nets: list[NetSummary], margin: float) -> dict:
    """Whether the paper's ordering holds in training error (last epoch, mean over seeds): the
    deepest plain net above the shallowest, and the deepest ResNet not above the shallowest by more
    than ``margin``. Also counted seed by seed."""
    by = {(n.residual, n.depth): n for n in nets}
    depths = sorted({n.depth for n in nets})
    lo, hi = depths[0], depths[-1]
    out: dict[str, Any] = {
        "metric": "training error of the last epoch (train mode, as Figure 6 plots it), mean over seeds",
        "shallow": lo,
        "deep": hi,
        "margin": margin,
    }
    checks = {
        "plain": lambda deep, shallow: deep > shallow,
        "resnet": lambda deep, shallow: deep <= shallow + margin,
    }
    for residual, family in ((False, "plain"), (True, "resnet")):
        a, b = by.get((residual, lo)), by.get((residual, hi))
        if a is None or b is None:
            out[family] = None
            continue
        seeds = [s for s in a.seeds if s in b.seeds]
        per_seed = [
            checks[family](b.train_errors[b.seeds.index(s)], a.train_errors[a.seeds.index(s)]) for s in seeds
        ]
        out[family] = {
            "shallow_train_error": a.train_error,
            "deep_train_error": b.train_error,
            "holds": checks[family](b.train_error, a.train_error),
            "seeds_holding": sum(per_seed),
            "seeds": len(seeds),
        }
    plain, resnet = out["plain"], out["resnet"]
    out["ordering_holds"] = bool(plain and resnet and plain["holds"] and resnet["holds"])
    return out


def _pct(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def verdict_text(v: dict) -> str:
    lo, hi = v["shallow"], v["deep"]
    parts = []
    if v["plain"]:
        p = v["plain"]
        parts.append(
            f"plain-{hi} {'above' if p['holds'] else 'NOT above'} plain-{lo} in training error "
            f"({_pct(p['deep_train_error'])}% vs {_pct(p['shallow_train_error'])}%; "
            f"{p['seeds_holding']} of {p['seeds']} seeds)"
        )
    if v["resnet"]:
        r = v["resnet"]
        parts.append(
            f"ResNet-{hi} {'not above' if r['holds'] else 'ABOVE'} ResNet-{lo} + {100 * v['margin']:g} points "
            f"({_pct(r['deep_train_error'])}% vs {_pct(r['shallow_train_error'])}%; "
            f"{r['seeds_holding']} of {r['seeds']} seeds)"
        )
    head = (
        "**The paper's ordering holds**" if v["ordering_holds"] else "**The paper's ordering does not hold**"
    )
    return f"{head} (training error, last epoch, mean over seeds): " + "; ".join(parts) + "."


TABLE_COLUMNS = (
    "net",
    "layers",
    "params",
    "train error % (last epoch, mean ± std)",
    "test error % (mean ± std)",
    "train error % per seed",
    "seeds",
    "paper: test error % (CIFAR-10)",
)


def table_markdown(nets: list[NetSummary], v: dict, *, note: str = "") -> str:
    """Table 6-style: one row per net, errors over seeds, the paper's CIFAR-10 figure beside."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for n in nets:
        paper = PAPER_RESNET_ERROR.get(n.depth) if n.residual else None
        paper_text = (
            f"{paper:.2f}" if paper is not None else ("— (Fig. 6: above plain-20)" if n.depth > 20 else "—")
        )
        lines.append(
            f"| {n.label} | {n.depth} | {n.params / 1e6:.2f}M "
            f"| {_pct(n.train_error)} ± {_pct(n.train_error_std)} "
            f"| {_pct(n.test_error)} ± {_pct(n.test_error_std)} "
            f"| {' / '.join(_pct(e) for e in n.train_errors)} | {len(n.seeds)} | {paper_text} |"
        )
    text = "## Degradation: plain against residual nets at the same budget\n\n" + "\n".join(lines) + "\n"
    text += f"\n{verdict_text(v)}\n"
    if note:
        text += f"\n{note}\n"
    return text


def figure_data(curves: list[TrialResult]) -> dict:
    """The series behind both panels of figure6.png: ``{"plain": {label: {...}}, "resnet": {...}}``."""
    panels: dict[str, dict] = {"plain": {}, "resnet": {}}
    for r in curves:
        panels["resnet" if r.residual else "plain"][r.label] = {
            "iterations": [h["step"] for h in r.history],
            "train_error": [h["train_top1_error"] for h in r.history],
            "test_error": [h["val_top1_error"] for h in r.history],
        }
    return panels


# ---------------------------------------------------------------------------------- driver side


@dataclass
class DegradationOutcome:
    results: list[SeedResult]
    nets: list[NetSummary]
    verdict: dict
    files: dict[str, str]
    wall_s: float
    summary_run_id: str | None = None


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
    store = storage.absolute(cfg.storage)
    data = cfg.data if cfg.data == DIGITS else storage.absolute(cfg.data)
    tracking_uri = None
    if cfg.track:
        from resnet_platform.tracking.runs import ensure_experiment

        # The store and the experiment exist before the trials start, which log into them at once.
        tracking_uri = ensure_experiment(cfg.tracking_uri, cfg.experiment)
    cfg = replace(cfg, name=name, storage=store, data=data, tracking_uri=tracking_uri)
    source = data_source(data)
    if source == "cifar":
        from resnet_platform.data.cifar import check_cifar_source

        check_cifar_source(data)  # a bad archive fails here, naming it, not once in every trial
    elif source == "prepared" and cfg.train_rows is not None:
        raise ValueError("--train-rows applies to the digits and CIFAR archives, not to prepared data sets")
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
    grid = tuner.fit()
    results, failed = [], []
    for r in grid:
        text = trials.read_file(r, RESULT_FILE) if r.error is None else None
        if text is None:
            params = r.config or {}
            failed.append(f"{params.get('arch')} seed {params.get('seed')}: {r.error}")
            continue
        results.append(SeedResult.from_dict(json.loads(text)))
    if failed:
        raise RuntimeError("trials failed: " + "; ".join(failed))
    return write_outputs(cfg, results, wall_s=time.monotonic() - started)


def budget_note(cfg: DegradationConfig, results: list[SeedResult], wall_s: float) -> str:
    steps = max((int(h["step"]) for r in results for h in r.result.history[-1:]), default=0)
    w = cfg.resolved_warmup_epochs
    warm = (
        f"every net's lr ramps linearly from {WARMUP_LR:g} over the first {w} epoch{'s' if w != 1 else ''}"
        if w
        else f"no warm-up below 110 layers (from 110: lr {WARMUP_LR:g} until training error < 80%)"
    )
    return (
        f"Data: {cfg.data}{f' ({cfg.digits_size}x{cfg.digits_size})' if cfg.data == DIGITS else ''}"
        f"{f', first {cfg.train_rows} training images' if cfg.train_rows else ''}. "
        f"Budget: {cfg.epochs} epoch(s) = {steps} iterations of batch {cfg.batch_size}, lr {cfg.lr:g} "
        f"/10 at 1/2 and 3/4, momentum 0.9, weight decay 1e-4, augmentation {cfg.resolved_augmentation}; "
        f"{warm}. Seeds {', '.join(map(str, cfg.seeds))}. Wall time of the grid: {wall_s:.0f} s "
        f"({cfg.max_concurrent_trials} nets at once, {cfg.num_workers} worker(s) each, "
        f"{'GPU' if cfg.use_gpu else 'CPU'})."
    )


def write_outputs(cfg: DegradationConfig, results: list[SeedResult], *, wall_s: float) -> DegradationOutcome:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    nets = summarize(results)
    v = verdict(nets, cfg.margin)
    curves = mean_curves(results)
    max_step = max((float(h["step"]) for r in curves for h in r.history), default=0.0)
    title = (
        f"{cfg.data}: {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, mean of {len(cfg.seeds)} "
        f"seed{'s' if len(cfg.seeds) != 1 else ''} "
        "(dashed: training error, bold: test error)"
    )
    files = {
        "figure6.png": plot_figure6(
            curves, out / "figure6.png", iterations_unit=1e4 if max_step >= 1e4 else 1.0, title=title
        ),
        "figure6.json": out / "figure6.json",
        "table.md": out / "table.md",
        "results.json": out / "results.json",
    }
    files["figure6.json"].write_text(json.dumps(figure_data(curves), indent=1))
    files["table.md"].write_text(table_markdown(nets, v, note=budget_note(cfg, results, wall_s)))
    files["results.json"].write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "wall_s": wall_s,
                "verdict": v,
                "nets": [n.to_dict() for n in nets],
                "trials": [r.to_dict() for r in sorted(results, key=lambda r: (r.result.arch, r.seed))],
            },
            indent=1,
        )
    )
    summary_run_id = _log_summary(cfg, nets, v, files, wall_s) if cfg.track else None
    return DegradationOutcome(results, nets, v, {k: str(p) for k, p in files.items()}, wall_s, summary_run_id)


def _log_summary(cfg: DegradationConfig, nets: list[NetSummary], v: dict, files: dict, wall_s: float) -> str:
    from resnet_platform.tracking.summary_run import record_summary_run

    metrics = {"ordering_holds": float(v["ordering_holds"]), "wall_time_s": wall_s}
    for n in nets:
        metrics[f"train_error_{n.arch}"] = n.train_error
        metrics[f"test_error_{n.arch}"] = n.test_error
    return record_summary_run(
        cfg.tracking_uri,
        cfg.experiment,
        f"{cfg.name}-summary",
        params={k: val for k, val in asdict(cfg).items() if k != "track"},
        tags={"paper.role": "degradation"},
        files=list(files.values()),
        metrics=metrics,
    )
