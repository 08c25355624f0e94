"""Batch inference with Ray Data: a registered model over a folder / S3 prefix of images or a prepared split.

::

    read (image files, or Parquet shards)      CPU tasks, on the data nodes (--data-node-label/-resource)
      -> decode + evaluation crop + resize      the model's own Preprocess.crop: uint8 HWC rows
      -> actor pool: normalize + forward + top-k   the model pulled once per actor (safe loader)
      -> Parquet rows {key, label, top_indices, top_classes, top_probabilities, error}, written streaming

The alias is pinned to a version on the driver first, so every actor runs the same model even if the
alias moves mid-job. Undecodable inputs become rows with ``error`` set and empty predictions: they are
listed, never dropped. With a labelled split, top-1/top-5 error are computed from the written output
(every decoded image counted once) and logged to MLflow.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from resnet_platform.data.manifest import DatasetNotReadyError, manifest_at
from resnet_platform.data.placement import DataPlacement
from resnet_platform.errors import UserError
from resnet_platform.settings import check_ranges, setting
from resnet_platform.storage import Location
from resnet_platform.tracking.inference import ModelSpec, Preprocess
from resnet_platform.tracking.registry import load_spec, pin_version, registered_version
from resnet_platform.tracking.runs import client_for, resolve_tracking_uri

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png"]  # Ray matches them case-insensitively
BATCH_EXPERIMENT = "batch-predict"
RUNTIMES = ("torch", "onnx")

OUTPUT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int64()),  # -1: no label (plain image folders)
        ("top_indices", pa.list_(pa.int64())),
        ("top_classes", pa.list_(pa.string())),
        ("top_probabilities", pa.list_(pa.float32())),
        ("error", pa.string()),  # null when the image was classified
    ]
)


class BatchPredictError(UserError, ValueError):
    """A user mistake (missing input, output in the way, classes that do not match): one clear line."""


@dataclass
class BatchPredictConfig:
    """One declaration per flag of ``jobs/batch_predict.py``."""

    model: str = setting(
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a model directory", group="model"
    )
    input: str = setting(
        help="folder or s3:// prefix of JPEG/PNG files (any layout), or a prepared data set root",
        group="data",
    )
    output: str = setting(help="folder or s3:// prefix for the Parquet output", group="output")
    split: str = setting("val", "prepared data sets: which split to predict", group="data")
    top_k: int = setting(5, "classes kept per image", group="output", at_least=1)
    batch_size: int = setting(64, "images per model call", group="compute", at_least=1)
    concurrency: int = setting(1, "model actors", group="compute", at_least=1)
    use_gpu: bool = setting(False, "one GPU per model actor", group="compute")
    cpus_per_actor: float = setting(
        1.0, "CPUs reserved by each model actor (its torch threads)", group="compute", at_least=0
    )
    runtime: str = setting(
        "torch",
        "torch: the registered network; onnx: its export (jobs/export_model.py) in ONNX Runtime, CPU only",
        group="compute",
        choices=RUNTIMES,
    )
    decode_cpus: float = setting(1.0, "CPUs per read/decode task", group="data", above=0)
    data_node_label: str | None = setting(
        None,
        "KEY=VALUE label of the CPU data nodes (ray start --labels): read and decode there",
        group="data",
    )
    data_node_resource: str | None = setting(
        None, "custom resource of the CPU data nodes, e.g. data_cpu: read and decode there", group="data"
    )

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def placement(self) -> DataPlacement:
        """Where reads and decodes run: the training pipeline's own mechanism (``data/placement.py``)."""
        return DataPlacement(node_label=self.data_node_label, node_resource=self.data_node_resource)

    overwrite: bool = setting(False, "replace an existing output instead of refusing", group="output")
    log_to_mlflow: bool = setting(
        True, "with labels: log top-1/top-5 error to the version's run", group="output"
    )
    tracking_uri: str | None = setting(
        None, "default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", group="model"
    )


@dataclass
class BatchPredictSummary:
    model_uri: str  # the pinned model (models:/NAME/VERSION when it came from the registry)
    output: str
    images: int  # rows written, failures included
    failures: int
    seconds: float
    labelled: int = 0  # decoded rows with a label
    top1_error: float | None = None
    top5_error: float | None = None
    mlflow_run_id: str | None = None

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"model {self.model_uri}",
            f"{self.images} images in {self.seconds:.1f}s ({self.images_per_sec:.1f} img/s), "
            f"{self.failures} failed -> {self.output}",
        ]
        if self.top1_error is not None:
            lines.append(
                f"{self.labelled} labelled: top-1 error {self.top1_error:.4f}, top-5 error {self.top5_error:.4f}"
            )
        if self.mlflow_run_id:
            lines.append(f"metrics logged to MLflow run {self.mlflow_run_id}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ placement


def data_task_args(placement: DataPlacement) -> dict:
    """Ray remote args that keep image reads and decodes on the CPU data nodes (label selector and/or
    custom resource), exactly as the training pipeline places its data tasks."""
    return placement.task_args()


# ----------------------------------------------------------------------------------------------- read


def _root_path(uri: str) -> tuple[pafs.FileSystem, str]:
    data = Location.of(uri)
    return data.fs, data.path.rstrip("/")


def _prepared_manifest(data: Location):
    try:
        return manifest_at(data)
    except DatasetNotReadyError:
        return None


def _read(config: BatchPredictConfig, spec: ModelSpec, data: Location):
    """The input (``config.input``, resolved once by the caller as ``data``: the manifest and every
    shard path below it) as a Dataset of ``{bytes, key, label}`` rows, and whether it carries labels."""
    import ray.data

    fs, root = data.fs, data.path.rstrip("/")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise BatchPredictError(f"{config.input}: no such folder or prefix")
    remote_args = data_task_args(config.placement)
    manifest = _prepared_manifest(data) if info.type == pafs.FileType.Directory else None
    if manifest is not None:
        if config.split not in manifest.splits:
            raise BatchPredictError(
                f"{config.input}: no split {config.split!r} (has {', '.join(sorted(manifest.splits))})"
            )
        if spec.wnids and manifest.classes and list(spec.wnids) != list(manifest.classes):
            raise BatchPredictError(
                f"{config.model} was trained on other classes than {config.input}: labels would not match"
            )
        paths = manifest.shard_uris(root, config.split)
        ds = ray.data.read_parquet(
            paths,
            filesystem=fs,
            columns=["image", "label", "key"],
            partitioning=None,
            file_extensions=None,
            ray_remote_args=remote_args,
        )
        return ds.rename_columns({"image": "bytes"}), True
    ds = ray.data.read_binary_files(
        root,
        filesystem=fs,
        include_paths=True,
        file_extensions=IMAGE_EXTENSIONS,
        partitioning=None,
        ray_remote_args=remote_args,
    )
    return ds, False


def _decode(batch: dict[str, np.ndarray], *, preprocess: Preprocess, root: str) -> dict[str, np.ndarray]:
    """Image bytes -> uint8 crops with the model's own preprocessing; a failure becomes an error string."""
    data = batch["bytes"]
    n, s = len(data), preprocess.image_size
    images = np.zeros((n, s, s, 3), np.uint8)
    errors = np.full(n, "", dtype=object)
    for i, raw in enumerate(data):
        try:
            images[i] = preprocess.crop(bytes(raw))
        except Exception as e:  # any undecodable file: listed in the output, never dropped
            errors[i] = f"{type(e).__name__}: {e}"[:500]
    if "key" in batch:
        keys = np.asarray([str(k) for k in batch["key"]], dtype=object)
        labels = np.asarray(batch["label"], dtype=np.int64)
    else:
        prefix = root + "/"
        keys = np.asarray(
            [p[len(prefix) :] if p.startswith(prefix) else p for p in batch["path"]], dtype=object
        )
        labels = np.full(n, -1, dtype=np.int64)
    return {"image": images, "key": keys, "label": labels, "error": errors}


# ---------------------------------------------------------------------------------------------- model


class TopKPredictor:
    """A Ray Data actor: pulls the model once (no pickles), then classifies uint8 crop batches.

    Normalization and the forward pass are ``LoadedModel``'s own (``preprocess.normalize`` then
    ``predict_proba``), so a row's answer is what ``load_model(...).predict_topk`` gives that image."""

    def __init__(self, model_uri: str, tracking_uri: str, top_k: int, use_gpu: bool):
        import torch

        from resnet_platform.tracking.registry import load_model

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_model(model_uri, tracking_uri=tracking_uri, device=self.device)
        self.labels = self.model.class_names
        self.k = min(top_k, self.model.spec.num_classes)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        errors = [e or None for e in batch["error"]]
        ok = np.asarray([e is None for e in errors], dtype=bool)
        n = len(errors)
        indices: list[list[int]] = [[] for _ in range(n)]
        probs: list[list[float]] = [[] for _ in range(n)]
        if ok.any():
            p = self.probabilities(np.ascontiguousarray(batch["image"][ok]))
            top = torch.as_tensor(p).topk(self.k, dim=1)
            rows = np.flatnonzero(ok)
            for r, vals, idx in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
                indices[r], probs[r] = idx, vals
        return pa.Table.from_pydict(
            {
                "key": [str(k) for k in batch["key"]],
                "label": np.asarray(batch["label"], dtype=np.int64),
                "top_indices": indices,
                "top_classes": [[self.labels[i] for i in idx] for idx in indices],
                "top_probabilities": probs,
                "error": errors,
            },
            schema=OUTPUT_SCHEMA,
        )

    def probabilities(self, images: np.ndarray):
        """uint8 NHWC crops -> softmax probabilities [N, classes]."""
        import torch

        x = torch.from_numpy(images).to(self.device)
        return self.model.predict_proba(self.model.preprocess.normalize(x))


# --------------------------------------------------------------------------------------------- output


class OnnxTopKPredictor(TopKPredictor):
    """``jobs/batch_predict.py --runtime onnx``'s model actor: the version's export (downloaded once
    per actor) in ONNX Runtime, the output rows of the torch actor (:class:`TopKPredictor`)."""

    def __init__(self, model_uri: str, tracking_uri: str, top_k: int, threads: int | None = None):
        import tempfile

        from .export import locate_export
        from .onnx_runtime import OnnxClassifier

        self._tmp = tempfile.TemporaryDirectory()
        self.classifier = OnnxClassifier(locate_export(model_uri, tracking_uri, self._tmp.name), threads)
        self.labels = self.classifier.labels
        self.k = min(top_k, len(self.labels))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.probabilities(images)


def check_export(model_uri: str, tracking_uri: str, use_gpu: bool) -> None:
    """On the driver: the model has an export this runtime can run (else one line, no actor started)."""
    import tempfile

    from .export import ExportError, locate_export

    if use_gpu:
        raise BatchPredictError("--runtime onnx runs on the CPU: drop --use-gpu, or use --runtime torch")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            locate_export(model_uri, tracking_uri, tmp)
        except ExportError as e:
            raise BatchPredictError(str(e)) from None


def _prepare_output(uri: str, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    fs, path = _root_path(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise BatchPredictError(f"{uri} is a file: --output names a folder or prefix")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if not overwrite:
            raise BatchPredictError(f"{uri} already holds files: choose another --output or pass --overwrite")
        fs.delete_dir_contents(path)
    return fs, path


def read_predictions(uri: str) -> pa.Table:
    """The Parquet output of a batch prediction as one table (for summaries and tests)."""
    import pyarrow.dataset as pads

    fs, path = _root_path(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table()


def _score(table: pa.Table) -> tuple[int, int, int, float | None, float | None]:
    """(rows, failures, labelled, top-1 error, top-5 error) from the written output."""
    rows = table.num_rows
    errors = table.column("error").to_pylist()
    failures = sum(e is not None for e in errors)
    labels = table.column("label").to_pylist()
    tops = table.column("top_indices").to_pylist()
    scored = [(lab, top) for lab, top, e in zip(labels, tops, errors, strict=True) if e is None and lab >= 0]
    if not scored:
        return rows, failures, 0, None, None
    c1 = sum(bool(top) and top[0] == lab for lab, top in scored)
    c5 = sum(lab in top[:5] for lab, top in scored)
    return rows, failures, len(scored), 1 - c1 / len(scored), 1 - c5 / len(scored)


def _log_metrics(model_uri: str, tracking_uri: str, split: str, summary: BatchPredictSummary) -> str:
    """Log the errors to the model version's run; a new run linked to the version when it has none."""
    from mlflow.entities import Metric

    from resnet_platform.tracking.runs import start_run

    client = client_for(tracking_uri)
    version = registered_version(model_uri)
    run_id = None
    if version is not None:
        run_id = client.get_model_version(*version).run_id or None
    if run_id is None:
        tags = {"model_uri": model_uri}
        if version is not None:
            tags.update(model_name=version[0], model_version=version[1])
        run_id = start_run(tracking_uri, BATCH_EXPERIMENT, f"batch-predict-{split}", tags=tags)
        client.set_terminated(run_id)
    now = int(time.time() * 1000)
    values = {
        f"batch_{split}_top1_error": summary.top1_error,
        f"batch_{split}_top5_error": summary.top5_error,
        f"batch_{split}_images": float(summary.labelled),
    }
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    return run_id


# ------------------------------------------------------------------------------------------------ run


def batch_predict(config: BatchPredictConfig) -> BatchPredictSummary:
    """Classify every image of ``config.input`` with the registered model; write Parquet; summarize.

    Needs a Ray runtime (``ray.init`` or a cluster address) in this process."""
    import ray.data

    if config.top_k < 1 or config.batch_size < 1 or config.concurrency < 1:
        raise BatchPredictError("--top-k, --batch-size and --concurrency must be at least 1")
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    model_uri = pin_version(config.model, tracking_uri)
    spec = load_spec(model_uri, tracking_uri)
    fs_out, out_path = _prepare_output(config.output, config.overwrite)
    data = Location.of(config.input)
    ds, labelled = _read(config, spec, data)
    in_root = data.path.rstrip("/")
    ds = ds.map_batches(
        functools.partial(_decode, preprocess=Preprocess.from_spec(spec), root=in_root),
        batch_size=config.batch_size,
        batch_format="numpy",
        num_cpus=config.decode_cpus,
        **data_task_args(config.placement),
        # Keeps decoding its own CPU stage: Ray Data fuses a task map into the next actor map when
        # their remote args match, which would decode inside the model actors, serially with the
        # forward pass and off the data nodes. A remote-args function is never fused.
        ray_remote_args_fn=functools.partial(data_task_args, config.placement),
    )
    predictor, kwargs = TopKPredictor, {"use_gpu": config.use_gpu}
    if config.runtime == "onnx":  # the export, found (or refused in one line) before any actor starts
        predictor, kwargs = OnnxTopKPredictor, {"threads": max(1, int(config.cpus_per_actor))}
        check_export(model_uri, tracking_uri, config.use_gpu)
    ds = ds.map_batches(
        predictor,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "tracking_uri": tracking_uri,
            "top_k": config.top_k,
            **kwargs,
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        num_cpus=config.cpus_per_actor,
        num_gpus=1 if config.use_gpu else 0,
    )
    started = time.perf_counter()
    ds.write_parquet(out_path, filesystem=fs_out)
    seconds = time.perf_counter() - started
    rows, failures, n_labelled, top1, top5 = _score(read_predictions(config.output))
    summary = BatchPredictSummary(model_uri, config.output, rows, failures, seconds, n_labelled, top1, top5)
    if labelled and top1 is not None and config.log_to_mlflow:
        summary.mlflow_run_id = _log_metrics(model_uri, tracking_uri, config.split, summary)
    return summary
