"""Everything a run needs to continue exactly: model, optimizer, schedule, scaler, position, RNGs.

Written by rank 0 into a directory that ``ray.train.report`` uploads to the run's storage.
Loaded with ``weights_only=True``: RNG states are stored as tensors and plain lists so a
checkpoint never needs to unpickle arbitrary objects. The stored config is redacted
(:func:`~resnet_platform.tracking.params.redact`): a tracking URI with a password or a token, or a
signed URL, is masked before it is written.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet_platform.tracking.params import redact

STATE_FILE = "state.pt"
MODEL_CONFIG_FILE = "model_config.json"
STEP_CHECKPOINT_PREFIX = "checkpoint_step"


def step_checkpoint_name(epoch_index: int, step: int) -> str:
    """A ``--checkpoint-every-steps`` checkpoint's directory name, shaped like a preemption's
    (``preemption.preempt_checkpoint_name``): ``epoch_index`` is the 0-based epoch in progress,
    ``step`` the global optimizer step."""
    return f"{STEP_CHECKPOINT_PREFIX}_e{epoch_index + 1:04d}_s{step:08d}"


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


@dataclass
class TrainingState:
    """Position in the run; ``epoch`` is the number of epochs completed."""

    epoch: int = 0
    step: int = 0
    best_val_top1_error: float = float("inf")
    history: list[dict[str, float]] = field(default_factory=list)


def model_config_of(config) -> dict[str, Any]:
    """What ``build_model`` needs to rebuild the network (stored with every checkpoint)."""
    options = {"stride": config.stride, "zero_init_residual": config.zero_init_residual}
    if config.shortcut is not None:
        options["shortcut"] = config.shortcut
    return {"arch": config.arch, "num_classes": config.num_classes, "options": options}


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule,
    scaler: torch.amp.GradScaler | None,
    state: TrainingState,
    config: dict[str, Any],
    model_config: dict[str, Any],
    position: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """``position``: where in the epoch in progress a mid-epoch (preemption) checkpoint was taken
    (``preemption.EpochPosition``); None at an epoch boundary. ``extra``: more entries of
    ``state.pt`` (the techniques' state, e.g. ``model_ema``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": state.epoch,
            "step": state.step,
            "best_val_top1_error": state.best_val_top1_error,
            "history": state.history,
            "position": position,
            "rng": capture_rng(),
            # Checkpoints outlive runs and travel (S3, other clusters): credentials stay out.
            "config": json.dumps(redact(config), default=str),
            **(extra or {}),
        },
        directory / STATE_FILE,
    )
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(model_config, indent=2))
    return directory


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)


def load_model_config(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / MODEL_CONFIG_FILE).read_text())


def persist_with_retries(checkpoint, checkpoint_dir_name: str, on_attempt=None):
    """Ray Train's own checkpoint upload, tried again with backoff when it fails.

    ``ray.train.report(checkpoint_upload_fn=...)`` calls this instead of
    ``StorageContext.persist_current_checkpoint`` (Ray 2.60, ``v2/_internal/execution/context.py``),
    which copies once through the pyarrow filesystem and fails the attempt on the first error. The
    S3 SDK retries single requests; this retries the whole copy (files are overwritten, so a
    half-copied directory is completed), so a transient outage costs seconds, not the epoch.
    ``on_attempt()`` is called before each try (the uploader counts them).
    """
    from resnet_platform import storage
    from resnet_platform._compat import checkpoint_target, persist_checkpoint

    def attempt():
        if on_attempt is not None:
            on_attempt()
        persisted = persist_checkpoint(checkpoint, checkpoint_dir_name)
        verify_copy(checkpoint, persisted)
        return persisted

    target = checkpoint_target(checkpoint_dir_name)
    return storage.with_retries(attempt, f"checkpoint upload to {target}")


class IncompleteCopyError(OSError):
    """A checkpoint copy that returned without error but left files missing or short in storage."""


def verify_copy(source, persisted) -> None:
    """Every file of ``source`` (a local checkpoint) is in ``persisted`` with the same size.

    Needed because the copy can fail silently: pyarrow 25's S3 output stream uploads in the
    background, and when a part upload fails, closing the stream inside ``pyarrow.fs.copy_files``
    (what Ray Train's ``persist_current_checkpoint`` calls) only logs "Error ignored when destroying
    file" and the copy returns success with the object never written (reproduced with dropped
    connections on loopback: ``tests/test_spot_elastic.py``). Raised as an ``OSError`` so the whole
    copy is tried again."""
    import pyarrow.fs as pafs

    def sizes(fs, root: str) -> dict[str, int]:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        root = root.rstrip("/") + "/"
        return {i.path[len(root) :]: i.size for i in infos if i.type == pafs.FileType.File}

    want = sizes(source.filesystem, source.path)
    have = sizes(persisted.filesystem, persisted.path)
    wrong = sorted(name for name, size in want.items() if have.get(name) != size)
    if wrong:
        raise IncompleteCopyError(
            f"{persisted.path}: {len(wrong)} of {len(want)} files missing or short after the copy "
            f"({', '.join(wrong[:5])})"
        )
