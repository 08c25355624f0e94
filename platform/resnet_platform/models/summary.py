"""The model table (paper's Tables 1 and 6) as markdown, shared by the job, the demo and the README."""

from __future__ import annotations

from .complexity import complexity
from .registry import get_spec


def format_table(archs: list[str], stride: str = "v1") -> str:
    """Markdown table; ``stride`` applies to bottleneck nets only (the paper's figures are v1)."""
    rows = [
        "| arch | layers | params | GFLOPs (mult-adds) | paper GFLOPs (Table 1) | paper params (Table 6) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arch in archs:
        spec = get_spec(arch)
        opts = {"stride": stride} if spec.family == "imagenet" and spec.depth >= 50 else {}
        c = complexity(arch, **opts)
        paper_g = f"{spec.paper_gflops:.1f}" if spec.paper_gflops else "-"
        paper_p = f"{spec.paper_params_m:.2f}M" if spec.paper_params_m else "-"
        gflops = f"{c.gflops:.2f}" if spec.family == "imagenet" else f"{c.gflops:.3f}"
        rows.append(f"| {arch} | {c.layers} | {c.params / 1e6:.2f}M | {gflops} | {paper_g} | {paper_p} |")
    return "\n".join(rows)
