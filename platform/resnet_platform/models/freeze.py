"""Freezing parts of a network for fine-tuning, and naming its classifier ("the head").

``--freeze stem,layer1,layer2`` or ``--freeze all-but-head``: the named parts stop training. Frozen
means frozen in full: their parameters get no gradient (so the optimizer never steps them) *and*
their BatchNorm layers stay in eval mode, so running statistics learned on the source data are not
overwritten by the new data's batches (timm's ``freeze`` does the same). A frozen backbone is then
bit-for-bit the weights it was initialised from, which is what a user expects from the word.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

HEAD = "fc"  # every network of the platform ends in this Linear layer (models/resnet.py)
STEM = ("conv1", "bn1")
ALL_BUT_HEAD = "all-but-head"


def parts(model: nn.Module) -> list[str]:
    """The freezable part names of ``model``: stem, layer1..layerN, head."""
    layers = [name for name, _ in model.named_children() if name.startswith("layer")]
    return ["stem", *layers, "head"]


def parse_freeze(spec: str | None, available: Iterable[str]) -> tuple[str, ...]:
    """``"stem,layer1"`` / ``"all-but-head"`` -> the part names; an unknown part is a ValueError
    naming the valid ones (ImageNet nets have layer4, CIFAR nets stop at layer3)."""
    available = list(available)
    names = tuple(p.strip() for p in (spec or "").split(",") if p.strip())
    if names == (ALL_BUT_HEAD,):
        return tuple(p for p in available if p != "head")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"--freeze: no part {unknown[0]!r} in this network; valid: {', '.join(available)} or {ALL_BUT_HEAD}"
        )
    return names


def _modules(model: nn.Module, part: str) -> list[nn.Module]:
    if part == "stem":
        return [getattr(model, n) for n in STEM]
    if part == "head":
        return [getattr(model, HEAD)]
    return [getattr(model, part)]


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: normalizes with its stored statistics and never
    updates them. Same class layout and state-dict keys as ``nn.BatchNorm2d`` (it is one), so
    checkpoints and logged models load into the unfrozen network unchanged."""

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


def freeze(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Freeze the parts ``names`` of ``model`` in place; returns the frozen parameter names."""
    for part in names:
        for module in _modules(model, part):
            for p in module.parameters():
                p.requires_grad_(False)
            for m in module.modules():
                if type(m) is nn.BatchNorm2d:
                    m.__class__ = FrozenBatchNorm2d
                    m.eval()
    ids = {id(p) for p in model.parameters() if not p.requires_grad}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters (``model.fc``; a DDP wrapper is looked through)."""
    net = model.module if hasattr(model, "module") else model
    net = getattr(net, "_orig_mod", net)
    return list(getattr(net, HEAD).parameters())


__all__ = ["ALL_BUT_HEAD", "HEAD", "FrozenBatchNorm2d", "freeze", "head_parameters", "parse_freeze", "parts"]
