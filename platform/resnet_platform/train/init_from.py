"""``--init-from SOURCE``: start a run from trained weights instead of He initialization.

SOURCE is a state-dict file (torchvision's own format loads as is: the platform's layout follows
torchvision's names), ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``, ``runs:/RUN_ID[/MODEL]`` or a
checkpoint folder written by a training run (path or ``s3://``). Nothing is downloaded from the
internet: the user's own file or the platform's own registry.

The driver (:func:`prepare`) checks the source before any worker starts: it exists, it is the same
architecture (one line naming the first mismatch, never a list of missing keys), ``--freeze`` names
parts the network has; and it pins the source (an alias to its version, a path made absolute) so every
worker loads the same weights. Each worker (:func:`apply`) loads the pinned weights into the model it
just built, before DDP wraps it. Only weights come over: the optimizer, the schedule and the epoch
counter start fresh, as a new run. When the class count differs, the classifier (``fc``) keeps its
fresh initialization: the head is replaced.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from resnet_platform import storage
from resnet_platform.models import build_model, list_archs
from resnet_platform.models.freeze import HEAD, freeze, parse_freeze, parts
from resnet_platform.tracking.inference import normalize_state_dict
from resnet_platform.tracking.origin import ModelSourceError, WeightsOrigin, is_mlflow_uri

from .checkpoint import MODEL_CONFIG_FILE, STATE_FILE
from .config import TrainConfig

log = logging.getLogger(__name__)

# Keys torch and common training scripts wrap a state dict in.
_CONTAINERS = ("state_dict", "model", "model_state_dict")


class InitFromError(ModelSourceError):
    """``--init-from`` / ``--freeze`` the run cannot use: one line, before any worker starts."""


@dataclass
class SourceWeights:
    """Weights read from a source, with what the source says about its network (None: unknown)."""

    state: dict[str, torch.Tensor]
    origin: WeightsOrigin
    arch: str | None = None


def _head_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.split(".")[0] == HEAD]


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file, read with ``weights_only=True`` (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InitFromError(f"{what}: not a readable state dict ({type(e).__name__})") from None
    for key in _CONTAINERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitFromError(f"{what}: holds no state dict of tensors")
    return normalize_state_dict(state)


def _from_mlflow(uri: str, tracking_uri: str | None) -> SourceWeights:
    import json

    from resnet_platform.tracking.lineage import fetch_model_files, pin_model_uri

    origin = pin_model_uri(uri, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        weights, config = fetch_model_files(origin.uri, tmp, tracking_uri)
        state = read_state_dict(weights, uri)
        arch = json.loads(config.read_text()).get("arch")
    return SourceWeights(state, origin, arch)


def _from_storage(uri: str) -> SourceWeights:
    """A state-dict file or a checkpoint folder, local or on object storage."""
    import json

    import pyarrow.fs as pafs

    if "://" not in uri:
        uri = os.path.abspath(uri)
    try:
        fs, path = storage.resolve(uri)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as e:
        raise InitFromError(f"--init-from {uri}: cannot be read ({str(e).splitlines()[0]})") from None
    if info.type == pafs.FileType.NotFound:
        raise InitFromError(f"--init-from {uri}: no such file or checkpoint folder")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        if info.type == pafs.FileType.Directory:
            names = {Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(path))}
            if STATE_FILE not in names:
                raise InitFromError(f"--init-from {uri}: a folder without {STATE_FILE} is not a checkpoint")
            for name in (STATE_FILE, MODEL_CONFIG_FILE):
                if name in names:
                    pafs.copy_files(f"{path}/{name}", str(local / name), source_filesystem=fs)
            saved = torch.load(local / STATE_FILE, map_location="cpu", weights_only=True)
            state = normalize_state_dict(saved["model"])
            model_config = (
                json.loads((local / MODEL_CONFIG_FILE).read_text()) if MODEL_CONFIG_FILE in names else {}
            )
            run_id = json.loads(saved.get("config") or "{}").get("mlflow_run_id")
            return SourceWeights(
                state, WeightsOrigin(uri, run_id=run_id, checkpoint=uri), model_config.get("arch")
            )
        pafs.copy_files(path, str(local / "weights.pt"), source_filesystem=fs)
        state = read_state_dict(local / "weights.pt", f"--init-from {uri}")
    return SourceWeights(state, WeightsOrigin(uri, checkpoint=uri))


def load_source(uri: str, tracking_uri: str | None = None) -> SourceWeights:
    """Read the weights at ``uri`` (any SOURCE form) on this process."""
    if is_mlflow_uri(uri):
        try:
            return _from_mlflow(uri, tracking_uri)
        except InitFromError:
            raise
        except ModelSourceError as e:
            raise InitFromError(f"--init-from {e}") from None
    return _from_storage(uri)


def _meta_model(arch: str, num_classes: int | None, options: Mapping) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch, num_classes, **options)


def guess_arch(state: Mapping[str, torch.Tensor], options: Mapping | None = None) -> str | None:
    """The platform network whose backbone has exactly these keys and shapes (None: none does)."""
    for arch in list_archs():
        try:
            target = _meta_model(arch, None, options or {}).state_dict()
        except ValueError:
            continue
        if mismatches(state, target) == []:
            return arch
    return None


def mismatches(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> list[str]:
    """How the backbone of ``source`` differs from ``target`` (the classifier's output count may
    differ: it is replaced; its input width may not)."""
    out = []
    for key, t in target.items():
        if key not in source:
            if key.split(".")[0] != HEAD:
                out.append(f"{key} missing")
        elif key == f"{HEAD}.weight" and source[key].ndim == 2 and source[key].shape[1] != t.shape[1]:
            out.append(f"{key} has {source[key].shape[1]} inputs, not {t.shape[1]}")
        elif key.split(".")[0] != HEAD and tuple(source[key].shape) != tuple(t.shape):
            out.append(f"{key} is {tuple(source[key].shape)}, not {tuple(t.shape)}")
    out += [f"unexpected {key}" for key in source if key not in target]
    return out


def fit_to(source: SourceWeights, model: nn.Module, arch: str, options: Mapping) -> dict[str, torch.Tensor]:
    """The source's weights as a state dict for ``model``; the classifier left out when its class
    count differs (replaced). Raises :class:`InitFromError` in one line on another architecture."""
    target = model.state_dict()
    wrong = mismatches(source.state, target)
    if wrong:
        actual = source.arch if source.arch and source.arch != arch else guess_arch(source.state, options)
        what = f"holds a {actual} state dict" if actual else "is not a state dict of this network"
        more = f" and {len(wrong) - 1} more differences" if len(wrong) > 1 else ""
        raise InitFromError(f"--init-from {source.origin.uri} {what}, not {arch}: {wrong[0]}{more}")
    state = dict(source.state)
    head = _head_keys(target)
    if any(tuple(state[k].shape) != tuple(target[k].shape) for k in head if k in state):
        for k in _head_keys(state):
            del state[k]
    return state


def head_replaced(source: SourceWeights, model: nn.Module) -> bool:
    target = model.state_dict()
    return any(k not in source.state or source.state[k].shape != target[k].shape for k in _head_keys(target))


def prepare(config: TrainConfig) -> tuple[TrainConfig, WeightsOrigin | None]:
    """On the driver, before any worker starts: check ``--init-from`` and ``--freeze`` against the
    network the run builds; returns the config with the source pinned, and the source's origin."""
    if config.init_from is None:
        if config.freeze:
            raise InitFromError("--freeze needs --init-from: frozen random weights would never learn")
        return config, None
    from .checkpoint import model_config_of  # the worker's own model options

    options = model_config_of(config)["options"]
    model = _meta_model(config.arch, config.num_classes, options)
    try:
        parse_freeze(config.freeze, parts(model))
    except ValueError as e:
        raise InitFromError(str(e)) from None
    tracking_uri = config.tracking_uri
    if is_mlflow_uri(config.init_from):
        from resnet_platform.tracking.runs import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)  # the workers resolve the source in the same store
    source = load_source(config.init_from, tracking_uri)
    fit_to(source, model, config.arch, options)
    if head_replaced(source, model):
        log.info("--init-from %s: classifier replaced (%d classes)", source.origin.uri, config.num_classes)
    return replace(config, init_from=source.origin.uri, tracking_uri=tracking_uri), source.origin


def apply(model: nn.Module, config: TrainConfig) -> nn.Module:
    """In each worker, on the freshly built model (before DDP): load the pinned ``--init-from``
    weights and freeze the ``--freeze`` parts. A restart then loads its checkpoint over them."""
    if config.init_from is None:
        return model
    source = load_source(config.init_from, config.tracking_uri)
    model.load_state_dict(fit_to(source, model, config.arch, {}), strict=False)  # checked on the driver
    if config.freeze:
        freeze(model, parse_freeze(config.freeze, parts(model)))
    return model


__all__ = ["InitFromError", "SourceWeights", "apply", "fit_to", "guess_arch", "load_source", "prepare"]
