"""Layer responses (section 4.2, Figure 7): the standard deviation of each 3x3 layer's output after
its BN, before the addition and the nonlinearity, over a test set.

Every BatchNorm2d that directly follows a 3x3 convolution (in module registration order) is hooked:
in the CIFAR nets that is the stem's BN and both BNs of every block (6n+1 layers), never the BN of a
1x1 projection shortcut. The std of a layer is computed per channel over all images and positions,
then averaged over the channels (float64 running sums, one pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnet_platform.tracking.curves import save_png


@dataclass
class LayerResponses:
    names: list[str]  # the hooked BN modules, in forward order
    stds: list[float]
    images: int
    error: float | None = None  # top-1 error on the same images, when labels were given

    def to_dict(self) -> dict:
        return {"names": self.names, "stds": self.stds, "images": self.images, "error": self.error}


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, BN) for every BN that directly follows a 3x3 convolution."""
    layers, previous = [], None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            previous = module
        elif isinstance(module, nn.BatchNorm2d):
            if previous is not None and tuple(previous.kernel_size) == (3, 3):
                layers.append((name, module))
            previous = None
    return layers


@torch.no_grad()
def layer_responses(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> LayerResponses:
    """Run uint8 NHWC ``images`` through ``model`` (eval mode) and measure every 3x3 layer."""
    model = model.to(device).eval()
    layers = response_layers(model)
    stats: dict[str, list] = {}

    def hook(name):
        def record(_module, _inputs, out):
            x = out.detach().double()
            s = stats.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + x.sum(dim=(0, 2, 3))
            s[1] = s[1] + (x * x).sum(dim=(0, 2, 3))
            s[2] += x.shape[0] * x.shape[2] * x.shape[3]

        return record

    handles = [bn.register_forward_hook(hook(name)) for name, bn in layers]
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    wrong = 0
    try:
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
            logits = model((x.permute(0, 3, 1, 2).float() - m) / s)
            if labels is not None:
                y = torch.from_numpy(np.asarray(labels[i : i + batch_size])).to(device)
                wrong += int((logits.argmax(1) != y).sum())
    finally:
        for h in handles:
            h.remove()
    stds = []
    for name, _ in layers:
        total, squares, n = stats[name]
        var = (squares / n - (total / n) ** 2).clamp_min(0)
        stds.append(float(var.sqrt().mean()))
    error = wrong / len(images) if labels is not None and len(images) else None
    return LayerResponses([name for name, _ in layers], stds, len(images), error)


def plot_layer_responses(runs: Mapping[str, LayerResponses | Mapping], path: str | Path) -> Path:
    """Figure 7: std per layer index (top) and sorted by magnitude (bottom); plain nets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, r) in enumerate(runs.items()):
        stds = list(r.stds if isinstance(r, LayerResponses) else r["stds"])
        style = "--" if "plain" in label else "-"
        kw = dict(color=colors[i % len(colors)], linestyle=style, linewidth=1.5, label=label)
        top.plot(range(1, len(stds) + 1), stds, **kw)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **kw)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Std of 3x3 layer responses (after BN, before addition and ReLU)")
    fig.tight_layout()
    return save_png(fig, path)
