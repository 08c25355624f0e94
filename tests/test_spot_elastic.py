"""Spot and elastic training: worker ranges, the lr policy, background checkpoint uploads (with S3
faults on loopback), and mid-epoch preemption checkpoints that resume exactly.

The drain of a real node (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``) runs on the local
two-node cluster, in ``test_local_cluster.py``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures.s3_faults import S3FaultProxy
from test_train import DIGITS_VAL_IMAGES, small_config

from resnet_platform.train import FaultInjection, TrainConfig
from resnet_platform.train.checkpoint import load_checkpoint
from resnet_platform.train.cli import build_parser, config_from_args
from resnet_platform.train.elastic import describe, lr_scale, parse_worker_count
from resnet_platform.train.optim import EpochSchedule
from resnet_platform.train.preemption import EpochPosition, resume_plan
from resnet_platform.train.runner import build_trainer, run_training
from resnet_platform.train.uploads import CheckpointUploader, CheckpointUploadError

DIGITS_TRAIN_IMAGES = 1438


# ----------------------------------------------------------------------------- worker ranges


@pytest.mark.parametrize(
    "text, expected",
    [("8", 8), ("4-16", (4, 16)), (" 2 - 3 ", (2, 3)), ("4-4", 4), (3, 3), ([1, 2], (1, 2)), ((2, 2), 2)],
)
def test_worker_count_forms(text, expected):
    assert parse_worker_count(text) == expected


@pytest.mark.parametrize("bad", ["0", "5-2", "x", "4-", "-3", "1.5", True, (1, 2, 3)])
def test_bad_worker_counts_are_refused_naming_the_forms(bad):
    with pytest.raises(ValueError, match="--num-workers"):
        parse_worker_count(bad)


def test_num_workers_flag_maps_to_rays_elastic_scaling_config():
    args = build_parser().parse_args(
        ["--data", "/d", "--num-workers", "4-16", "--batch-size", "512", "--elastic-resize-interval-s", "30",
         "--max-failures", "2", "--max-preemptions", "5", "--cpus-per-worker", "1"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.num_workers == (4, 16) and config.elastic
    assert (config.min_workers, config.max_workers, config.per_worker_batch) == (4, 16, 32)
    trainer = build_trainer(replace(config, name="x", num_classes=10), datasets={})
    scaling = trainer.scaling_config
    assert scaling.num_workers == (4, 16) and scaling.elasticity_enabled
    assert scaling.elastic_resize_monitor_interval_s == 30
    failure = trainer.run_config.failure_config
    assert (failure.max_failures, failure.max_preemption_failures) == (2, 5)
    # A JSON round trip (MLflow params, checkpoints) keeps the range.
    assert TrainConfig.from_dict(dict(config.to_dict(), num_workers=[4, 16])).num_workers == (4, 16)


def test_fixed_worker_count_stays_fixed_and_preemptions_default_to_unlimited():
    config = config_from_args(build_parser().parse_args(["--data", "/d", "--num-workers", "8"]))
    assert config.num_workers == 8 and not config.elastic and describe(config.num_workers) == "8"
    trainer = build_trainer(replace(config, name="x", num_classes=10), datasets={})
    assert trainer.scaling_config.num_workers == 8 and not trainer.scaling_config.elasticity_enabled
    assert trainer.run_config.failure_config.max_preemption_failures == -1
    assert config.per_worker_batch == 32 and lr_scale(config, 8) == 1.0


def test_the_global_batch_must_divide_over_the_maximum():
    with pytest.raises(ValueError, match="does not divide evenly over 16 workers"):
        TrainConfig(data="/d", num_workers="4-16", batch_size=200)


# ----------------------------------------------------------------------------- the lr policy


def _schedule(config: TrainConfig, scale: float):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.base_lr, momentum=0.9)
    return optimizer, EpochSchedule(optimizer, config, lr_scale=scale)


@pytest.mark.filterwarnings("ignore:Detected call of")  # no optimizer step here: rates only
@pytest.mark.parametrize("schedule", ["step", "cosine", "plateau"])
def test_lr_follows_the_worker_count_across_a_resize(schedule):
    """The declared batch is at 16 workers; with 4 the global batch is a quarter and so is every rate.
    A checkpoint written at one size and loaded at another continues at the new size's rate."""
    config = TrainConfig(
        data="/d", num_workers="4-16", batch_size=1024, epochs=10, lr_schedule=schedule,
        lr_milestones=(2,), warmup_epochs=1, plateau_patience=0,
    )  # fmt: skip
    assert config.base_lr == pytest.approx(0.4)
    full_opt, full = _schedule(config, lr_scale(config, 16))
    small_opt, small = _schedule(config, lr_scale(config, 4))
    for epoch in range(3):
        assert small.lr == pytest.approx(full.lr / 4), epoch
        full.step(0.5, 0.5)
        small.step(0.5, 0.5)
    # Resize 4 -> 16 at a checkpoint: the rate moves to the full size's, and stays in step with it.
    grown_opt, grown = _schedule(config, lr_scale(config, 16))
    grown_opt.load_state_dict(small_opt.state_dict())
    grown.load_state_dict(small.state_dict())
    assert grown.lr == pytest.approx(full.lr)
    for _ in range(3):
        full.step(0.4, 0.4)
        grown.step(0.4, 0.4)
        assert grown.lr == pytest.approx(full.lr)


# ----------------------------------------------------------------------------- data position


def test_resume_plan_after_a_mid_epoch_checkpoint():
    planned = TrainConfig(data="/d", num_workers="1-4", batch_size=64, train_images=1000)
    at = EpochPosition(epoch=2, steps=5, images=320, world_size=4, loss_sum=1, correct1=1, correct5=1, seconds=1,
                       data_wait_s=0)  # fmt: skip
    # The epoch plan: the epoch continues at its position in the plan, on any worker count.
    for world in (4, 2):
        plan = resume_plan(at, planned, world_size=world)
        assert (plan.start_step, plan.start_sample, plan.skip_batches, plan.max_steps) == (5, 320, 0, None)
    # Ray Data's streaming split (no plan): the number of images the epoch had left, from a fresh pass.
    config = replace(planned, epoch_order="stream")  # 16 per worker
    plan = resume_plan(at, config, world_size=2)  # 680 images left, 32 per step
    assert (plan.start_step, plan.skip_batches, plan.max_steps) == (5, 0, math.ceil(680 / 32))
    assert resume_plan(None, config, 2).max_steps is None
    exact = replace(config, deterministic=True, augmentation="none")
    assert resume_plan(at, exact, world_size=4).skip_batches == 5  # same order, same split: skip
    assert resume_plan(at, exact, world_size=2).skip_batches == 0  # another split: count instead
    assert EpochPosition.from_dict(at.to_dict()) == at


# ----------------------------------------------------------------------------- the uploader, in process


class FakeReport:
    """``ray.train.report`` as Ray 2.60 runs it: async uploads on one background thread."""

    def __init__(self) -> None:
        self.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=1)
        self.calls: list[dict] = []

    def __call__(self, metrics, checkpoint=None, checkpoint_dir_name=None, **kw):
        self.calls.append(dict(kw, metrics=metrics, name=checkpoint_dir_name))
        if checkpoint is None:
            return
        fn = kw["checkpoint_upload_fn"]
        if kw.get("checkpoint_upload_mode") is not None and kw["checkpoint_upload_mode"].value == "ASYNC":
            self.pool.submit(self._swallow, fn, checkpoint, checkpoint_dir_name)
        else:
            fn(checkpoint, checkpoint_dir_name)

    @staticmethod
    def _swallow(fn, *args):
        try:
            fn(*args)
        except Exception:
            pass  # Ray hands it to the training thread; the uploader raises it again


def test_uploader_keeps_one_upload_in_flight_and_reports_failures(tmp_path, monkeypatch):
    import ray.train

    from resnet_platform.train import checkpoint as ckpt

    fake = FakeReport()
    monkeypatch.setattr(ray.train, "report", fake)
    active, peak, stored = [0], [0], []
    gate = threading.Event()

    def persist(checkpoint, name, on_attempt=None):
        on_attempt()
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            gate.wait(5)
            if name == "bad":
                raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation")
            stored.append(name)
        finally:
            active[0] -= 1

    monkeypatch.setattr(ckpt, "persist_with_retries", persist)
    up = CheckpointUploader("async", rank=0)
    logged = []
    for i in range(3):
        d = tmp_path / f"c{i}"
        d.mkdir()
        t0 = time.perf_counter()
        if i > 0:
            threading.Timer(0.3, gate.set).start()
        up.report({"epoch": i}, d, f"c{i}")
        assert time.perf_counter() - t0 < 3  # returned without waiting for the upload (i == 0)
        up.after_upload(lambda u, i=i: logged.append((i, u.name)))
        gate.clear()
    gate.set()
    up.wait()
    assert stored == ["c0", "c1", "c2"] and peak[0] == 1
    assert logged == [(0, "c0"), (1, "c1"), (2, "c2")]
    assert all(u.attempts == 1 and u.seconds is not None for u in up.uploads)

    bad = tmp_path / "bad"
    bad.mkdir()
    up.report({}, bad, "bad")
    up.after_upload(lambda u: logged.append("never"))
    with pytest.raises(CheckpointUploadError, match="checkpoint bad was not stored after 1 attempts") as err:
        up.wait()
    assert "AWS Error" not in str(err.value)  # Ray's retry-on-AWS-errors does not restart the series
    assert "never" not in logged and not bad.exists()


def test_sync_uploader_hands_the_stored_checkpoint_to_the_epochs_row(tmp_path, monkeypatch):
    """``--checkpoint-upload sync``: the upload is stored before ``report`` returns, and its timings
    still reach the epoch's row (what MLflow logs and the benchmark reads)."""
    import ray.train

    from resnet_platform.train import checkpoint as ckpt

    monkeypatch.setattr(ray.train, "report", FakeReport())
    monkeypatch.setattr(ckpt, "persist_with_retries", lambda c, n, on_attempt=None: on_attempt())
    up = CheckpointUploader("sync", rank=0)
    rows = []
    d = tmp_path / "c0"
    d.mkdir()
    up.report({"epoch": 1}, d, "c0")
    assert up.inflight is None and not d.exists()  # stored (and the local copy removed) in report
    up.after_upload(lambda u: rows.append(u.stats() if u else None))
    up.report({"epoch": 2}, None, None)  # an epoch without a checkpoint: nothing to hand on
    up.after_upload(lambda u: rows.append(u.stats() if u else None))
    assert rows[0]["checkpoint_upload_attempts"] == 1 and rows[0]["checkpoint_upload_s"] >= 0
    assert rows[1] is None


# ----------------------------------------------------------------------------- a copy that fails silently


def test_a_dropped_part_upload_is_caught_by_verifying_the_copy(s3_server, tmp_path, monkeypatch):
    """pyarrow 25: a part upload that fails inside ``copy_files`` (what Ray Train's checkpoint copy
    runs) is only logged when the stream closes; the copy returns and the file is not there. The
    platform checks every file's size after the copy, so the copy is tried again instead."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from resnet_platform.storage import resolve
    from resnet_platform.train.checkpoint import IncompleteCopyError, verify_copy

    bucket = s3_server.new_bucket()
    proxy = S3FaultProxy(s3_server.endpoint)
    try:
        proxy.add(r"PUT /[^ ]*/ckpt/state\.pt", drop=True, times=3)  # the SDK's 3 attempts
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        fs, root = resolve(f"s3://{bucket}/runs")
        local = tmp_path / "ckpt"
        local.mkdir()
        (local / "state.pt").write_bytes(b"w" * 2_000_000)
        (local / "model_config.json").write_text("{}")
        source, stored = Checkpoint.from_directory(str(local)), Checkpoint(f"{root}/ckpt", filesystem=fs)

        pafs.copy_files(str(local), f"{root}/ckpt", destination_filesystem=fs)  # returns: no error
        assert len(proxy.actions("drop")) == 3
        with pytest.raises(
            IncompleteCopyError, match=r"1 of 2 files missing or short after the copy \(state.pt\)"
        ):
            verify_copy(source, stored)
        pafs.copy_files(str(local), f"{root}/ckpt", destination_filesystem=fs)
        verify_copy(source, stored)  # the second copy is whole
    finally:
        proxy.close()


# ----------------------------------------------------------------------------- Ray Train + S3 faults


@pytest.fixture
def s3_proxy(s3_server, monkeypatch):
    """The S3 server behind a fault-injecting proxy, for the checkpoint storage the driver builds
    (the filesystem travels to the workers with the RunConfig). The workers' AWS SDK makes 3 attempts
    per request (pyarrow's default: a filesystem's retry strategy does not survive pickling), so it
    takes 3 dropped connections to fail one attempt of the platform's own retry."""
    proxy = S3FaultProxy(s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.close()


@pytest.mark.slow
def test_async_uploads_overlap_the_next_epoch_one_at_a_time_and_retry(
    digits_shards, ray_local, s3_server, s3_proxy
):
    """Every checkpoint upload takes 3 s longer (a slow store); the epoch-2 one fails once. The
    loop spends far less than the upload in ``report``, the next epoch starts while the previous
    checkpoint uploads, uploads never overlap, the cut one is retried, and every checkpoint lands.
    Elastic bounds on the local runtime: Ray's elastic policy starts the group at its maximum here."""
    bucket = s3_server.new_bucket()
    # First match wins: 3 drops fail the SDK's 3 attempts, so one attempt of the platform's retry.
    s3_proxy.add(r"PUT /[^ ]*checkpoint_epoch_0002/state\.pt", drop=True, times=3)
    s3_proxy.add(r"PUT /[^ ]*checkpoint_epoch_\d+/state\.pt", delay_s=3.0)
    config = small_config(
        digits_shards,
        f"s3://{bucket}/runs",
        name="async",
        epochs=3,
        num_workers="1-2",
        checkpoint_upload="async",
    )
    outcome = run_training(config)
    history = outcome.history
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    assert all(int(h["workers"]) == 2 for h in history)  # Ray placed the maximum
    assert all(int(h["val_images"]) == DIGITS_VAL_IMAGES for h in history)
    keys = {
        o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/async/")["Contents"]
    }
    for epoch in (1, 2, 3):
        assert f"runs/async/checkpoint_epoch_{epoch:04d}/state.pt" in keys, keys
    assert len(s3_proxy.actions("drop")) == 3
    first, second = history[0], history[1]  # the final checkpoint holds the earlier uploads' timings
    assert first["checkpoint_upload_attempts"] == 1 and second["checkpoint_upload_attempts"] == 2
    assert first["checkpoint_upload_s"] >= 3.0
    assert first["report_s"] < first["checkpoint_upload_s"] / 2, first
    assert first["checkpoint_upload_finished_at"] > second["epoch_started_at"]  # epoch 2 ran meanwhile
    assert second["checkpoint_upload_started_at"] >= first["checkpoint_upload_finished_at"]  # one at a time


@pytest.mark.slow
def test_an_upload_that_keeps_failing_fails_the_run_naming_the_checkpoint(
    digits_shards, ray_local, s3_server, s3_proxy
):
    bucket = s3_server.new_bucket()
    s3_proxy.add(r"PUT /[^ ]*checkpoint_epoch_0001/state\.pt", drop=True)
    config = small_config(
        digits_shards, f"s3://{bucket}/runs", name="lost", epochs=2, checkpoint_upload="async"
    )
    with pytest.raises(Exception, match=r"checkpoint checkpoint_epoch_0001 was not stored after 3 attempts"):
        run_training(config)
    assert (
        len(s3_proxy.actions("drop")) >= 3
    )  # 3 attempts of ours (RESNET_PLATFORM_S3_MAX_ATTEMPTS), each the SDK's


# ----------------------------------------------------------------------------- preemption, in process


@pytest.mark.slow
def test_a_mid_epoch_preemption_checkpoint_resumes_to_the_same_weights(
    digits_shards, ray_local, tmp_path, mlflow_server
):
    """A preemption reported in the middle of epoch 2 (injected where ``get_preemption_info()`` is
    read): rank 0 checkpoints at that step, the worker then dies, the restarted group resumes 10
    steps into epoch 2 and ends, augmentation on, with the weights of an uninterrupted run bit for
    bit; MLflow has each epoch once."""
    from mlflow import MlflowClient

    from resnet_platform.train.main import train_and_track

    # Augmentation on: each sample's crop comes from its own generator (data/plan_reader.py).
    exact = dict(num_workers=1, batch_size=64, epochs=2, deterministic=True, augmentation="rrc")
    reference = run_training(small_config(digits_shards, tmp_path, name="straight", **exact))

    marker = tmp_path / "preempt-injected"
    config = small_config(
        digits_shards, tmp_path, name="preempted", max_failures=1, preemption_check_steps=5,
        tracking_uri=mlflow_server.uri, experiment="preemption-test",
        fault=FaultInjection(epoch=1, step=9, kind="preempt", rank=0, marker=str(marker)), **exact,
    )  # fmt: skip
    outcome = train_and_track(config)
    assert marker.exists(), "the preemption was never injected"
    preempt = tmp_path / "preempted" / "checkpoint_preempt_e0002_s00000033"  # 23 steps + 10
    assert (preempt / "state.pt").exists(), sorted(p.name for p in (tmp_path / "preempted").iterdir())
    saved = load_checkpoint(preempt)
    assert saved["epoch"] == 1 and saved["step"] == 33
    assert saved["position"]["steps"] == 10 and saved["position"]["images"] == 640

    assert [int(h["epoch"]) for h in outcome.history] == [1, 2]
    assert int(outcome.history[1]["train_images"]) == DIGITS_TRAIN_IMAGES  # the whole epoch, counted once
    assert outcome.history[1]["step"] == reference.history[1]["step"]
    ours = load_checkpoint(Path(outcome.run_path) / "checkpoint_epoch_0002")["model"]
    theirs = load_checkpoint(Path(reference.run_path) / "checkpoint_epoch_0002")["model"]
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key  # bit for bit
    assert outcome.history[1]["train_loss"] == pytest.approx(reference.history[1]["train_loss"], rel=1e-5)

    client = MlflowClient(mlflow_server.uri)
    epochs = [int(m.value) for m in client.get_metric_history(outcome.mlflow_run_id, "epoch")]
    assert sorted(epochs) == [1, 2], epochs
    starts = client.get_metric_history(outcome.mlflow_run_id, "workers")
    assert (0, 1) in [(int(m.step), int(m.value)) for m in starts]  # the first group start
