"""A sweep's results: one row per trial, as a printed table, markdown, CSV and a PNG of validation
error against learning rate with one line per architecture."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from resnet_platform.tracking.curves import save_png


@dataclass
class TrialRow:
    trial: str  # Tune's trial id
    arch: str
    lr: float
    weight_decay: float
    batch_size: int
    best_val_top1_error: float  # nan when the trial reported nothing
    best_epoch: int
    epochs_run: int
    stopped_early: bool  # ASHA stopped it before the last epoch
    status: str  # TERMINATED, ERROR (as Tune says), or UNFINISHED (an interrupted sweep)
    mlflow_run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "TERMINATED" and not math.isnan(self.best_val_top1_error)


COLUMNS = [f.name for f in fields(TrialRow)]
_SHOWN = [
    "trial",
    "arch",
    "lr",
    "weight_decay",
    "batch_size",
    "best_val_top1_error",
    "epochs_run",
    "stopped_early",
    "status",
]


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    candidates = [r for r in rows if not math.isnan(r.best_val_top1_error) and r.status != "ERROR"]
    return min(candidates, key=lambda r: r.best_val_top1_error) if candidates else None


def _cell(row: TrialRow, col: str) -> str:
    value = getattr(row, col)
    if col == "lr" or col == "weight_decay":
        return f"{value:.4g}"
    if col == "best_val_top1_error":
        return "-" if math.isnan(value) else f"{value:.4f}"
    if col == "stopped_early":
        return "yes" if value else "no"
    return str(value)


def sorted_rows(rows: list[TrialRow]) -> list[TrialRow]:
    return sorted(rows, key=lambda r: (r.arch, r.lr, r.weight_decay, r.batch_size, r.trial))


def format_table(rows: list[TrialRow]) -> str:
    """A fixed-width table for the terminal, best trial marked with ``*``."""
    best = best_row(rows)
    table = [_SHOWN] + [
        [("* " if r is best else "  ") + r.trial] + [_cell(r, c) for c in _SHOWN[1:]]
        for r in sorted_rows(rows)
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(_SHOWN))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in table)


def to_markdown(rows: list[TrialRow]) -> str:
    best = best_row(rows)
    lines = ["| " + " | ".join(_SHOWN) + " |", "|" + "---|" * len(_SHOWN)]
    for r in sorted_rows(rows):
        cells = [_cell(r, c) for c in _SHOWN]
        if r is best:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[TrialRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    for r in sorted_rows(rows):
        writer.writerow(asdict(r))
    return out.getvalue()


def plot_error_vs_lr(rows: list[TrialRow], path: str | Path, title: str | None = None) -> Path:
    """Best validation top-1 error (%) against learning rate (log axis), one line per architecture.

    Several trials at one (arch, lr) (other weight decays or batch sizes) show their best.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch in sorted({r.arch for r in rows}):
        by_lr: dict[float, float] = {}
        stopped: dict[float, bool] = {}
        for r in rows:
            if r.arch != arch or math.isnan(r.best_val_top1_error):
                continue
            if r.lr not in by_lr or r.best_val_top1_error < by_lr[r.lr]:
                by_lr[r.lr] = r.best_val_top1_error
                stopped[r.lr] = r.stopped_early
        if not by_lr:
            continue
        xs = sorted(by_lr)
        (line,) = ax.plot(xs, [100 * by_lr[x] for x in xs], marker="o", linewidth=2, label=arch)
        early = [x for x in xs if stopped[x]]
        if early:
            ax.scatter(
                early, [100 * by_lr[x] for x in early], marker="x", s=80, color=line.get_color(), zorder=3
            )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best validation top-1 error (%)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="architecture (x: stopped early)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)
