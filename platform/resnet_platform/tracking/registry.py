"""Model registry: aliases, promotion with the "only if better" rule, and pulling a model back.

``load_model`` downloads the model directory and rebuilds the network from its JSON spec with
``weights_only=True``: it never executes or unpickles code from the store.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from resnet_platform import _compat
from resnet_platform.errors import UserError, one_line

from .inference import LoadedModel, ModelSpec, load_from_files
from .runs import client_for, resolve_tracking_uri

log = logging.getLogger(__name__)

DEFAULT_METRIC = "val_top1_error"


def set_alias(name: str, alias: str, version: str | int, tracking_uri: str | None = None) -> None:
    """Point ``models:/NAME@ALIAS`` at ``version``."""
    client_for(tracking_uri).set_registered_model_alias(name, alias, str(version))
    log.info("%s@%s -> version %s", name, alias, version)


def version_metric(
    name: str, version: str | int, metric: str = DEFAULT_METRIC, tracking_uri: str | None = None
) -> float | None:
    """The version's ``metric``: its tag (set at registration), else the source run's metric, else None."""
    client = client_for(tracking_uri)
    mv = client.get_model_version(name, str(version))
    value = (mv.tags or {}).get(metric)
    if value is None and mv.run_id:
        try:
            value = client.get_run(mv.run_id).data.metrics.get(metric)
        except MlflowException:
            value = None
    try:
        value = float(value) if value is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def alias_version(name: str, alias: str, tracking_uri: str | None = None) -> str | None:
    """The version an alias points at, or None when the alias is unset."""
    try:
        return str(client_for(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def decide_promotion(
    name: str,
    version: str | int,
    alias: str = "champion",
    *,
    only_if_better: bool = False,
    metric: str = DEFAULT_METRIC,
    tracking_uri: str | None = None,
) -> tuple[bool, str]:
    """Whether ``promote`` would move the alias, and why (lower ``metric`` is better)."""
    version = str(version)
    try:
        client_for(tracking_uri).get_model_version(name, version)
    except MlflowException as err:
        raise ModelNotFoundError(f"{name} version {version}: {one_line(err)}") from err
    current = alias_version(name, alias, tracking_uri)
    if current == version:
        return False, f"{name} version {version} already holds @{alias}"
    if not only_if_better:
        return True, f"@{alias} set to version {version} (previously {current or 'unset'})"
    if current is None:
        return True, f"@{alias} was unset: version {version} takes it"
    new = version_metric(name, version, metric, tracking_uri)
    if new is None:
        return False, f"version {version} has no {metric}: cannot show it beats version {current}"
    old = version_metric(name, current, metric, tracking_uri)
    if old is None:
        return False, f"current @{alias} (version {current}) has no {metric}: not replacing it automatically"
    if new < old:
        return True, f"version {version} {metric}={new:.6g} beats version {current} {metric}={old:.6g}"
    return False, f"version {version} {metric}={new:.6g} does not beat version {current} {metric}={old:.6g}"


def promote(
    name: str,
    version: str | int,
    alias: str = "champion",
    *,
    only_if_better: bool = False,
    metric: str = DEFAULT_METRIC,
    tracking_uri: str | None = None,
) -> bool:
    """Set ``alias`` to ``version``; with ``only_if_better``, only if its ``metric`` is lower than the
    current holder's (or nobody holds the alias). Returns whether the alias moved; the reason is logged."""
    ok, reason = decide_promotion(
        name, version, alias, only_if_better=only_if_better, metric=metric, tracking_uri=tracking_uri
    )
    if ok:
        set_alias(name, alias, version, tracking_uri)
        log.info("promoted: %s", reason)
    else:
        log.info("not promoted: %s", reason)
    return ok


class ModelNotFoundError(UserError, LookupError):
    """A ``models:/`` or ``runs:/`` URI the registry cannot resolve: no such model, version, alias or
    run, or a registry that does not answer."""


def resolve_model_artifact_uri(model_uri: str, tracking_uri: str | None = None) -> str:
    """The storage URI of a model's directory (``mlflow-artifacts:/...``, ``s3://...``, a path).

    Raises :class:`ModelNotFoundError` naming the URI when the registry has no such model."""
    try:
        return _compat.model_artifact_uri(client_for(tracking_uri), model_uri)
    except MlflowException as err:
        raise ModelNotFoundError(f"{model_uri}: {one_line(err)}") from err


def download_model(model_uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download a model directory (``models:/NAME@alias``, ``models:/NAME/3``, ``models:/m-...``,
    ``runs:/RUN/path``, a storage URI, or a local path) into ``dst``."""
    if Path(model_uri).is_dir():
        return Path(model_uri)
    uri = resolve_tracking_uri(tracking_uri)
    artifact_uri = resolve_model_artifact_uri(model_uri, uri)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=uri, registry_uri=uri
        )
    )


def load_model(model_uri: str, tracking_uri: str | None = None, device: str = "cpu") -> LoadedModel:
    """The network (eval mode, on ``device``), its preprocessing and class names, from the store.

    ``LoadedModel.predict_topk(images, k=5)`` classifies PIL images, paths or image bytes.
    """
    with tempfile.TemporaryDirectory() as tmp:
        local = download_model(model_uri, tmp, tracking_uri)
        flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
        artifacts = flavor.get("artifacts") or {}
        if "weights" not in artifacts or "model_config" not in artifacts:
            raise ValueError(
                f"{model_uri} is not a resnet_platform model (no weights/model_config artifacts)"
            )
        return load_from_files(
            local / artifacts["weights"]["path"], local / artifacts["model_config"]["path"], device=device
        )


def pin_version(model_uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION`` (where the alias points now); others unchanged.

    A long job pins the version once, so every worker loads the same model even if the alias moves
    while it runs."""
    ref = model_uri[len("models:/") :].strip("/") if model_uri.startswith("models:/") else ""
    if "@" not in ref:
        return model_uri
    name, alias = ref.split("@", 1)
    version = alias_version(name, alias, tracking_uri)
    if version is None:
        raise ModelNotFoundError(f"{model_uri}: no version holds @{alias} in the registry")
    return f"models:/{name}/{version}"


def registered_version(model_uri: str) -> tuple[str, str] | None:
    """``(NAME, VERSION)`` of a pinned ``models:/NAME/VERSION`` URI, else None."""
    ref = model_uri[len("models:/") :].strip("/") if model_uri.startswith("models:/") else ""
    if "@" in ref or "/" not in ref:
        return None
    name, version = ref.rsplit("/", 1)
    return name, version


def load_spec(model_uri: str, tracking_uri: str | None = None) -> ModelSpec:
    """The model's :class:`ModelSpec` (classes, preprocessing) without downloading its weights."""
    uri = resolve_tracking_uri(tracking_uri)
    if Path(model_uri).is_dir():
        root = model_uri.rstrip("/")
    else:
        root = resolve_model_artifact_uri(model_uri, uri).rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:

        def fetch(rel: str) -> Path:
            if Path(root).is_dir():
                return Path(root) / rel
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{root}/{rel}", dst_path=tmp, tracking_uri=uri, registry_uri=uri
                )
            )

        flavor = Model.load(str(fetch("MLmodel"))).flavors.get("python_function", {})
        config = (flavor.get("artifacts") or {}).get("model_config")
        if not config:
            raise ValueError(f"{model_uri} is not a resnet_platform model (no model_config artifact)")
        return ModelSpec.from_dict(json.loads(fetch(config["path"]).read_text()))
