"""The paper's ImageNet networks (Table 1): residual and plain, basic and bottleneck blocks.

Layout and parameter names follow torchvision's ``models/resnet.py`` exactly for option-B
residual nets, so ``load_state_dict(torchvision.models.resnet50().state_dict())`` is strict.
The paper's variants (shortcut options A/B/C, plain nets, stride placement v1/v1.5) are
switches on the same block classes rather than separate code paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUT_OPTIONS = ("A", "B", "C")
STRIDE_PLACEMENTS = ("v1.5", "v1")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-subsampling and zero channels appended (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(in_planes: int, out_planes: int, stride: int, option: str | None) -> nn.Module | None:
    """The shortcut of one block; ``None`` means a plain block (no shortcut) or a bare identity.

    The caller distinguishes the two through ``residual``; here ``None`` is returned whenever
    the block's input can be added unchanged.
    """
    grows = stride != 1 or in_planes != out_planes
    if option == "C" or (option == "B" and grows):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    if option == "A" and grows:
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return None


class _Block(nn.Module):
    """What both blocks do with their branch (``branch_output``): add the shortcut (the identity, or
    ``downsample`` where the shape changes; nothing in a plain net's block), then ReLU."""

    residual: bool
    downsample: nn.Module | None
    relu: nn.ReLU

    def branch_output(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch_output(x)
        if self.residual:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.relu(out)


class BasicBlock(_Block):
    """Two 3x3 convolutions (Fig. 5 left); used by the 18/34-layer and the CIFAR nets."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        shortcut: str | None = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,  # no 1x1 here: accepted so every block takes the same arguments
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(inplanes, planes, stride, shortcut) if residual else None
        self.stride = stride

    def branch_output(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (Fig. 5 right); used by the 50/101/152-layer nets.

    ``stride_in_1x1`` selects the paper's original placement (v1); the default puts the stride
    in the 3x3 convolution as torchvision does (v1.5), slightly more accurate and costlier.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        shortcut: str | None = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        width = planes
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            make_shortcut(inplanes, planes * self.expansion, stride, shortcut) if residual else None
        )
        self.stride = stride

    def branch_output(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


Block = type[BasicBlock] | type[Bottleneck]


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He initialization (fan_out, as torchvision), BN to identity; optionally zero the last BN
    of each residual branch so every block starts as an identity (Goyal et al.)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock | Bottleneck) and m.residual:
                nn.init.constant_(m.last_bn().weight, 0)


class ResNet(nn.Module):
    """ImageNet network of Table 1: 7x7 stem, four stages, global pool, fc."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        shortcut: str | None = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self._block_args = dict(shortcut=shortcut, residual=residual, stride_in_1x1=stride_in_1x1)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [block(self.inplanes, planes, stride, **self._block_args)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self._block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(nn.Module):
    """CIFAR-10 network of section 4.2: 3x3 stem, three stages of n blocks (16/32/64 filters),
    global pool, fc: 6n+2 weighted layers."""

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        shortcut: str | None = "A",
        residual: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 16
        self._block_args = dict(shortcut=shortcut, residual=residual)
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride, **self._block_args)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, **self._block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
