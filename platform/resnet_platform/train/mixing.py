"""Mixup and CutMix on the device, one draw per batch, as torchvision's reference applies them.

Each batch is mixed with itself rolled by one (``v2.MixUp``/``v2.CutMix``'s pairing); with both
enabled, one of the two is picked per batch with equal odds (the reference's ``RandomChoice``).

- Mixup (Zhang et al.): ``lam ~ Beta(a, a)``, ``x = lam * x + (1 - lam) * x_rolled``.
- CutMix (Yun et al.): ``lam ~ Beta(a, a)``; a box of about ``(1 - lam)`` of the image area, centred
  uniformly at random and clipped to the image, is pasted from the rolled batch; ``lam`` becomes the
  exact share of the pixels left unchanged.

Targets become class probabilities ``lam * onehot(y) + (1 - lam) * onehot(y_rolled)``;
``nn.CrossEntropyLoss(label_smoothing=...)`` smooths those as it smooths hard labels. The training
error counts a prediction against the label with the larger share (the reference's ``argmax``).

The draws (which op, ``lam``, the box) come from torch's global CPU generator, which every worker
seeds and every checkpoint stores: a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as tnf


@dataclass(frozen=True)
class MixDraw:
    """What one batch drew: the op, the share of the batch's own image, and CutMix's box."""

    op: str  # "mixup" or "cutmix"
    lam: float
    box: tuple[int, int, int, int] | None = None  # left, top, right, bottom (CutMix)


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha])).sample()[0])


def cutmix_box(lam: float, h: int, w: int) -> tuple[int, int, int, int]:
    """torchvision ``v2.CutMix``'s box: centre uniform over the image, sides ``sqrt(1 - lam)`` of the
    image's, clipped at the borders."""
    cx = int(torch.randint(w, (1,)))
    cy = int(torch.randint(h, (1,)))
    r = 0.5 * math.sqrt(1.0 - lam)
    rw, rh = int(r * w), int(r * h)
    return max(cx - rw, 0), max(cy - rh, 0), min(cx + rw, w), min(cy + rh, h)


class BatchMixer:
    """``(images, labels) -> (mixed images, soft targets, hard labels for the error count)``."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup and cutmix alphas must be >= 0")
        self.num_classes = num_classes
        self.ops = [(n, a) for n, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]
        self.last: MixDraw | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.ops)

    def draw(self, h: int, w: int) -> MixDraw:
        index = int(torch.randint(len(self.ops), (1,))) if len(self.ops) > 1 else 0
        op, alpha = self.ops[index]
        lam = _beta(alpha)
        if op == "mixup":
            return MixDraw("mixup", lam)
        box = cutmix_box(lam, h, w)
        left, top, right, bottom = box
        return MixDraw("cutmix", 1.0 - (right - left) * (bottom - top) / (h * w), box)

    def apply(self, x: torch.Tensor, y: torch.Tensor, draw: MixDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix NCHW ``x`` and int labels ``y`` as ``draw`` says: (images, class probabilities)."""
        rolled = x.roll(1, 0)
        if draw.op == "mixup":
            mixed = rolled.lerp(x, draw.lam)  # lam * x + (1 - lam) * rolled
        else:
            left, top, right, bottom = draw.box
            mixed = x.clone()
            mixed[..., top:bottom, left:right] = rolled[..., top:bottom, left:right]
        onehot = tnf.one_hot(y, self.num_classes).to(torch.float32)
        target = onehot.roll(1, 0).lerp(onehot, draw.lam)
        return mixed, target

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.enabled or x.shape[0] < 2:
            self.last = None
            return x, y, y
        draw = self.draw(x.shape[-2], x.shape[-1])
        self.last = draw
        mixed, target = self.apply(x, y, draw)
        hard = y if draw.lam >= 0.5 else y.roll(1, 0)
        return mixed, target, hard
