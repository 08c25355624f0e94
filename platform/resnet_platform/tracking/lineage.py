"""Where a model's weights came from: fetching a parent model from the registry or a run, and
recording the lineage on the child's MLflow run and registered version.

A fine-tuned model names its parent in three places, so each reader finds it where it looks: the
training run's tags (``init_from``, ``parent_model_name``/``parent_model_version``,
``parent_run_id``, ``parent_checkpoint``), the registered version's tags (the same keys), and the
version's description (one sentence for the registry UI).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.models import Model

from .origin import ModelSourceError, WeightsOrigin, is_mlflow_uri
from .registry import alias_version, download_model
from .runs import client_for, resolve_tracking_uri

log = logging.getLogger(__name__)


def pin_model_uri(uri: str, tracking_uri: str | None = None) -> WeightsOrigin:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``; ``runs:/RUN[/MODEL]`` -> the run's logged
    model (``models:/m-...``), each checked to exist. Raises :class:`ModelSourceError` in one line."""
    client = client_for(tracking_uri)
    try:
        if uri.startswith("runs:/"):
            run_id, _, name = uri[len("runs:/") :].strip("/").partition("/")
            run = client.get_run(run_id)
            models = [
                m
                for m in client.search_logged_models(
                    [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
                )
                if m.name == (name or "model")
            ]
            if not models:
                raise ModelSourceError(f"{uri}: run {run_id} logged no model named {name or 'model'!r}")
            latest = max(models, key=lambda m: m.creation_timestamp)
            return WeightsOrigin(f"models:/{latest.model_id}", run_id=run_id)
        ref = uri[len("models:/") :].strip("/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = alias_version(name, alias, tracking_uri)
            if version is None:
                raise ModelSourceError(f"{uri}: no version of {name!r} holds the alias @{alias}")
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
        else:
            model = client.get_logged_model(ref)
            return WeightsOrigin(uri, run_id=model.source_run_id)
        mv = client.get_model_version(name, version)
        return WeightsOrigin(f"models:/{name}/{mv.version}", name, str(mv.version), mv.run_id or None)
    except MlflowException as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelSourceError(f"{uri}: {first}") from None


def fetch_model_files(uri: str, dst: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """Download the platform model at ``uri`` (pinned, or a model directory): (weights.pt,
    model_config.json)."""
    local = download_model(uri, dst, resolve_tracking_uri(tracking_uri))
    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    artifacts = flavor.get("artifacts") or {}
    if "weights" not in artifacts or "model_config" not in artifacts:
        raise ModelSourceError(f"{uri} is not a resnet_platform model (no weights/model_config artifacts)")
    return local / artifacts["weights"]["path"], local / artifacts["model_config"]["path"]


def record_run_origin(tracking_uri: str | None, run_id: str, origin: WeightsOrigin) -> None:
    """Tag the fine-tuning run with where its initial weights came from."""
    client = client_for(tracking_uri)
    for key, value in origin.tags().items():
        client.set_tag(run_id, key, value)


def record_version_parent(tracking_uri: str | None, name: str, version: str, origin: WeightsOrigin) -> None:
    """Tag a registered fine-tuned version with its parent, and say so in its description."""
    client = client_for(tracking_uri)
    for key, value in origin.tags().items():
        client.set_model_version_tag(name, str(version), key, value)
    client.update_model_version(name, str(version), description=origin.describe())
    log.info("%s version %s: %s", name, version, origin.describe())


__all__ = [
    "ModelSourceError",
    "WeightsOrigin",
    "fetch_model_files",
    "is_mlflow_uri",
    "pin_model_uri",
    "record_run_origin",
    "record_version_parent",
]
