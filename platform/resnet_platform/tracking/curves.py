"""Training curves as PNG, drawn like the paper's Figure 4: thin = training error, bold = validation error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def _series(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is None or row.get("epoch") is None:
            continue
        v = float(v)
        if math.isfinite(v):
            xs.append(float(row["epoch"]))
            ys.append(v)
    return xs, ys


def _as_percent(ys: list[float], scale: float) -> list[float]:
    return [y * scale for y in ys]


def plot_error_curves(
    history: Sequence[Mapping] | Mapping[str, Sequence[Mapping]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Error (%) against epoch, one panel per metric family (top-1, and top-5 when present).

    ``history`` rows hold ``epoch``, ``train_top1_error``, ``val_top1_error`` and optionally
    ``train_top5_error`` / ``val_top5_error``; errors as fractions (0.25) or percents (25.0), detected
    from the data. Pass ``{"plain-34": rows, "resnet-34": rows}`` to overlay runs as in Figure 4.
    Writes a PNG at ``path`` (parents created) and returns it.
    """
    runs = dict(history) if isinstance(history, Mapping) else {"": list(history)}
    has_top5 = any(
        any(r.get("train_top5_error") is not None or r.get("val_top5_error") is not None for r in rows)
        for rows in runs.values()
    )
    families = ["top1", "top5"] if has_top5 else ["top1"]
    all_values = [
        float(r[k])
        for rows in runs.values()
        for r in rows
        for k in r
        if k.endswith("_error") and r[k] is not None and math.isfinite(float(r[k]))
    ]
    scale = 100.0 if all_values and max(all_values) <= 1.0 else 1.0

    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, fam in zip(axes[0], families, strict=True):
        for i, (label, rows) in enumerate(runs.items()):
            color = colors[i % len(colors)]
            name = f"{label} " if label else ""
            tx, ty = _series(rows, f"train_{fam}_error")
            vx, vy = _series(rows, f"val_{fam}_error")
            if tx:
                ax.plot(
                    tx,
                    _as_percent(ty, scale),
                    color=color,
                    linewidth=1.0,
                    linestyle="--",
                    label=f"{name}train",
                )
            if vx:
                ax.plot(vx, _as_percent(vy, scale), color=color, linewidth=2.5, label=f"{name}val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{fam}-error (%)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG (creating the folder) and free it: every plot ends here."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
