"""CIFAR-10: the python archive format, the reader, the recipe's schedule, and the job end to end."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.output_lines import foreign_lines

from resnet_platform.data.cifar import (
    FOLDER,
    CifarFormatError,
    cifar_datasets,
    decode_batch,
    load_pickled,
    read_cifar10,
    split_train_val,
    write_cifar10_archive,
)
from resnet_platform.data.pipeline import pad_crop_flip
from resnet_platform.paper.recipe import cifar_config, schedule_in_epochs
from resnet_platform.train.config import TrainConfig
from resnet_platform.train.optim import EpochSchedule, build_optimizer

REPO = Path(__file__).resolve().parents[1]
PER_BATCH, TEST = 40, 100


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    return write_cifar10_archive(
        str(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz"), per_batch=PER_BATCH, test_size=TEST
    )


def _raw_batches(archive: str) -> dict[str, dict]:
    with tarfile.open(archive, "r:gz") as tar:
        return {
            m.name: pickle.load(tar.extractfile(m), encoding="bytes") for m in tar.getmembers() if m.isfile()
        }


def test_archive_has_the_real_layout_and_byte_keys(archive):
    raw = _raw_batches(archive)
    names = {f"{FOLDER}/data_batch_{i}" for i in range(1, 6)} | {
        f"{FOLDER}/test_batch",
        f"{FOLDER}/batches.meta",
    }
    assert set(raw) == names
    batch = raw[f"{FOLDER}/data_batch_1"]
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(batch)
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (PER_BATCH, 3072)
    assert raw[f"{FOLDER}/batches.meta"][b"label_names"][0] == b"airplane"


def test_reader_gives_every_image_once_with_its_label_in_hwc(archive, tmp_path):
    raw = _raw_batches(archive)
    data = read_cifar10(archive)
    assert data.train_images.shape == (5 * PER_BATCH, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (TEST, 32, 32, 3)
    assert len(data.classes) == 10 and data.classes[9] == "truck"
    flat = np.concatenate([raw[f"{FOLDER}/data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = np.concatenate([raw[f"{FOLDER}/data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(data.train_labels, labels)
    # CHW rows: first 1024 bytes red (row-major), then green, then blue.
    for i in (0, 57, 199):
        img = data.train_images[i]
        np.testing.assert_array_equal(img[:, :, 0].ravel(), flat[i, :1024])
        np.testing.assert_array_equal(img[:, :, 1].ravel(), flat[i, 1024:2048])
        np.testing.assert_array_equal(img[2, 5, 2], flat[i, 2048 + 2 * 32 + 5])
    np.testing.assert_array_equal(data.test_labels, raw[f"{FOLDER}/test_batch"][b"labels"])
    # The extracted folder and a folder holding the archive read the same.
    extracted = write_cifar10_archive(
        str(tmp_path / "x"), per_batch=PER_BATCH, test_size=TEST, extracted=True
    )
    assert read_cifar10(extracted).train_images.shape[0] == 5 * PER_BATCH
    assert read_cifar10(str(Path(extracted) / FOLDER)).test_images.shape[0] == TEST
    assert np.array_equal(read_cifar10(str(Path(archive).parent)).train_images, data.train_images)


def test_str_keyed_batches_and_bad_files_are_handled():
    hwc = np.arange(2 * 3072, dtype=np.int64).reshape(2, 32, 32, 3).astype(np.uint8)
    blob = pickle.dumps({"data": hwc.transpose(0, 3, 1, 2).reshape(2, 3072), "labels": [3, 4]})
    images, labels = decode_batch(blob, "x")
    np.testing.assert_array_equal(images, hwc)
    assert labels.tolist() == [3, 4]
    with pytest.raises(ValueError, match="not CIFAR-10"):
        decode_batch(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "bad")
    with pytest.raises(FileNotFoundError):
        read_cifar10("/no/such/cifar")


class _RunsACommand:
    """What a tampered batch would hold: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_crafted_pickles_are_refused_and_never_run(archive, tmp_path):
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _RunsACommand(f"touch {marker}")}
    for protocol in (2, 5):
        with pytest.raises(CifarFormatError, match=r"data_batch_1 is not a CIFAR-10 pickle.*posix\.system"):
            decode_batch(pickle.dumps(evil, protocol=protocol), "data_batch_1")
    assert not marker.exists()
    # The other ways a pickle reaches arbitrary objects: builtins, object arrays, other classes.
    for value, refused in (
        ({b"data": eval}, r"refused to load (__builtin__|builtins)\.eval"),
        ({b"data": np.array([1, "a"], dtype=object)}, "object arrays"),
        ({b"data": {1, 2}}, r"(__builtin__|builtins)\.set"),
        ({b"data": (1, 2)}, "a tuple value"),
        ([1, 2], "a list where a dict belongs"),
    ):
        with pytest.raises(CifarFormatError, match=refused):
            load_pickled(pickle.dumps(value, protocol=2), "x")
    # Through the reader: an extracted folder whose batches.meta was replaced.
    folder = (
        Path(write_cifar10_archive(str(tmp_path / "x"), per_batch=2, test_size=2, extracted=True)) / FOLDER
    )
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": _RunsACommand(f"touch {marker}")}))
    with pytest.raises(CifarFormatError, match="batches.meta is not a CIFAR-10 pickle"):
        read_cifar10(str(folder))
    assert not marker.exists()


def test_seeded_split_is_disjoint_and_complete():
    train, val = split_train_val(50_000, seed=3)
    assert len(train) == 45_000 and len(val) == 5_000
    assert len(np.union1d(train, val)) == 50_000 and not np.intersect1d(train, val).size
    assert np.array_equal(val, split_train_val(50_000, seed=3)[1])
    assert not np.array_equal(val, split_train_val(50_000, seed=4)[1])


def test_pad_crop_flip_takes_a_window_of_the_zero_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    out = pad_crop_flip(images, rng)
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(64):
        found = any(
            np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1])
            for y in range(9)
            for x in range(9)
            for w in [padded[i, y : y + 32, x : x + 32]]
        )
        assert found, i
    assert (out == 0).any()  # some crops reach into the zero padding


def test_paper_schedule_in_epochs():
    assert schedule_in_epochs(50_000, 128) == (164, (82, 123))
    assert schedule_in_epochs(45_000, 128) == (182, (91, 136))
    config = cifar_config("x", train_rows=50_000, arch="cifar_resnet110")
    assert (config.epochs, config.lr_milestones, config.error_warmup_lr) == (164, (82, 123), 0.01)
    assert (config.augmentation, config.normalization, config.batch_size, config.lr) == (
        "pad-crop",
        "cifar10",
        128,
        0.1,
    )
    assert cifar_config("x", train_rows=50_000, epochs=4).lr_milestones == (2, 3)
    assert cifar_config("x", train_rows=50_000, arch="cifar_resnet56").error_warmup_lr is None


def test_resnet110_rule_keeps_lr_low_until_training_error_below_80_percent():
    config = TrainConfig(
        data="x",
        arch="cifar_resnet20",
        lr=0.1,
        epochs=10,
        lr_milestones=(5,),
        error_warmup_lr=0.01,
        num_workers=1,
    )
    model = torch.nn.Linear(2, 2)
    schedule = EpochSchedule(build_optimizer(model, config), config)
    assert schedule.lr == pytest.approx(0.01)
    schedule.step(0.9, train_error=0.85)
    assert schedule.lr == pytest.approx(0.01)
    state = schedule.state_dict()
    schedule.step(0.7, train_error=0.79)
    assert schedule.lr == pytest.approx(0.1)
    restored = EpochSchedule(build_optimizer(model, config), config)
    restored.load_state_dict(state)
    assert restored.error_warmup
    for _ in range(3):
        schedule.step(0.5, train_error=0.5)
    assert schedule.lr == pytest.approx(0.01)  # epoch 5: the milestone divides by 10


def _warmup_config(**overrides) -> TrainConfig:
    values = dict(data="x", arch="cifar_resnet20", lr=0.1, epochs=10, lr_milestones=(5,))
    values.update(error_warmup_lr=0.01, num_workers=1, **overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("lr_schedule", ["step", "plateau"])
def test_resnet110_low_rate_ends_at_the_first_step_whose_batch_error_is_below_80_percent(lr_schedule):
    """The paper counts the warm-up in iterations (about 400): the check runs after every step, not
    only at the epoch's end, and the schedule's rate applies from the next step."""
    config = _warmup_config(lr_schedule=lr_schedule)
    schedule = EpochSchedule(build_optimizer(torch.nn.Linear(2, 2), config), config)
    schedule.step(0.9, train_error=0.85)  # an epoch still above: plateau's own scheduler is stepping now
    schedule.observe_step_error(0.85)
    assert schedule.error_warmup and schedule.lr == pytest.approx(0.01)
    schedule.observe_step_error(0.79)
    assert not schedule.error_warmup and schedule.lr == pytest.approx(0.1)
    schedule.observe_step_error(0.95)  # over: a later bad batch does not bring the low rate back
    schedule.step(0.9, train_error=0.9)
    assert schedule.lr == pytest.approx(0.1)


def test_the_training_loop_ends_the_low_rate_phase_mid_epoch():
    """``WorkerRun.train_epoch`` reads each step's batch error while the phase lasts: a net that fits its
    batches at once leaves the low rate after its first step, inside the first epoch."""
    from resnet_platform.train.device import Normalizer
    from resnet_platform.train.worker_run import WorkerRun

    torch.manual_seed(0)
    config = _warmup_config(batch_size=8)
    labels = torch.arange(8) % 2
    images = (labels.view(8, 1, 1, 1) * 255).expand(8, 4, 4, 3).to(torch.uint8)  # class = brightness
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    with torch.no_grad():  # already right on every image: the first step's batch error is 0
        model[1].weight.zero_()
        model[1].weight[1].fill_(1.0)
        model[1].weight[0].fill_(-1.0)
        model[1].bias.zero_()
    optimizer = build_optimizer(model, config)
    schedule = EpochSchedule(optimizer, config)
    rates = []
    optimizer.register_step_post_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    batches = [{"image": images, "label": labels}] * 3
    run = WorkerRun(config, model, optimizer, schedule, Normalizer(torch.device("cpu"), False))
    run.train_epoch(batches)
    assert not schedule.error_warmup
    assert rates == pytest.approx([0.01, 0.1, 0.1])  # the first step at the low rate, then the schedule's


@pytest.mark.slow
def test_cifar_datasets_stream_every_row_once(archive, ray_local):
    data = read_cifar10(archive)
    ds = cifar_datasets(data, augment=True, blocks=4)
    train = ds["train"].take_all()
    assert len(train) == 5 * PER_BATCH
    assert sorted(int(r["label"]) for r in train) == sorted(data.train_labels.tolist())
    assert train[0]["image"].shape == (32, 32, 3) and train[0]["image"].dtype == np.uint8
    val = ds["val"].take_all()
    np.testing.assert_array_equal(np.stack([r["image"] for r in val]), data.test_images)
    with pytest.raises(ValueError, match="validation size"):  # 200 images cannot hold a 5k split
        cifar_datasets(data, val_split=True)


@pytest.mark.slow
def test_train_cifar_job_end_to_end_with_mlflow(archive, ray_local, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    cmd = [
        sys.executable, str(REPO / "jobs" / "train_cifar.py"), "--data", archive, "--epochs", "2",
        "--batch-size", "50", "--num-workers", "2", "--storage", str(tmp_path / "runs"), "--name", "cifar-e2e",
        "--seed", "0", "--tracking-uri", mlflow_server.uri, "--experiment", "cifar-test",
    ]  # fmt: skip
    # Joins the session's Ray, as a job that `ray job submit` started would (RAY_ADDRESS).
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "test error:" in out.stdout and "layer response std" in out.stdout
    # Not a terminal, default verbosity: only the platform's lines, from every process of the job
    # (no Ray Data progress bars, Ray core or MLflow lines), and no note about epochs the run holds.
    cifar_lines = (r"params: \d+  test error: [\d.]+%", r"layer response std \(3x3 layers\): .*")
    foreign = foreign_lines(out.stdout + out.stderr, extra=cifar_lines)
    assert not foreign, foreign[:20]
    assert "already holds" not in out.stdout + out.stderr
    client = MlflowClient(mlflow_server.uri)
    run = client.search_runs(
        [client.get_experiment_by_name("cifar-test").experiment_id], "attributes.run_name = 'cifar-e2e'"
    )[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["augmentation"] == "pad-crop" and run.data.params["normalization"] == "cifar10"
    assert len(client.get_metric_history(run.info.run_id, "val_top1_error")) == 2
    assert "test_top1_error" in run.data.metrics and run.data.metrics["params"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"error_curves.png", "layer_responses.json", "layer_responses.png", "config.json"} <= artifacts
