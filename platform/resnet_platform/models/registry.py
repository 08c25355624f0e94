"""Networks created by name (as timm does): one table of architectures, one ``build_model``.

Each entry records the paper's own figure beside it (Table 1 FLOPs for ImageNet nets, Table 6
parameters for CIFAR nets) so summaries and tests compare against the source, not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .resnet import SHORTCUT_OPTIONS, STRIDE_PLACEMENTS, BasicBlock, Bottleneck, CifarResNet, ResNet

IMAGENET_STAGES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
# Table 1, multiply-adds x 10^9 (the paper's nets place the stride in the first 1x1: "v1").
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
# Table 6, parameters in millions (option A shortcuts).
PAPER_CIFAR_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


@dataclass(frozen=True)
class ArchSpec:
    """What a name means: family, depth, whether it has shortcuts, and the paper's figures."""

    name: str
    family: str  # "imagenet" or "cifar"
    depth: int
    residual: bool

    @property
    def input_size(self) -> int:
        return 224 if self.family == "imagenet" else 32

    @property
    def default_num_classes(self) -> int:
        return 1000 if self.family == "imagenet" else 10

    @property
    def paper_gflops(self) -> float | None:
        return PAPER_GFLOPS.get(self.depth) if self.family == "imagenet" else None

    @property
    def paper_params_m(self) -> float | None:
        return PAPER_CIFAR_PARAMS_M.get(self.depth) if self.family == "cifar" and self.residual else None


def _specs() -> dict[str, ArchSpec]:
    specs: dict[str, ArchSpec] = {}
    for depth in IMAGENET_STAGES:
        for residual, prefix in ((True, "resnet"), (False, "plain")):
            specs[f"{prefix}{depth}"] = ArchSpec(f"{prefix}{depth}", "imagenet", depth, residual)
    for depth in CIFAR_DEPTHS:
        for residual, prefix in ((True, "cifar_resnet"), (False, "cifar_plain")):
            specs[f"{prefix}{depth}"] = ArchSpec(f"{prefix}{depth}", "cifar", depth, residual)
    return specs


ARCHS: dict[str, ArchSpec] = _specs()


def list_archs() -> list[str]:
    return list(ARCHS)


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}") from None


def build_model(
    arch: str,
    num_classes: int | None = None,
    *,
    shortcut: str | None = None,
    stride: str = "v1.5",
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build ``arch`` with the paper's options.

    ``shortcut``: "A" (zero-pad identity), "B" (projection where dimensions grow) or "C"
    (projection everywhere); default B for ImageNet nets and A for CIFAR nets, as in the paper.
    ``stride``: "v1.5" (stride in the 3x3, torchvision) or "v1" (stride in the first 1x1, the
    paper); only bottleneck nets have a 1x1 to put it in.
    """
    spec = get_spec(arch)
    if shortcut is not None and shortcut not in SHORTCUT_OPTIONS:
        raise ValueError(f"unknown shortcut option {shortcut!r}; valid: {', '.join(SHORTCUT_OPTIONS)}")
    if stride not in STRIDE_PLACEMENTS:
        raise ValueError(f"unknown stride placement {stride!r}; valid: {', '.join(STRIDE_PLACEMENTS)}")
    if not spec.residual and shortcut is not None:
        raise ValueError(
            f"{arch} is a plain network: it has no shortcuts, so shortcut={shortcut!r} is impossible"
        )
    if not spec.residual and zero_init_residual:
        raise ValueError(f"{arch} is a plain network: zero_init_residual needs residual branches")
    num_classes = spec.default_num_classes if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")

    if spec.family == "cifar":
        if stride != "v1.5":
            raise ValueError(f"{arch} has basic blocks only: stride placement {stride!r} does not apply")
        return CifarResNet(
            (spec.depth - 2) // 6,
            num_classes,
            shortcut=shortcut or "A",
            residual=spec.residual,
            zero_init_residual=zero_init_residual,
        )
    block, layers = IMAGENET_STAGES[spec.depth]
    if stride == "v1" and block is BasicBlock:
        raise ValueError(
            f"{arch} has basic blocks (no 1x1 convolution): stride placement 'v1' does not apply"
        )
    return ResNet(
        block,
        layers,
        num_classes,
        shortcut=shortcut or "B",
        residual=spec.residual,
        stride_in_1x1=stride == "v1",
        zero_init_residual=zero_init_residual,
    )
