"""Ray Tune sweeps: search-space errors, results output, and (slow) real sweeps on the digits with
ASHA, MLflow parent/child runs in a real server, and an interrupted sweep that resumes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.output_lines import foreign_lines

from resnet_platform.train import TrainConfig
from resnet_platform.tune import SearchSpace, SweepConfig, run_sweep
from resnet_platform.tune.cli import build_parser, config_from_args
from resnet_platform.tune.results import _SHOWN, TrialRow, format_table, plot_error_vs_lr, to_csv, to_markdown

# One ASHA sweep (a module fixture) for its tests: they stay in one pytest process.
pytestmark = pytest.mark.xdist_group("asha_sweep")

REPO = Path(__file__).resolve().parents[1]


def base_config(data: str, storage: Path, tracking_uri: str | None = None, **overrides) -> TrainConfig:
    """CIFAR-sized nets on the digits at 16x16; one worker of 0.5 CPU per trial (the rest decodes)."""
    values = dict(
        data=data,
        arch="cifar_resnet20",
        image_size=16,
        epochs=2,
        batch_size=64,
        lr_schedule="cosine",
        augmentation="none",
        num_workers=1,
        cpus_per_worker=0.5,
        storage=str(storage),
        seed=0,
        shuffle_buffer=256,
        experiment="sweeps-test",
        tracking_uri=tracking_uri,
    )
    values.update(overrides)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------ fast: the space


@pytest.mark.parametrize(
    "space, message",
    [
        (SearchSpace(archs=(), lrs=(0.1,)), "at least one architecture"),
        (SearchSpace(archs=("resnet19",), lrs=(0.1,)), "unknown architecture 'resnet19'"),
        (SearchSpace(archs=("resnet18",), lr_min=0.5, lr_max=0.1), "greater than lr-max"),
        (SearchSpace(archs=("resnet18",), lr_min=0.0, lr_max=0.1), "lr-min must be positive"),
        (SearchSpace(archs=("resnet18",)), "empty learning-rate space"),
        (SearchSpace(archs=("resnet18",), lrs=(0.1,), samples=0), "samples must be at least 1"),
        (SearchSpace(archs=("resnet18",), lrs=(0.1, -1.0)), "positive and finite"),
        (SearchSpace(archs=("resnet18",), lrs=(0.1,), batch_sizes=(63,)), "divide evenly"),
    ],
)
def test_invalid_space_is_a_clear_error(space, message):
    with pytest.raises(ValueError, match=message):
        space.validate(workers_per_trial=2)


def test_invalid_space_fails_before_anything_starts(tmp_path):
    """run_sweep checks the space before reading data or starting Ray (the data path does not exist)."""
    config = SweepConfig(
        base=TrainConfig(data=str(tmp_path / "missing"), arch="resnet18", storage=str(tmp_path)),
        space=SearchSpace(archs=("resnet18",), lr_min=1.0, lr_max=0.1),
    )
    with pytest.raises(ValueError, match="greater than lr-max"):
        run_sweep(config)
    assert not any(tmp_path.iterdir())


def test_cli_space_and_errors(capsys):
    parser = build_parser()
    args = parser.parse_args(
        "--data d --archs 18,34 --lr-min 0.01 --lr-max 0.4 --samples 3 --weight-decays 1e-4,5e-5 "
        "--workers-per-trial 2 --epochs 5 --grace-epochs 2".split()
    )
    config = config_from_args(args)
    assert config.space.archs == ("resnet18", "resnet34")
    assert config.space.num_trials == 3 * 2 * 2
    assert config.base.num_workers == 2 and config.grace_epochs == 2
    space = config.space.param_space()
    assert space["arch"] == {"grid_search": ["resnet18", "resnet34"]}
    assert space["weight_decay"] == {"grid_search": [1e-4, 5e-5]}
    for argv, message in [
        ("--data d --lrs 0.1", "at least one architecture"),
        ("--data d --archs resnet18 --lr-min 0.1", "give --lrs, or both"),
        ("--data d --archs resnet18 --lrs 0.1 --epochs 2 --grace-epochs 3", "grace epochs"),
        ("--data d --archs resnet18 --lrs 0.1 --reduction-factor 1", "reduction factor"),
    ]:
        with pytest.raises(ValueError, match=message):
            config_from_args(parser.parse_args(argv.split()))


def test_results_table_and_plot(tmp_path):
    rows = [
        TrialRow("a", "cifar_resnet20", 0.1, 1e-4, 64, 0.12, 2, 2, False, "TERMINATED"),
        TrialRow("b", "cifar_resnet20", 5.0, 1e-4, 64, 0.9, 1, 1, True, "TERMINATED"),
        TrialRow("c", "cifar_plain20", 0.1, 1e-4, 64, 0.2, 2, 2, False, "TERMINATED"),
        TrialRow("d", "cifar_plain20", 5.0, 1e-4, 64, math.nan, 0, 0, False, "ERROR"),
    ]
    table = format_table(rows)
    assert "* a" in table and "yes" in table and table.count("\n") == 4
    assert "**a** (best)" in to_markdown(rows)
    assert to_csv(rows).splitlines()[0].startswith("trial,arch,lr,")
    png = plot_error_vs_lr(rows, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------- slow: real sweeps


# Session scope and the module's xdist_group: one sweep per run of the suite, in the one pytest
# process that runs this module (the sweep was built twice while the groups were ignored: conftest).
@pytest.fixture(scope="session")
def asha_sweep(digits_shards, ray_local, mlflow_server, tmp_path_factory):
    """A good and a diverging learning rate, one trial at a time so ASHA compares them in order.
    ``--checkpoint-every 2`` over 3 epochs: checkpoints at epochs 2 and 3 only, so the best epoch may
    have none (what ``best_recorded_checkpoint`` must handle)."""
    storage = tmp_path_factory.mktemp("sweeps")
    config = SweepConfig(
        base=base_config(digits_shards, storage, mlflow_server.uri, epochs=3, checkpoint_every=2),
        space=SearchSpace(archs=("cifar_resnet20",), lrs=(0.05, 5.0)),
        name="asha",
        grace_epochs=2,  # one rung, at epoch 2: after 1 epoch even good trials validate near chance here
        reduction_factor=2,
        max_concurrent=1,
        register_best="sweep-best",
    )
    return run_sweep(config)


@pytest.mark.slow
def test_sweep_completes_and_asha_stops_bad_trials(asha_sweep):
    rows = asha_sweep.rows
    assert not asha_sweep.interrupted
    assert len(rows) == 2 and all(r.status == "TERMINATED" for r in rows), rows
    assert {(r.arch, r.lr) for r in rows} == {("cifar_resnet20", 0.05), ("cifar_resnet20", 5.0)}
    stopped = [r for r in rows if r.stopped_early]
    assert [r.lr for r in stopped] == [5.0], rows  # compared at the rung with the good trial's result
    assert all(r.epochs_run == 2 for r in stopped)
    assert all(r.epochs_run == 3 for r in rows if not r.stopped_early)
    # The diverging learning rate never wins; the best trial is a good one that ran to the end.
    assert asha_sweep.best.lr == 0.05 and not asha_sweep.best.stopped_early
    assert asha_sweep.best.best_val_top1_error < 0.5
    # Trial storage: one Train run per trial, checkpoints included.
    trials_dir = Path(asha_sweep.path) / "trials"
    assert sorted(p.name for p in trials_dir.iterdir()) == sorted(r.trial for r in rows)
    assert all(list((trials_dir / r.trial).glob("checkpoint_epoch_*")) for r in rows)


@pytest.mark.slow
def test_sweep_parent_and_child_runs_in_mlflow(asha_sweep, mlflow_server):
    from resnet_platform.tracking.runs import client_for

    client = client_for(mlflow_server.uri)
    parent = client.get_run(asha_sweep.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "asha"
    best = asha_sweep.best
    assert parent.data.tags["sweep.best_trial"] == best.trial
    assert parent.data.tags["sweep.best_run_id"] == best.mlflow_run_id
    assert parent.data.metrics["best_val_top1_error"] == pytest.approx(best.best_val_top1_error)
    assert parent.data.metrics["trials_stopped_early"] >= 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_results.md", "sweep_results.csv", "val_error_vs_lr.png"} <= artifacts
    table = client.download_artifacts(parent.info.run_id, "sweep_results.md")
    assert "(best)" in Path(table).read_text()

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == len(asha_sweep.rows)
    by_trial = {c.data.tags["sweep.trial_id"]: c for c in children}
    for row in asha_sweep.rows:
        child = by_trial[row.trial]
        assert child.info.run_id == row.mlflow_run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["sweep.stopped_early"] == str(row.stopped_early).lower()
        epochs = [m.value for m in client.get_metric_history(child.info.run_id, "epoch")]
        assert epochs == [float(e) for e in range(1, row.epochs_run + 1)]  # rank 0 logged every epoch
        assert child.data.metrics["val_top1_error"] == pytest.approx(
            [m.value for m in client.get_metric_history(child.info.run_id, "val_top1_error")][-1]
        )
    assert by_trial[best.trial].data.tags["sweep.best"] == "true"
    # Only the best trial logs a model, and it is registered.
    versions = client.search_model_versions("name = 'sweep-best'")
    assert len(versions) == 1 and versions[0].run_id == best.mlflow_run_id
    assert asha_sweep.model_version == versions[0].version
    for row in asha_sweep.rows:
        if row.trial != best.trial:
            assert not client.search_logged_models(
                experiment_ids=[parent.info.experiment_id],
                filter_string=f"source_run_id = '{row.mlflow_run_id}'",
            )


# The sweep's report (tune/sweep.py format_report): its table, then a line per fact.
SWEEP_REPORT_LINES = (
    rf"\s*(?:\* )?[\w-]+(?:\s{{2,}}\S+){{{len(_SHOWN) - 1}}}",
    r"sweep: .*|MLflow parent run: \w+|interrupted: rerun with --resume .*|best: trial .*",
)


def _sweep_cmd(data: str, storage: Path, tracking_uri: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "sweep_resnet.py"),
        *f"--data {data} --archs cifar_resnet20 --lrs 0.05,0.1 --epochs 2 --image-size 16 "
        f"--augmentation none --batch-size 64 --workers-per-trial 1 --cpus-per-worker 0.5 "
        f"--max-concurrent 1 --grace-epochs 2 --seed 0 --name interrupted --experiment sweeps-resume-test".split(),
        "--storage",
        str(storage),
        "--tracking-uri",
        tracking_uri,
        *extra,
    ]


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
    digits_shards, ray_local, mlflow_server, tmp_path
):
    """SIGTERM (a scheduler's stop; the job takes Tune's own Ctrl-C path, stopping.py) the sweep once
    its first trial has finished and the second is under way;
    --resume then runs the second to the end and leaves the first alone."""
    from resnet_platform.tracking.runs import client_for

    client = client_for(mlflow_server.uri)
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _sweep_cmd(digits_shards, tmp_path, mlflow_server.uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def children():
        exp = client.get_experiment_by_name("sweeps-resume-test")
        if exp is None:
            return []
        return client.search_runs([exp.experiment_id], filter_string="tags.`sweep.name` = 'interrupted'")

    try:
        deadline = time.monotonic() + 300
        while True:  # the second child run exists: the first trial is done (one trial at a time)
            kids = [r for r in children() if "sweep.trial_id" in r.data.tags]
            if len(kids) == 2 or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(kids) == 2, log_path.read_text()[-4000:]
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 3, log_path.read_text()[-4000:]  # "interrupted: rerun with --resume"
    # Written to a file at default verbosity: only the platform's lines (no Tune boxes or tables, no
    # "View detailed results here", no Ray Data progress bars, no Ray core lines).
    foreign = foreign_lines(log_path.read_text(errors="replace"), extra=SWEEP_REPORT_LINES)
    assert not foreign, foreign[:20]
    first = min(kids, key=lambda r: r.info.start_time)
    first = client.get_run(first.info.run_id)
    assert first.info.status == "FINISHED"
    first_trial = first.data.tags["sweep.trial_id"]

    resumed = subprocess.run(
        _sweep_cmd(digits_shards, tmp_path, mlflow_server.uri, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "best:" in resumed.stdout

    kids = [r for r in children() if "sweep.trial_id" in r.data.tags]
    assert len(kids) == 2  # the interrupted trial reopened its own child run
    assert all(k.info.status == "FINISHED" for k in kids)
    for kid in kids:
        epochs = [m.value for m in client.get_metric_history(kid.info.run_id, "epoch")]
        assert epochs == [1.0, 2.0], (kid.data.tags["sweep.trial_id"], epochs)
    # The finished trial was not rerun: its Tune results were not repeated (a rerun appends its
    # epochs again), and its MLflow run holds each epoch once (above). (Tune's own "trial ... started"
    # lines are not read: a restored experiment keeps the first run's output settings, silent here.)
    results = list((tmp_path / "interrupted").glob(f"*{first_trial}*/result.json"))
    assert len(results) == 1 and len(results[0].read_text().splitlines()) == 2
    parents = [r for r in children() if r.data.tags.get("sweep.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


@pytest.mark.slow
def test_best_checkpoint_is_the_one_ray_train_recorded_with_its_own_metrics(asha_sweep):
    """With --checkpoint-every 2 the best epoch may have no checkpoint: the sweep must register the
    checkpoint Ray Train recorded as best and log that checkpoint's metrics, not the best epoch's."""
    from resnet_platform import storage
    from resnet_platform.train.checkpoint import load_checkpoint
    from resnet_platform.tune.sweep import best_recorded_checkpoint

    run_dir = Path(asha_sweep.path) / "trials" / asha_sweep.best.trial
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0002",
        "checkpoint_epoch_0003",
    ]
    history = load_checkpoint(run_dir / "checkpoint_epoch_0003")["history"]
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    # A half-written directory, as an interrupted upload leaves: a storage listing would take it.
    (run_dir / "checkpoint_epoch_0004").mkdir()
    try:
        fs, path = storage.resolve(str(run_dir))
        checkpoint, metrics = best_recorded_checkpoint(fs, path)
    finally:
        (run_dir / "checkpoint_epoch_0004").rmdir()
    checkpointed = [h for h in history if int(h["epoch"]) in (2, 3)]
    expected = min(checkpointed, key=lambda h: h["val_top1_error"])
    assert int(metrics["epoch"]) == int(expected["epoch"])
    assert metrics["val_top1_error"] == pytest.approx(expected["val_top1_error"])
    assert Path(checkpoint.path).name == f"checkpoint_epoch_{int(expected['epoch']):04d}"
    with checkpoint.as_directory() as directory:
        assert load_checkpoint(directory)["epoch"] == int(metrics["epoch"])  # the weights' own metrics
    assert best_recorded_checkpoint(fs, str(run_dir.parent / "no-such-trial")) is None
