"""Batch inference with Ray Data (jobs/batch_predict.py): same answers as load_model(...).predict_topk,
the platform's evaluation error on a labelled split, corrupt files listed, local folders and moto S3."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures.registered_model import digits_spec
from mlflow import MlflowClient

from resnet_platform.models import build_model
from resnet_platform.serving.batch import (
    BatchPredictConfig,
    BatchPredictError,
    batch_predict,
    read_predictions,
)
from resnet_platform.tracking import load_model, save_resnet_model

ROOT = Path(__file__).resolve().parents[1]
CORRUPT = b"\xff\xd8\xff\xe0 not really a JPEG" + bytes(range(200))


def _job():
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import batch_predict as job
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    return job


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved model directory (no MLflow server): the loader accepts a path as well as models:/..."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "digits-resnet20"
    save_resnet_model(path, build_model("cifar_resnet20", 10).eval().state_dict(), digits_spec())
    return path


@pytest.fixture(scope="module")
def image_folder(digits_folder, tmp_path_factory) -> Path:
    """A few val digits in an arbitrary nested layout, a PNG, a corrupt JPEG and a non-image file."""
    root = tmp_path_factory.mktemp("images")
    sources = sorted((digits_folder.root / "val").glob("*/*.JPEG"))[::12][:30]
    for i, src in enumerate(sources):
        dst = root / f"batch{i % 3}" / ("deep" if i % 2 else "") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    from PIL import Image

    Image.open(sources[0]).save(root / "as_png.png")
    (root / "batch0" / "broken.jpg").write_bytes(CORRUPT)
    (root / "notes.txt").write_text("not an image: ignored by extension")
    return root


def _check_against_predict_topk(table, model, images: dict[str, object], k: int = 5) -> None:
    """Every decodable row: the same top-k indices and classes as predict_topk, probabilities to 1e-5."""
    rows = {r["key"]: r for r in table.to_pylist() if r["error"] is None}
    assert set(rows) == set(images)
    keys = sorted(images)
    expected = model.predict_topk([images[key] for key in keys], k=k)
    for key, top in zip(keys, expected, strict=True):
        row = rows[key]
        assert row["top_indices"] == [p.index for p in top], key
        assert row["top_classes"] == [p.label for p in top]
        assert np.allclose(row["top_probabilities"], [p.probability for p in top], atol=1e-5)


@pytest.mark.slow  # Ray Data actors pulling a model: ~15 s idle, minutes on a loaded 2-core box
def test_folder_job_matches_predict_topk_and_lists_corrupt(
    ray_local, model_dir, image_folder, tmp_path, capsys
):
    out = tmp_path / "preds"
    job = _job()
    argv = [
        "--model",
        str(model_dir),
        "--input",
        str(image_folder),
        "--output",
        str(out),
        "--batch-size",
        "8",
    ]
    assert job.main([*argv, "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "32 images" in printed and "1 failed" in printed

    table = read_predictions(str(out))
    assert table.num_rows == 32  # 30 JPEGs + 1 PNG + the corrupt file; notes.txt is not an image
    broken = [r for r in table.to_pylist() if r["error"] is not None]
    assert [r["key"] for r in broken] == ["batch0/broken.jpg"]
    assert broken[0]["top_indices"] == [] and broken[0]["label"] == -1
    images = {
        str(p.relative_to(image_folder)): str(p)
        for p in image_folder.rglob("*")
        if p.suffix.lower() in (".jpeg", ".png")
    }
    _check_against_predict_topk(table, load_model(str(model_dir)), images, k=3)

    # A rerun refuses to mix its rows into an existing output: one clear line, no traceback.
    with pytest.raises(SystemExit) as exc:
        job.main(argv)
    assert exc.value.code == 1  # a user error (jobrunner.py): the output is in the way
    assert "already holds files" in capsys.readouterr().err


def test_decode_lists_failures_with_the_models_crop(model_dir, image_folder):
    """The decode stage is the model's own Preprocess.crop; a corrupt file becomes an error string."""
    from resnet_platform.serving.batch import _decode
    from resnet_platform.tracking import Preprocess

    pre = Preprocess.from_spec(digits_spec())
    good = next(image_folder.rglob("*.JPEG"))
    out = _decode(
        {
            "bytes": np.array([good.read_bytes(), CORRUPT], dtype=object),
            "path": np.array(["r/a.jpg", "x.jpg"]),
        },
        preprocess=pre,
        root="r",
    )
    assert out["key"].tolist() == ["a.jpg", "x.jpg"] and out["label"].tolist() == [-1, -1]
    assert out["error"][0] == "" and out["error"][1].startswith(("OSError", "UnidentifiedImageError"))
    assert np.array_equal(out["image"][0], pre.crop(str(good)))
    assert torch.equal(pre.normalize(torch.from_numpy(out["image"][:1]))[0], pre(str(good)))


def test_missing_input_is_one_line(model_dir, tmp_path):
    with pytest.raises(BatchPredictError, match="no such folder"):
        batch_predict(
            BatchPredictConfig(model=str(model_dir), input=str(tmp_path / "nope"), output=str(tmp_path / "o"))
        )


@pytest.mark.slow  # MLflow server + registry
def test_prepared_split_from_registry_error_and_mlflow(
    ray_local, registered_digits_model, digits_shards, tmp_path
):
    from resnet_platform.data.pipeline import TransformConfig, build_split_dataset
    from resnet_platform.train.device import Normalizer
    from resnet_platform.train.epoch import evaluate

    reg = registered_digits_model
    client = MlflowClient(reg.tracking_uri)
    client.set_registered_model_alias(reg.name, "batch", reg.versions[0])
    summary = batch_predict(
        BatchPredictConfig(
            model=f"models:/{reg.name}@batch",
            input=digits_shards,
            output=str(tmp_path / "val-preds"),
            split="val",
            batch_size=32,
            tracking_uri=reg.tracking_uri,
        )
    )
    assert summary.model_uri == reg.uri(reg.versions[0])  # the alias pinned to its version
    assert summary.images == 359 and summary.failures == 0 and summary.labelled == 359

    # Same answers as load_model(...).predict_topk on the shard's own image bytes.
    shard_rows = {}
    for shard in sorted(Path(digits_shards, "val").glob("*.parquet")):
        for r in pq.read_table(shard, columns=["key", "image"]).to_pylist():
            shard_rows[r["key"]] = r["image"]
    table = read_predictions(str(tmp_path / "val-preds"))
    model = load_model(reg.uri(reg.versions[0]), tracking_uri=reg.tracking_uri)
    _check_against_predict_topk(table, model, shard_rows)

    # The error equals what the platform's evaluation computes for that split.
    spec = reg.spec
    ds = build_split_dataset(
        digits_shards,
        "val",
        train=False,
        transform=TransformConfig(
            image_size=spec.image_size, resize_size=spec.resize_size, augmentation="none"
        ),
    )
    batches = ds.iter_torch_batches(batch_size=64, dtypes={"image": torch.uint8, "label": torch.int64})
    device = torch.device("cpu")
    stats = evaluate(
        model.model,
        batches,
        torch.nn.CrossEntropyLoss(),
        None,
        Normalizer(device, False, spec.mean, spec.std),
        device,
    )
    assert stats.images == 359
    assert summary.top1_error == pytest.approx(stats.top1_error, abs=1e-12)
    assert summary.top5_error == pytest.approx(stats.top5_error, abs=1e-12)

    # Logged to the version's training run.
    metrics = client.get_run(reg.run_ids[0]).data.metrics
    assert metrics["batch_val_top1_error"] == pytest.approx(stats.top1_error)
    assert metrics["batch_val_top5_error"] == pytest.approx(stats.top5_error)
    assert summary.mlflow_run_id == reg.run_ids[0]


@pytest.mark.slow  # MLflow server + registry + S3 uploads
def test_s3_folder_and_shards(
    ray_local, registered_digits_model, digits_shards, image_folder, s3_server, tmp_path
):
    reg = registered_digits_model
    bucket = s3_server.new_bucket("batch")
    s3 = s3_server.client()
    for base, prefix in ((image_folder, "images"), (Path(digits_shards), "shards")):
        for p in base.rglob("*"):
            if p.is_file():
                s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(base)}")
    model = load_model(reg.uri(reg.versions[1]), tracking_uri=reg.tracking_uri)

    common = dict(model=reg.uri(reg.versions[1]), tracking_uri=reg.tracking_uri, log_to_mlflow=False)
    folder = batch_predict(
        BatchPredictConfig(input=f"s3://{bucket}/images", output=f"s3://{bucket}/out-images", **common)
    )
    assert folder.images == 32 and folder.failures == 1 and folder.top1_error is None
    table = read_predictions(f"s3://{bucket}/out-images")
    assert [r["key"] for r in table.to_pylist() if r["error"]] == ["batch0/broken.jpg"]
    images = {
        str(p.relative_to(image_folder)): str(p)
        for p in image_folder.rglob("*")
        if p.suffix.lower() in (".jpeg", ".png")
    }
    _check_against_predict_topk(table, model, images)

    shards = batch_predict(
        BatchPredictConfig(input=f"s3://{bucket}/shards", output=f"s3://{bucket}/out-val", **common)
    )
    local = batch_predict(
        BatchPredictConfig(input=digits_shards, output=str(tmp_path / "local-val"), **common)
    )
    assert shards.images == local.images == 359
    assert shards.top1_error == local.top1_error and shards.top5_error == local.top5_error
    by_key = {r["key"]: r["top_indices"] for r in read_predictions(str(tmp_path / "local-val")).to_pylist()}
    remote = read_predictions(f"s3://{bucket}/out-val").to_pylist()
    assert all(by_key[r["key"]] == r["top_indices"] for r in remote)
