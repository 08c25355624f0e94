"""Log a trained ResNet as an MLflow pyfunc model (weights + JSON spec + this package's code).

The model directory holds ``artifacts/weights.pt`` (a plain state dict, readable with
``weights_only=True``), ``artifacts/model_config.json`` (:class:`ModelSpec`: architecture, options,
class names, preprocessing), ``pyfunc_model.py`` (models-from-code), ``code/resnet_platform/`` (this
package, so serving never installs it from an index), ``requirements.txt`` and ``constraints.txt``
(every dependency pinned to the logging environment's versions), a signature and an input example.
Everything goes through ``MlflowClient(tracking_uri)``: no active run, no global tracking URI.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from PIL import Image

from resnet_platform._compat import use_global_tracking_uri

from .inference import DEFAULT_K, INPUT_COLUMN, ModelSpec, Preprocess, normalize_state_dict
from .params import MAX_TAG_VALUE_LENGTH, redact, to_str
from .requirements import pinned_closure, pinned_requirements
from .runs import client_for, resolve_tracking_uri

log = logging.getLogger(__name__)

# Models from code: this file is copied into the model and defines it (never imported here).
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
# This package, copied into the model's code/ folder (MLflow code_paths): the serving side imports it
# from there and never installs a "resnet-platform" from a package index.
PACKAGE_DIR = Path(__file__).resolve().parents[1]

__all__ = ["LoggedModelInfo", "ModelSpec", "example_image_b64", "log_resnet_model"]


@dataclass
class LoggedModelInfo:
    model_uri: str  # "models:/m-..." (the logged model)
    model_id: str
    run_id: str
    registered_name: str | None = None
    version: str | None = None

    @property
    def registered_uri(self) -> str | None:
        """``models:/NAME/VERSION`` when registered."""
        return f"models:/{self.registered_name}/{self.version}" if self.version else None


def example_image_b64(size: int, fmt: str = "JPEG") -> str:
    """A small synthetic RGB image (a smooth gradient), base64-encoded: the model's input example."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    arr = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1
    )
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_resnet_model(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec, mlflow_model=None
) -> None:
    """Write the pyfunc model directory at ``path`` (which must not exist)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        config = Path(tmp) / "model_config.json"
        state = normalize_state_dict(state_dict)
        spec.build().load_state_dict(state)  # fail here, not at load time, if spec and weights disagree
        torch.save(state, weights)
        config.write_text(json.dumps(spec.to_dict(), indent=2))
        example = pd.DataFrame({INPUT_COLUMN: [example_image_b64(spec.resize_size)]})
        # The output example only feeds signature inference: build it without running the network.
        labels = spec.labels[: min(DEFAULT_K, spec.num_classes)]
        output = pd.DataFrame(
            {
                "top_indices": [list(range(len(labels)))],
                "top_classes": [labels],
                "top_probabilities": [[1.0 / spec.num_classes] * len(labels)],
            }
        )
        signature = infer_signature(example, output, params={"k": DEFAULT_K})
        Preprocess.from_spec(spec)  # validate the preprocessing spec
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pinned_closure()) + "\n")
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={"weights": str(weights), "model_config": str(config)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature,
            input_example=example,
            pip_requirements=[*pinned_requirements(), f"-c {constraints}"],
            mlflow_model=mlflow_model,
        )
    pin_build_dependencies(path / "python_env.yaml")


def pin_build_dependencies(python_env: Path) -> None:
    """Drop the unpinned build tools MLflow lists when they are not installed here (``wheel``):
    a virtualenv for the model would fetch whatever version the index serves today. pip and
    setuptools (pinned) stay; neither pip nor setuptools needs ``wheel`` to build since 2024."""
    env = yaml.safe_load(python_env.read_text())
    env["build_dependencies"] = [d for d in env.get("build_dependencies") or [] if "==" in d]
    python_env.write_text(yaml.safe_dump(env, sort_keys=False))


def log_resnet_model(
    tracking_uri: str | None,
    run_id: str,
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    *,
    registered_name: str | None = None,
    metrics: Mapping[str, float] | None = None,
    name: str = "model",
    step: int = 0,
) -> LoggedModelInfo:
    """Log the network as an MLflow model of ``run_id``; with ``registered_name``, register a new version.

    ``state_dict`` may come from a DDP or compiled module (prefixes are stripped). ``metrics`` (e.g.
    ``{"val_top1_error": 0.24}``) are stored as tags on the logged model and the model version, where
    :func:`~resnet_platform.tracking.registry.promote` reads them for the "only if better" rule.
    """
    client = client_for(tracking_uri)
    run = client.get_run(run_id)
    metric_tags = {k: to_str(float(v)) for k, v in (metrics or {}).items()}
    tags = {"arch": spec.arch, "num_classes": str(spec.num_classes), **metric_tags}
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags=tags,
        params={
            k: to_str(v, MAX_TAG_VALUE_LENGTH) for k, v in redact({"arch": spec.arch, **spec.options}).items()
        },
    )
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
        mlflow_model = Model(
            artifact_path=model.artifact_location,
            model_uuid=model.model_id,
            run_id=run_id,
            model_id=model.model_id,
        )
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model"
            save_resnet_model(local, state_dict, spec, mlflow_model=mlflow_model)
            client.log_model_artifacts(model.model_id, str(local))
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except Exception:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    info = LoggedModelInfo(f"models:/{model.model_id}", model.model_id, run_id)
    log.info("logged %s to run %s as %s", spec.arch, run_id, info.model_uri)
    if registered_name:
        try:
            client.create_registered_model(registered_name)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # MLflow 3.17's registry looks the "models:/m-..." source up through the process-wide
        # tracking URI, not this client's: point it at this store for the call only.
        with use_global_tracking_uri(resolve_tracking_uri(tracking_uri)):
            mv = client.create_model_version(
                registered_name, source=info.model_uri, run_id=run_id, tags=tags, model_id=model.model_id
            )
        info.registered_name, info.version = registered_name, str(mv.version)
        log.info("registered %s version %s", registered_name, mv.version)
    return info
