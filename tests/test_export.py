"""jobs/export_model.py and batch_predict --runtime onnx: ONNX + torch.export files with their
preprocessing, parity with torch on real validation images (CIFAR-style and ImageNet-style models),
a loud failure when a weight is perturbed, the same top-1 as the torch runtime, and bad inputs each
refused in one line before any worker starts."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fixtures.datasets import ILSVRC_NAMES, ILSVRC_WNIDS
from fixtures.registered_model import digits_spec
from mlflow import MlflowClient
from onnx import numpy_helper

from resnet_platform.models import build_model
from resnet_platform.serving.batch import (
    BatchPredictConfig,
    BatchPredictError,
    batch_predict,
    read_predictions,
)
from resnet_platform.serving.export import ExportConfig, ParityError, export_model
from resnet_platform.serving.onnx_runtime import OnnxClassifier
from resnet_platform.tracking import ModelSpec, save_resnet_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each export traces the network twice (ONNX, torch.export): ~10 s


@pytest.fixture(scope="module")
def cifar_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("cifar") / "model"
    save_resnet_model(path, build_model("cifar_resnet20", 10).eval().state_dict(), digits_spec())
    return path


def _perturb_first_conv(directory: Path) -> None:
    """A broken export: one weight tensor of the ONNX graph moved by 0.05 (the program untouched)."""
    path = directory / "model.onnx"
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.05), init.name))
    onnx.save(model, str(path))


def test_imagenet_style_export_parity_and_preprocessing(ilsvrc_tree, tmp_path):
    """resnet18 (ImageNet layout: 7x7 stem, max pool, 4 stages) at 64 px, on the tree's own JPEGs."""
    torch.manual_seed(0)
    spec = ModelSpec.for_arch("resnet18", 5, class_names=ILSVRC_NAMES, wnids=ILSVRC_WNIDS,
                              image_size=64, resize_size=73)  # fmt: skip
    model_dir = tmp_path / "resnet18"
    save_resnet_model(model_dir, build_model("resnet18", 5).eval().state_dict(), spec)
    out = tmp_path / "export"
    result = export_model(
        ExportConfig(
            model=str(model_dir), images=str(ilsvrc_tree.root / "val"), output=str(out), parity_images=16
        )
    )
    assert result.onnx.passed and result.program.passed and result.onnx.images == 16
    assert result.onnx.max_abs_diff < 1e-3
    pre = json.loads((out / "preprocessing.json").read_text())
    assert (pre["image_size"], pre["resize_size"], pre["eval_crop"]) == (64, 73, "center")
    assert pre["mean"] == list(spec.mean) and pre["labels"] == ILSVRC_NAMES
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    # Dynamic batch: any batch size runs.
    classifier = OnnxClassifier(out)
    for n in (1, 7):
        assert classifier.logits(np.zeros((n, 3, 64, 64), np.float32)).shape == (n, 5)
    assert torch.export.load(str(out / "model.pt2")).module()(torch.zeros(3, 3, 64, 64)).shape == (3, 5)


def test_perturbed_weight_fails_loudly(cifar_model_dir, digits_folder, tmp_path):
    config = ExportConfig(
        model=str(cifar_model_dir), images=str(digits_folder.root / "val"), output=str(tmp_path)
    )
    with pytest.raises(ParityError, match="ONNX Runtime parity FAILED"):
        export_model(config, perturb=_perturb_first_conv)
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


def test_cifar_export_logged_and_onnx_batch_predict_matches_torch(
    registered_digits_model, digits_shards, ray_local, tmp_path
):
    reg = registered_digits_model
    client = MlflowClient(reg.tracking_uri)
    alias = f"export-{uuid.uuid4().hex[:6]}"
    client.set_registered_model_alias(reg.name, alias, reg.versions[1])
    result = export_model(
        ExportConfig(model=f"models:/{reg.name}@{alias}", images=digits_shards, tracking_uri=reg.tracking_uri)
    )
    assert result.model_uri == reg.uri(reg.versions[1]) and result.run_id == reg.run_ids[1]
    assert result.onnx.passed and result.onnx.images == 32
    run = client.get_run(reg.run_ids[1])
    assert run.data.metrics["export_parity_passed"] == 1.0
    logged = {Path(a.path).name for a in client.list_artifacts(reg.run_ids[1], "export")}
    assert logged == {"model.onnx", "model.pt2", "preprocessing.json", "parity.json"}

    common = dict(model=reg.uri(reg.versions[1]), input=digits_shards, tracking_uri=reg.tracking_uri,
                  batch_size=64, log_to_mlflow=False)  # fmt: skip
    torch_run = batch_predict(BatchPredictConfig(output=str(tmp_path / "torch"), **common))
    onnx_run = batch_predict(BatchPredictConfig(output=str(tmp_path / "onnx"), runtime="onnx", **common))
    assert onnx_run.images == torch_run.images == 359 and onnx_run.failures == 0
    by_key = {r["key"]: r for r in read_predictions(str(tmp_path / "torch")).to_pylist()}
    rows = read_predictions(str(tmp_path / "onnx")).to_pylist()
    assert all(r["top_indices"][0] == by_key[r["key"]]["top_indices"][0] for r in rows)
    assert onnx_run.top1_error == torch_run.top1_error
    assert max(abs(r["top_probabilities"][0] - by_key[r["key"]]["top_probabilities"][0]) for r in rows) < 1e-4


def _one_line_errors(commands: dict[str, list[str]]) -> dict[str, str]:
    """Run the job commands at once (each pays the torch/Ray import): each must exit non-zero with
    exactly one line on stderr and no traceback; returns that line by name."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, cmd in commands.items()
    }
    lines = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode != 0, (name, out)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        lines[name] = err.strip()
    return lines


def test_bad_inputs_are_one_line_before_any_worker(
    digits_shards, registered_digits_model, cifar_model_dir, ray_local, tmp_path
):
    reg = registered_digits_model
    torch.save(build_model("resnet18", 10).state_dict(), tmp_path / "resnet18.pth")
    train = [str(ROOT / "jobs" / "train_imagenet.py"), "--data", digits_shards, "--arch", "cifar_resnet20",
             "--storage", str(tmp_path / "runs"), "--num-workers", "1", "--no-mlflow"]  # fmt: skip
    errors = _one_line_errors(
        {
            "missing": [*train, "--init-from", str(tmp_path / "nope.pth")],
            "other": [*train, "--init-from", str(tmp_path / "resnet18.pth")],
            "alias": [*train, "--init-from", f"models:/{reg.name}@no-such-alias", "--tracking-uri", reg.tracking_uri],
            "unknown": [str(ROOT / "jobs" / "export_model.py"), "--images", digits_shards,
                        "--model", str(tmp_path / "resnet18.pth")],
        }
    )  # fmt: skip
    assert "no such file" in errors["missing"] and "nope.pth" in errors["missing"]
    assert "holds a resnet18 state dict, not cifar_resnet20" in errors["other"]
    assert f"no version of '{reg.name}' holds the alias @no-such-alias" in errors["alias"]
    assert "input size unknown" in errors["unknown"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run started
    with pytest.raises(BatchPredictError, match="no ONNX export"):  # found before any actor starts
        batch_predict(
            BatchPredictConfig(model=str(cifar_model_dir), input=digits_shards, output=str(tmp_path / "o"),
                               runtime="onnx")
        )  # fmt: skip
