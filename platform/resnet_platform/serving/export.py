"""Export a registered model for use outside Python: ONNX (dynamic batch) and a ``torch.export``
program, with its preprocessing written beside them, checked for parity on every export.

::

    models:/NAME@ALIAS --pin--> models:/NAME/VERSION --download--> network + ModelSpec
       --> model.onnx (torch.onnx.export, dynamo, opset 18, batch dimension dynamic)
       --> model.pt2  (torch.export.export + save, batch dimension dynamic)
       --> preprocessing.json (input size, resize, crop, mean/std, layout, labels, versions)
       --> parity.json: ONNX Runtime and the exported program against eager torch on real
           validation images, top-1 identical and every logit within ATOL + RTOL x |logit|
       --> all four logged to the version's run under export/ (parity.json also when it fails)

Opset 18 is the dynamo exporter's own default in torch 2.14 and is fully supported by ONNX Runtime
1.20 and later (1.32 here). A parity failure raises :class:`ParityError` after its result is logged:
a broken export is never published as if it were good.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from resnet_platform.errors import UserError
from resnet_platform.settings import setting

from .onnx_runtime import (
    EXPORT_ARTIFACT_DIR,
    MODEL_FILE,
    PARITY_FILE,
    PREPROCESSING_FILE,
    PROGRAM_FILE,
    OnnxClassifier,
)

log = logging.getLogger(__name__)

OPSET = 18
ATOL = 1e-3  # logits: |onnx - torch| <= ATOL + RTOL * |torch|, every element
RTOL = 1e-3
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ExportError(UserError, ValueError):
    """A model the exporter refuses (unknown input size, no such alias, no images): one line."""


class ParityError(RuntimeError):
    """The exported model does not compute what the trained one does."""


@dataclass
class ExportConfig:
    """One declaration per flag of ``jobs/export_model.py``."""

    model: str = setting(
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID[/MODEL] or a model directory",
        group="model",
    )
    images: str = setting(
        help="validation images for the parity check: a prepared data set root (its --split) or a folder "
        "of JPEG/PNG files",
        group="parity",
    )
    split: str = setting("val", "prepared data sets: the split the parity images come from", group="parity")
    parity_images: int = setting(32, "images in the parity check", group="parity")
    atol: float = setting(ATOL, "logit tolerance: |onnx - torch| <= atol + rtol x |torch|", group="parity")
    rtol: float = setting(RTOL, "relative logit tolerance", group="parity")
    output: str | None = setting(None, "also keep the files in this local folder", group="output")
    log_to_mlflow: bool = setting(
        True, "log the files and the parity result to the version's run", group="output"
    )
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="model"
    )


@dataclass
class Parity:
    images: int
    top1_agreement: float  # fraction of images whose top-1 class is the same in both runtimes
    max_abs_diff: float
    max_allowed_excess: float  # max of |diff| - (atol + rtol |torch|): <= 0 passes
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.top1_agreement == 1.0 and self.max_allowed_excess <= 0.0

    def describe(self, what: str) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{what} parity {verdict} on {self.images} images: top-1 agreement {self.top1_agreement:.4f}, "
            f"max |logit diff| {self.max_abs_diff:.2e} (allowed {self.atol:g} + {self.rtol:g} x |logit|)"
        )


@dataclass
class ExportResult:
    model_uri: str  # pinned
    directory: Path  # where the files are (the --output folder, or a temporary one now removed)
    onnx: Parity
    program: Parity
    run_id: str | None = None  # the version's run the files went to

    def format(self) -> str:
        lines = [
            f"exported {self.model_uri} -> {self.directory}",
            self.onnx.describe("ONNX Runtime"),
            self.program.describe("torch.export"),
        ]
        if self.run_id:
            lines.append(f"logged to MLflow run {self.run_id} under {EXPORT_ARTIFACT_DIR}/")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the model


@dataclass
class SourceModel:
    uri: str  # pinned
    run_id: str | None
    weights: Path
    spec_dict: dict


def _fetch(config: ExportConfig, tmp: Path) -> SourceModel:
    """The model's files; refuses sources whose input size is unknown (state dicts, checkpoints, a spec
    without ``image_size``)."""
    from resnet_platform.tracking.lineage import fetch_model_files, is_mlflow_uri, pin_model_uri
    from resnet_platform.tracking.origin import ModelSourceError

    run_id = None
    uri = config.model
    try:
        if is_mlflow_uri(uri):
            origin = pin_model_uri(uri, config.tracking_uri)
            uri, run_id = origin.uri, origin.run_id
        elif not Path(uri).exists():
            raise ExportError(f"{uri}: no such model directory (or models:/NAME@ALIAS, models:/NAME/VERSION)")
        elif not (Path(uri) / "MLmodel").is_file():
            raise ExportError(
                f"{uri}: input size unknown (not a logged model: a state dict or checkpoint records no "
                "preprocessing); register the model first, then export models:/NAME/VERSION"
            )
        weights, config_path = fetch_model_files(uri, tmp, config.tracking_uri)
    except ModelSourceError as e:
        raise ExportError(str(e)) from None
    spec_dict = json.loads(config_path.read_text())
    missing = [k for k in ("image_size", "resize_size", "mean", "std") if k not in spec_dict]
    if missing:
        raise ExportError(f"{uri}: input size unknown (its model_config.json has no {', '.join(missing)})")
    return SourceModel(uri, run_id, weights, spec_dict)


def preprocessing_record(spec, model_uri: str) -> dict:
    """What a consumer outside Python must do to an image before the network, and what comes out."""
    import onnxruntime

    crop = (
        f"resize the shorter side to {spec.resize_size}, then center-crop {spec.image_size}x{spec.image_size}"
        if spec.eval_crop == "center"
        else f"resize the whole image to {spec.image_size}x{spec.image_size} (no crop)"
    )
    return {
        "model_uri": model_uri,
        "arch": spec.arch,
        "input": {
            "name": "input",
            "shape": ["batch", 3, spec.image_size, spec.image_size],
            "dtype": "float32",
        },
        "output": {"name": "logits", "shape": ["batch", spec.num_classes], "dtype": "float32"},
        "image_size": spec.image_size,
        "resize_size": spec.resize_size,
        "eval_crop": spec.eval_crop,
        "steps": [
            "decode to RGB (8 bits per channel)",
            crop + ", bilinear with antialiasing, on uint8",
            "to float32, channels first (NCHW)",
            "subtract mean x 255 and divide by std x 255, per channel (RGB order)",
        ],
        "mean": list(spec.mean),
        "std": list(spec.std),
        "labels": spec.labels,
        "opset": OPSET,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }


# ----------------------------------------------------------------------------------------- the images


def parity_images(config: ExportConfig, preprocess) -> np.ndarray:
    """Up to ``parity_images`` real images, as the model's uint8 NHWC crops."""
    import pyarrow.parquet as pq

    from resnet_platform.data.manifest import DatasetNotReadyError, PreparedData

    raw: list[bytes] = []
    try:
        data = PreparedData.open(config.images)  # resolved once, for the manifest and every shard
    except (DatasetNotReadyError, OSError, ValueError):
        data = None
    if data is not None:
        if config.split not in data.manifest.splits:
            raise ExportError(f"{config.images}: no split {config.split!r}")
        for path in data.shard_paths(config.split):
            raw += pq.read_table(path, filesystem=data.fs, columns=["image"]).column("image").to_pylist()
            if len(raw) >= config.parity_images:
                break
    else:
        folder = Path(config.images)
        if not folder.is_dir():
            raise ExportError(f"{config.images}: no such folder or prepared data set")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        raw = [p.read_bytes() for p in files[: config.parity_images]]
    if not raw:
        raise ExportError(f"{config.images}: no images for the parity check")
    return np.stack([preprocess.crop(b) for b in raw[: config.parity_images]])


# ------------------------------------------------------------------------------------------ export


def export_files(model: torch.nn.Module, image_size: int, directory: Path) -> None:
    """``model.onnx`` and ``model.pt2`` of ``model`` (eval mode), batch dimension dynamic."""
    directory.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(directory / PROGRAM_FILE))
        torch.onnx.export(
            model,
            (example,),
            str(directory / MODEL_FILE),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,  # one self-contained file (ResNet-152: 230 MB, far below protobuf's 2 GB)
            verbose=False,
        )


def compare(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> Parity:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    allowed = atol + rtol * np.abs(expected.astype(np.float64))
    agree = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return Parity(len(expected), agree, float(diff.max()), float((diff - allowed).max()), atol, rtol)


def check_parity(
    model: torch.nn.Module, directory: Path, crops: np.ndarray, atol: float = ATOL, rtol: float = RTOL
) -> tuple[Parity, Parity]:
    """(ONNX Runtime, torch.export program) against eager ``model`` on the same normalized inputs."""
    onnx = OnnxClassifier(directory)
    x = onnx.normalize(crops)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
        program = torch.export.load(str(directory / PROGRAM_FILE)).module()(torch.from_numpy(x)).numpy()
    return compare(expected, onnx.logits(x), atol, rtol), compare(expected, program, atol, rtol)


def _log(
    tracking_uri: str | None, run_id: str, directory: Path, onnx: Parity, program: Parity, files
) -> None:
    """The parity result as metrics, and ``files`` under ``export/``, in the version's run (loudly:
    an export that is not where batch prediction looks for it is a failed export)."""
    from resnet_platform.tracking.runs import client_for
    from resnet_platform.tracking.training_run import log_results

    metrics = {
        "export_onnx_top1_agreement": onnx.top1_agreement,
        "export_onnx_max_abs_logit_diff": onnx.max_abs_diff,
        "export_program_top1_agreement": program.top1_agreement,
        "export_program_max_abs_logit_diff": program.max_abs_diff,
        "export_parity_passed": float(onnx.passed and program.passed),
    }
    log_results(tracking_uri, run_id, metrics=metrics)
    client = client_for(tracking_uri)
    for name in files:
        client.log_artifact(run_id, str(directory / name), EXPORT_ARTIFACT_DIR)


def export_model(config: ExportConfig, *, perturb=None) -> ExportResult:
    """Export ``config.model``; raises :class:`ExportError` (bad input, before any work) or
    :class:`ParityError` (after logging the failed check). ``perturb(directory)``, for tests: alters
    the exported files before the check, as a broken exporter would."""
    from resnet_platform.tracking.inference import load_from_files
    from resnet_platform.tracking.runs import resolve_tracking_uri

    config.tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if config.parity_images < 1:
        raise ExportError("--parity-images must be at least 1")
    keep = Path(config.output) if config.output else None
    with tempfile.TemporaryDirectory() as tmp:
        source = _fetch(config, Path(tmp) / "source")
        spec_path = Path(tmp) / "model_config.json"
        spec_path.write_text(json.dumps(source.spec_dict))
        loaded = load_from_files(source.weights, spec_path)
        crops = parity_images(config, loaded.preprocess)  # bad images fail here, before the export
        directory = keep or Path(tmp) / "export"
        export_files(loaded.model, loaded.spec.image_size, directory)
        record = preprocessing_record(loaded.spec, source.uri)
        (directory / PREPROCESSING_FILE).write_text(json.dumps(record, indent=2))
        if perturb is not None:
            perturb(directory)
        onnx, program = check_parity(loaded.model, directory, crops, config.atol, config.rtol)
        parity = {
            "onnx": asdict(onnx),
            "torch_export": asdict(program),
            "passed": onnx.passed and program.passed,
        }
        (directory / PARITY_FILE).write_text(json.dumps(parity, indent=2))
        passed = onnx.passed and program.passed
        run_id = source.run_id if config.log_to_mlflow else None
        if run_id:
            files = (MODEL_FILE, PROGRAM_FILE, PREPROCESSING_FILE, PARITY_FILE) if passed else (PARITY_FILE,)
            _log(config.tracking_uri, run_id, directory, onnx, program, files)
        if not passed:
            failed = onnx if not onnx.passed else program
            raise ParityError(failed.describe("ONNX Runtime" if failed is onnx else "torch.export"))
    return ExportResult(source.uri, directory, onnx, program, run_id)


def locate_export(model_uri: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """The folder holding ``model.onnx`` and ``preprocessing.json`` of a pinned model: a local export
    folder as is, else the version's run's ``export/`` artifacts, downloaded into ``dst``.
    Raises :class:`ExportError` when the model has no export (or its export is another version's)."""
    import mlflow

    from resnet_platform.tracking.lineage import pin_model_uri

    if (Path(model_uri) / MODEL_FILE).is_file():
        return Path(model_uri)
    hint = f"no ONNX export of {model_uri}: run jobs/export_model.py --model {model_uri} first"
    run_id = pin_model_uri(model_uri, tracking_uri).run_id if model_uri.startswith("models:/") else None
    if not run_id:
        raise ExportError(hint)
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/{EXPORT_ARTIFACT_DIR}",
            dst_path=str(dst),
            tracking_uri=tracking_uri,
        )
    except Exception:
        raise ExportError(hint) from None
    local = Path(local)
    if not (local / MODEL_FILE).is_file():
        raise ExportError(hint)
    exported = json.loads((local / PREPROCESSING_FILE).read_text()).get("model_uri")
    if exported != model_uri:
        raise ExportError(f"the export in run {run_id} is of {exported}, not {model_uri}: export it again")
    return local


__all__ = [
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "Parity",
    "ParityError",
    "check_parity",
    "export_model",
    "locate_export",
]
