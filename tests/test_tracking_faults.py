"""MLflow down mid-run: training goes on, checkpoints are kept, metrics arrive once when it returns.

A real ``mlflow server`` on 127.0.0.1 is killed (SIGKILL) and started again on the same port and
store; nothing is mocked. Deadlines are set short (2 s) so an outage costs seconds.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.ports import wait_until
from mlflow import MlflowClient

from resnet_platform.tracking.limits import TrackingLimits
from resnet_platform.tracking.runs import start_run
from resnet_platform.tracking.worker_logger import RunLogger
from resnet_platform.train.main import train_and_track

QUICK = TrackingLimits(timeout_s=2, max_retries=0, retry_interval_s=0.0, final_wait_s=90.0)


def _epochs(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(int(m.value) for m in client.get_metric_history(run_id, "epoch"))


@pytest.mark.slow
def test_run_logger_buffers_through_an_outage_and_sends_each_epoch_once(restartable_mlflow_server, caplog):
    server = restartable_mlflow_server
    run_id = start_run(server.uri, "outage-unit", "buffered")
    env_before = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    logger = RunLogger(server.uri, run_id, limits=QUICK)
    assert logger.log_epoch(1, {"val_top1_error": 0.5}, step=10)

    server.kill()
    caplog.set_level(logging.WARNING, logger="resnet_platform.tracking.worker_logger")
    started = time.monotonic()
    logger.log_step({"loss": 1.0}, step=15)
    logger.flush()
    assert logger.log_epoch(2, {"val_top1_error": 0.4}, step=20)  # accepted, buffered
    assert logger.log_epoch(3, {"val_top1_error": 0.3}, step=30)
    assert time.monotonic() - started < 30, "an outage must cost seconds, not MLflow's minutes"
    assert logger.pending_points > 0
    outage_lines = [r for r in caplog.records if "is not answering" in r.getMessage()]
    assert len(outage_lines) == 1, [r.getMessage() for r in caplog.records]

    server.start()
    restarted = time.time() * 1000
    logger.close()  # one more try: the server is back
    assert logger.undelivered == 0
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == env_before, "limits leaked into the environment"

    client = MlflowClient(server.uri)
    assert _epochs(client, run_id) == [1, 2, 3]
    history = client.get_metric_history(run_id, "val_top1_error")
    assert sorted(m.step for m in history) == [10, 20, 30]
    # Epochs 2 and 3 were measured while the server was down and delivered after it returned.
    assert all(m.timestamp < restarted for m in history)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [15]


@pytest.mark.slow
def test_close_while_down_reports_what_was_lost_in_one_line(restartable_mlflow_server, caplog):
    server = restartable_mlflow_server
    run_id = start_run(server.uri, "outage-unit", "lost")
    logger = RunLogger(server.uri, run_id, limits=QUICK)
    server.kill()
    caplog.set_level(logging.WARNING, logger="resnet_platform.tracking.worker_logger")
    logger.log_epoch(1, {"val_top1_error": 0.5}, step=10)
    logger.close()
    assert logger.undelivered > 0
    lost = [r.getMessage() for r in caplog.records if "could not be sent" in r.getMessage()]
    assert len(lost) == 1 and "epochs 1" in lost[0] and "\n" not in lost[0]


@pytest.mark.slow
def test_mlflow_killed_after_epoch_1_run_finishes_with_every_checkpoint_and_epoch(
    digits_shards, ray_local, tmp_path, restartable_mlflow_server
):
    """The issue's reproduction: before, the job died after ~9 minutes with 1 checkpoint of 3."""
    from test_train import small_config

    server = restartable_mlflow_server
    client = MlflowClient(server.uri)
    config = small_config(
        digits_shards,
        tmp_path,
        name="outage",
        epochs=3,
        image_size=32,  # epochs long enough that the kill lands between epoch 1 and epoch 2's checkpoint
        tracking_uri=server.uri,
        experiment="outage-test",
        mlflow_timeout_s=2,
        mlflow_retry_interval_s=2.0,
    )
    run_dir = Path(tmp_path) / "outage"

    def run_id() -> str | None:
        exp = client.get_experiment_by_name("outage-test")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return runs[0].info.run_id if runs else None

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(train_and_track, config)
        rid = wait_until(lambda: future.done() or run_id(), 180, "the MLflow run")
        assert not future.done(), future.result()
        wait_until(lambda: future.done() or _epochs(client, rid) == [1], 240, "epoch 1 in MLflow")
        assert not future.done(), "the run ended before the outage"
        server.kill()
        killed = time.time() * 1000
        # Epoch 2's checkpoint is written while the server is down; then it comes back.
        wait_until(lambda: future.done() or (run_dir / "checkpoint_epoch_0002").exists(), 240, "epoch 2")
        server.start()
        outcome = future.result(timeout=300)

    assert [int(h["epoch"]) for h in outcome.history] == [1, 2, 3]
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0001",
        "checkpoint_epoch_0002",
        "checkpoint_epoch_0003",
    ]
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert _epochs(client, rid) == [1, 2, 3], "each epoch exactly once"
    for name in ("val_top1_error", "val_top5_error", "epoch_time_s"):  # epoch-only metrics
        history = client.get_metric_history(rid, name)
        assert sorted(m.step for m in history) == sorted(int(h["step"]) for h in outcome.history), name
    epoch2 = [m for m in client.get_metric_history(rid, "epoch") if m.value == 2]
    assert epoch2[0].timestamp > killed  # measured during the outage, delivered after it
    assert outcome.model_version is None and outcome.model_uri, "best model logged"
    assert outcome.mlflow_closed is True


def test_mlflow_down_at_start_is_refused_in_one_line(digits_shards, ray_local, tmp_path):
    """Nothing is lost yet, so a tracking server that does not answer is a setup error, in seconds."""
    from fixtures.ports import free_port
    from test_train import small_config

    from resnet_platform.tracking.training_run import TrackingUnavailableError

    uri = f"http://127.0.0.1:{free_port()}"
    config = small_config(digits_shards, tmp_path, name="no-server", tracking_uri=uri, mlflow_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=f"MLflow at {uri} is not answering.*--no-mlflow"):
        train_and_track(config)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "no-server").exists(), "refused before Ray Train started"


@pytest.mark.slow
def test_failed_fit_with_mlflow_down_raises_the_real_error(
    digits_shards, ray_local, tmp_path, restartable_mlflow_server, caplog
):
    """The fit fails while MLflow is down: the injected fault comes out, not MLflow's error, after
    two bounded tries to mark the run FAILED and one line saying it stays RUNNING."""
    from test_train import small_config

    from resnet_platform.train import FaultInjection

    server = restartable_mlflow_server
    client = MlflowClient(server.uri)
    config = small_config(
        digits_shards,
        tmp_path,
        name="fails",
        epochs=2,
        num_workers=1,
        tracking_uri=server.uri,
        experiment="outage-fail",
        mlflow_timeout_s=2,
        mlflow_retry_interval_s=2.0,
        fault=FaultInjection(epoch=1, step=0, kind="raise"),
    )
    caplog.set_level(logging.ERROR, logger="resnet_platform.tracking.training_run")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(train_and_track, config)
        wait_until(
            lambda: future.done() or (tmp_path / "fails" / "checkpoint_epoch_0001").exists(), 300, "epoch 1"
        )
        server.kill()
        with pytest.raises(Exception, match="injected fault"):
            future.result(timeout=300)
    lines = [r.getMessage() for r in caplog.records if "could not mark MLflow run" in r.getMessage()]
    assert len(lines) == 1 and "FAILED" in lines[0] and "stays RUNNING" in lines[0], lines
    server.start()
    runs = client.search_runs([client.get_experiment_by_name("outage-fail").experiment_id])
    assert runs[0].info.status == "RUNNING"  # as the line says


def test_training_flags_set_the_mlflow_deadlines_the_platform_applies():
    """--mlflow-timeout-s reaches MLflow's per-request timeout inside the platform's scope (and the
    environment is restored after); --mlflow-retry-interval-s reaches the limits a logger paces its
    retries by (the pacing itself: test_the_retry_interval_paces_...)."""
    import os

    from resnet_platform.tracking.limits import bounded_mlflow_http
    from resnet_platform.train.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--data", "/d", "--mlflow-timeout-s", "3", "--mlflow-retry-interval-s", "7.5"]
    )
    limits = config_from_args(args).tracking_limits()
    assert limits.timeout_s == 3 and limits.retry_interval_s == 7.5
    before = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    with bounded_mlflow_http(limits):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == before


def _counting_dead_server():
    """A loopback port that accepts each connection and closes it unanswered (an MLflow that is
    down behind a proxy); returns (uri, accepted connections so far, stop)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted[0] += 1
            conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", accepted, stop.set


@pytest.mark.parametrize("interval_s,more_contacts", [(60.0, False), (0.0, True)])
def test_the_retry_interval_paces_a_loggers_contacts_with_a_server_that_is_down(interval_s, more_contacts):
    """--mlflow-retry-interval-s: after a failed contact, the logger buffers without calling the
    server again until the interval has passed (60 s: not once over five epochs; 0 s: every epoch)."""
    uri, accepted, stop = _counting_dead_server()
    try:
        limits = TrackingLimits(timeout_s=2, max_retries=0, retry_interval_s=interval_s)
        logger = RunLogger(uri, "0" * 32, limits=limits)  # reads the run's history: the first contact
        after_open = accepted[0]
        assert after_open >= 1
        for epoch in range(1, 6):
            assert logger.log_epoch(epoch, {"val_top1_error": 0.5}, step=epoch)  # buffered
        assert (accepted[0] > after_open) is more_contacts, (after_open, accepted[0])
        assert logger.pending_points > 0
    finally:
        stop()
