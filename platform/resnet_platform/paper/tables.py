"""Table 6 and Figure 6 of the paper, with the paper's own numbers beside ours.

Table 6 (CIFAR-10 test error, %): ResNet-20 8.75, 32 7.51, 44 7.17, 56 6.97, 110 6.43 (best of 5 runs;
mean 6.61 +/- 0.16), 1202 7.93. The paper gives no table entries for the plain nets: Figure 6 (left)
shows their training and test error rising with depth (plain-56 above plain-20), the degradation problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from resnet_platform.models import get_spec
from resnet_platform.models.registry import PAPER_CIFAR_PARAMS_M
from resnet_platform.tracking.curves import save_png

# Table 6, test error (%) of the ResNets (option A shortcuts, 45k/5k split, 64k iterations).
PAPER_RESNET_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_RESNET110_MEAN = "6.61 ± 0.16"
PAPER_PLAIN_NOTE = "higher than plain-20 (Fig. 6, left)"


def net_label(arch: str) -> str:
    """``plain-56``, ``ResNet-110``: a CIFAR net as the paper names it."""
    spec = get_spec(arch)
    return f"{'ResNet' if spec.residual else 'plain'}-{spec.depth}"


class NamedNet:
    """``depth``, ``residual`` and ``label`` of a result that names its net by ``arch``: what the
    tables and figures sort and label by, for one trial and for a net over its seeds alike."""

    arch: str  # a dataclass field of the subclass

    @property
    def depth(self) -> int:
        return get_spec(self.arch).depth

    @property
    def residual(self) -> bool:
        return get_spec(self.arch).residual

    @property
    def label(self) -> str:
        return net_label(self.arch)


@dataclass
class TrialResult(NamedNet):
    """One trained net: what Table 6 and Figure 6 need."""

    arch: str
    params: int
    test_error: float  # fraction
    train_error: float  # fraction, the last epoch's
    history: list[dict] = field(default_factory=list)  # rows with step, train/val_top1_error
    responses: dict | None = None  # LayerResponses.to_dict()
    mlflow_run_id: str | None = None


def _pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def table6_markdown(results: Sequence[TrialResult], *, note: str = "") -> str:
    """Our params and errors beside the paper's Table 6, plain and residual at each depth."""
    lines = [
        "| net | layers | params (ours) | params (paper) | train error % (ours, last epoch) "
        "| test error % (ours) | test error % (paper) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.residual, r.depth)):
        if r.residual:
            paper_params = f"{PAPER_CIFAR_PARAMS_M[r.depth]}M" if r.depth in PAPER_CIFAR_PARAMS_M else "—"
            paper_err = PAPER_RESNET_ERROR.get(r.depth)
            paper = "—" if paper_err is None else f"{paper_err:.2f}"
            if r.depth == 110:
                paper += f" (mean {PAPER_RESNET110_MEAN})"
        else:
            paper_params = "—"
            paper = PAPER_PLAIN_NOTE if r.depth > 20 else "— (Fig. 6, left)"
        lines.append(
            f"| {r.label} | {r.depth} | {r.params / 1e6:.2f}M | {paper_params} | {_pct(r.train_error)} "
            f"| {_pct(r.test_error)} | {paper} |"
        )
    text = "## Table 6: CIFAR-10 (ours beside the paper's)\n\n" + "\n".join(lines) + "\n"
    if note:
        text += f"\n{note}\n"
    return text


def degradation_summary(results: Sequence[TrialResult]) -> str:
    """Whether the deepest plain net ends above the shallowest in training error, and the ResNet not."""
    by = {(r.residual, r.depth): r for r in results}
    depths = sorted({r.depth for r in results})
    if len(depths) < 2:
        return ""
    lo, hi = depths[0], depths[-1]
    parts = []
    for residual, name in ((False, "plain"), (True, "ResNet")):
        a, b = by.get((residual, lo)), by.get((residual, hi))
        if a and b:
            verb = "above" if b.train_error > a.train_error else "not above"
            parts.append(
                f"{name}-{hi} ends {verb} {name}-{lo} in training error "
                f"({_pct(b.train_error)}% vs {_pct(a.train_error)}%)"
            )
    return "; ".join(parts) + "."


def plot_figure6(
    results: Sequence[TrialResult],
    path: str | Path,
    *,
    iterations_unit: float = 1e4,
    title: str | None = None,
) -> Path:
    """Figure 6: error (%) against iterations (in ``iterations_unit``s, the paper's 1e4), plain nets
    left, ResNets right; training error dashed, test error bold, one colour per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({r.depth for r in results})
    for ax, residual in zip(axes, (False, True), strict=True):
        for r in sorted((r for r in results if r.residual == residual), key=lambda r: r.depth):
            color = colors[depths.index(r.depth) % len(colors)]
            rows = [h for h in r.history if h.get("step") is not None]
            xs = [float(h["step"]) / iterations_unit for h in rows]
            dots = (
                {"marker": "o", "markersize": 3} if len(rows) <= 30 else {}
            )  # short runs: every epoch shows
            ax.plot(xs, [100 * h["train_top1_error"] for h in rows], "--", color=color, linewidth=1.0, **dots)
            ax.plot(
                xs,
                [100 * h["val_top1_error"] for h in rows],
                "-",
                color=color,
                linewidth=2.5,
                label=r.label,
                **dots,
            )
        ax.set_title("plain networks" if not residual else "ResNets")
        ax.set_xlabel(
            "iter." if iterations_unit == 1 else f"iter. ({iterations_unit:.0e})".replace("e+0", "e")
        )
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("error (%)  (dashed: training, bold: test)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def results_from_dicts(rows: Sequence[Mapping]) -> list[TrialResult]:
    return [TrialResult(**dict(r)) for r in rows]
