"""Exponential moving average of the weights, as torchvision's reference keeps it (``--model-ema``).

Every ``ema_steps`` optimizer steps: ``ema = decay * ema + (1 - decay) * weights``, over the
parameters and the floating-point buffers (BatchNorm's running statistics; torchvision's
``AveragedModel(use_buffers=True)``); integer buffers are copied. The first update copies the
weights, and during the lr warmup the average is reset after every update, so the first update after
the warmup copies the weights again (the reference's ``n_averaged.fill_(0)``).

``decay`` is the reference's adjusted decay: ``--ema-decay`` is given for its setup and rescaled by
``batch x ema_steps / epochs`` (``1 - decay`` is the weight of one update, and there are
``dataset / (batch x ema_steps)`` updates per epoch), so one setting means the same averaging horizon
in epochs for any batch, period and run length. 0.99998 at batch 1024, every 32 steps, 600 epochs:
each update weighs ``2e-5 x 1024 x 32 / 600 = 0.00109``.

The EMA lives on every worker (DDP keeps the weights identical, so the averages are too), is
validated beside the raw weights each epoch, and is checkpointed as a plain state dict beside them
(``model_ema``), loadable into ``build_model`` like the raw one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def adjusted_decay(decay: float, batch_size: int, ema_steps: int, epochs: int) -> float:
    """torchvision's adjustment: ``1 - min(1, (1 - decay) x batch x ema_steps / epochs)``."""
    alpha = min(1.0, (1.0 - decay) * batch_size * ema_steps / epochs)
    return 1.0 - alpha


class ModelEma:
    """A frozen copy of a model, averaged in place with :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self.fresh = True  # the next update copies instead of averaging

    def _pairs(self, model: nn.Module):
        ours = list(self.module.parameters()) + list(self.module.buffers())
        theirs = list(model.parameters()) + list(model.buffers())
        if len(ours) != len(theirs):
            raise ValueError("EMA and model do not have the same tensors")
        return zip(ours, theirs, strict=True)

    @torch.no_grad()
    def update(self, model: nn.Module, *, warmup: bool = False) -> None:
        """Average ``model``'s current weights in (a fresh average copies them); ``warmup``: start
        afresh at the next update."""
        floats_ema, floats_model = [], []
        for e, m in self._pairs(model):
            m = m.detach()
            if self.fresh or not e.dtype.is_floating_point:
                e.copy_(m)
            else:
                floats_ema.append(e)
                floats_model.append(m.to(e.dtype))
        if floats_ema:
            # e + (1 - decay) * (m - e) == decay * e + (1 - decay) * m
            torch._foreach_lerp_(floats_ema, floats_model, 1.0 - self.decay)
        self.updates += 1
        self.fresh = warmup

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates, "fresh": self.fresh}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        self.fresh = bool(state["fresh"])
