"""What the degradation job writes: the Table 6-style markdown with the verdict, the figure and its
data, results.json, and the summary MLflow run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .degradation_analysis import NetSummary, mean_curves, summarize, verdict
from .degradation_config import DIGITS, WARMUP_LR, DegradationConfig
from .degradation_trial import SeedResult
from .tables import PAPER_RESNET_ERROR, TrialResult, plot_figure6


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


@dataclass
class DegradationOutcome:
    results: list[SeedResult]
    nets: list[NetSummary]
    verdict: dict
    files: dict[str, str]
    wall_s: float
    summary_run_id: str | None = None


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
