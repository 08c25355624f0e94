"""Progress inside an epoch, from rank 0, where the user looks for it (an ImageNet epoch is minutes
to hours; the per-epoch line comes only at its end).

- On a terminal (``console.on_terminal``: the job's stderr, passed to the Ray workers), a bar with
  img/s and ETA. Ray's ``tqdm_ray`` draws it on the driver, so it does not tangle with the workers'
  log lines.
- Otherwise (a ``ray job submit`` log, CI), a line through the platform logger every
  ``--progress-every-s`` seconds (60 by default: a short test run prints none) and, with
  ``--progress-every-steps N``, every N steps, as torchvision's and timm's train scripts print.

Throughput is rank 0's images times the world size: every worker reads an equal share of the epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from resnet_platform.console import on_terminal

log = logging.getLogger(__name__)


def _clock_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochProgress:
    """Rank 0's view of one epoch in progress. ``update`` after each micro-batch; ``close`` at its end.

    ``start_step``: the epoch's first step of this pass (a mid-epoch resume starts further in).
    ``terminal=None`` asks :func:`~resnet_platform.console.on_terminal`."""

    def __init__(
        self,
        config,
        epoch: int,
        world: int,
        start_step: int = 0,
        *,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epoch, self.epochs, self.world = epoch, config.epochs, world
        self.every_s, self.every_steps = config.progress_every_s, config.progress_every_steps
        rows = world * config.micro_batch_size
        self.total_steps = math.ceil(config.train_images / rows) if config.train_images else None
        self.start_step, self.images = start_step, 0
        self.clock = clock
        self.started = self.last_line = clock()
        self.bar = None
        if on_terminal() if terminal is None else terminal:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(
                desc=f"epoch {epoch + 1}/{self.epochs}",
                total=config.train_images,
                unit="img",
            )
            if config.train_images and start_step:
                self.bar.update(min(start_step * rows, config.train_images))

    def update(self, step_in_epoch: int, images: int, loss=None) -> str | None:
        """``images``: rank 0's micro-batch. Returns the line logged, if one was due (``loss`` is read
        from the device only then)."""
        self.images += images * self.world
        if self.bar is not None:
            self.bar.update(images * self.world)
            return None
        now, done = self.clock(), step_in_epoch + 1
        due_time = self.every_s > 0 and now - self.last_line >= self.every_s
        due_step = self.every_steps > 0 and done % self.every_steps == 0
        if not (due_time or due_step):
            return None
        self.last_line = now
        line = self.line(done, now, None if loss is None else float(loss))
        log.info(line)
        return line

    def line(self, done: int, now: float, loss: float | None) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.images / elapsed
        parts = [f"epoch {self.epoch + 1}/{self.epochs}"]
        if self.total_steps:
            left = max(self.total_steps - done, 0) * (elapsed / max(done - self.start_step, 1))
            parts += [f"step {done}/{self.total_steps} ({100 * done / self.total_steps:.0f}%)"]
            parts += [f"{rate:.0f} img/s", f"ETA {_clock_text(left)}"]
        else:
            parts += [f"step {done}", f"{rate:.0f} img/s"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        return "  ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
