"""The degradation job (jobs/degradation.py): config and CLI, the verdict, the table and the figure
on made-up results, and (slow) the whole job at a tiny budget. The ordering itself needs a real
budget: BENCHMARKS.md, "Degradation at small scale"."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_platform.paper.degradation import (
    TABLE_COLUMNS,
    DegradationConfig,
    SeedResult,
    data_source,
    summarize,
    trial_label,
    trial_outcome,
    verdict,
    write_outputs,
)
from resnet_platform.paper.tables import TrialResult
from resnet_platform.train.optim import lr_factor

REPO = Path(__file__).resolve().parents[1]
LABELS = ["plain-20", "plain-56", "ResNet-20", "ResNet-56"]


def load_job():
    sys.path.insert(0, str(REPO / "jobs"))
    spec = importlib.util.spec_from_file_location("degradation_job", REPO / "jobs" / "degradation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _history(final_train: float, final_test: float, epochs: int = 3, steps: int = 12) -> list[dict]:
    return [
        {
            "epoch": e,
            "step": steps * e,
            "train_top1_error": final_train + 0.3 / e - 0.1,
            "val_top1_error": final_test + 0.3 / e - 0.1,
        }
        for e in range(1, epochs + 1)
    ]


def _results(train: dict[str, list[float]]) -> list[SeedResult]:
    """SeedResults with the given last-epoch training errors per arch (one per seed)."""
    out = []
    for arch, errors in train.items():
        for seed, err in enumerate(errors):
            result = TrialResult(arch, 270_000 if arch.endswith("20") else 850_000, err + 0.02, err)
            result.history = _history(err, err + 0.02)
            out.append(SeedResult(seed, 10.0 + seed, result))
    return out


ORDERED = {
    "cifar_plain20": [0.05, 0.06, 0.04],
    "cifar_plain56": [0.20, 0.25, 0.15],
    "cifar_resnet20": [0.03, 0.02, 0.04],
    "cifar_resnet56": [0.03, 0.035, 0.03],
}


def test_cli_flags_come_from_the_config():
    job = load_job()
    args = job.build_parser().parse_args(
        ["--seeds", "3,4", "--epochs", "5", "--warmup-epochs", "0", "--digits-size", "16", "--no-mlflow"]
    )
    from resnet_platform.settings import values_from_args

    config = DegradationConfig(track=not args.no_mlflow, **values_from_args(args, DegradationConfig))
    assert config.seeds == (3, 4) and config.epochs == 5 and config.digits_size == 16 and not config.track
    assert config.archs == ["cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56"]
    assert config.warmup_overrides() == {}  # --warmup-epochs 0: the paper's recipe to the letter
    default = DegradationConfig()
    assert default.data == "digits" and default.resolved_augmentation == "none"
    assert default.resolved_warmup_epochs == 3  # a quarter of the 12 epochs
    assert DegradationConfig(epochs=16).resolved_warmup_epochs == 4
    with pytest.raises(SystemExit):
        job.build_parser().parse_args(["--augmentation", "rrc"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depths": (20,)},
        {"depths": (20, 57)},
        {"seeds": ()},
        {"seeds": (1, 1)},
        {"epochs": 0},
        {"train_rows": 0},
        {"epochs": 8, "warmup_epochs": 4},  # would still ramp when the rate is first divided
        {"warmup_epochs": -1},
    ],
)
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        DegradationConfig(**kwargs)


def test_data_sources(tmp_path):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.json").write_text("{}")
    (tmp_path / "cifar.tar.gz").write_bytes(b"x")
    assert data_source("digits") == "digits"
    assert data_source(str(tmp_path / "prepared")) == "prepared"
    assert data_source(str(tmp_path / "cifar.tar.gz")) == "cifar"
    assert data_source(str(tmp_path / "missing")) == "cifar"  # check_cifar_source then names it


def test_digits_in_memory_are_the_demos_split(tmp_path):
    from resnet_platform.data.digits import DIGIT_WNIDS, digits_arrays, write_digits_imagenet

    train_x, train_y, val_x, val_y = digits_arrays(size=16)
    assert (
        train_x.shape == (1438, 16, 16, 3) and val_x.shape == (359, 16, 16, 3) and train_x.dtype == np.uint8
    )
    layout = write_digits_imagenet(tmp_path / "digits", size=16)
    assert (layout.train_images, layout.val_images) == (1438, 359)
    per_class = [len(list((tmp_path / "digits" / "val" / w).glob("*.JPEG"))) for w in DIGIT_WNIDS]
    assert per_class == np.bincount(val_y, minlength=10).tolist()


def test_each_net_gets_the_scaled_recipe_on_the_platforms_training_path(tmp_path, monkeypatch):
    """Which function trains, with what config: the digits through recipe.train_cifar (in memory),
    a prepared data set through train.main.train_and_track; no Ray here (both are replaced)."""
    from resnet_platform.data.manifest import Manifest, SplitManifest, write_manifest
    from resnet_platform.paper import degradation, recipe
    from resnet_platform.train import main as train_main
    from resnet_platform.train.runner import TrainingOutcome

    history = [{"epoch": 1, "step": 12, "lr": 0.1, "train_top1_error": 0.5, "val_top1_error": 0.6}]
    seen = {}

    def fake_train_cifar(data, *, cifar, track, measure_responses, epochs, **overrides):
        seen["digits"] = recipe.cifar_config(
            data, train_rows=len(cifar.train_labels), epochs=epochs, **overrides
        )
        seen["rows"] = cifar.train_images.shape
        outcome = TrainingOutcome("n", "p", history, None, {})
        return recipe.CifarRun(outcome, seen["digits"], 123, 0.6, None)

    def fake_train_and_track(config, *, track):
        seen["prepared"] = config
        return TrainingOutcome("n", "p", history, None, {})

    monkeypatch.setattr(recipe, "train_cifar", fake_train_cifar)
    monkeypatch.setattr(train_main, "train_and_track", fake_train_and_track)
    cfg = DegradationConfig(epochs=8, storage=str(tmp_path / "runs"), name="g", train_rows=100, track=False)
    r = degradation.train_net(cfg, "cifar_resnet56", seed=2)
    c = seen["digits"]
    assert seen["rows"] == (100, 16, 16, 3) and r.result.train_error == 0.5 and r.result.test_error == 0.6
    assert (c.epochs, c.lr_milestones, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        8,
        (4, 6),
        128,
        0.1,
        0.9,
        1e-4,
    )
    assert c.augmentation == "none" and c.seed == 2 and c.resume == "never"
    assert c.name == "cifar_resnet56-seed2" and c.storage == f"{tmp_path / 'runs'}/g"
    # The rate every epoch gets, from the schedule the training loop steps (train/optim.py): a ramp
    # from 0.01 over the first quarter, then the recipe's 0.1 /10 at epochs 4 and 6.
    resnet_rates = [round(c.lr * lr_factor(e, c), 6) for e in range(c.epochs)]
    assert resnet_rates == [0.01, 0.055, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert c.error_warmup_lr is None  # the ramp replaces the paper's 0.01-until-80% rule
    degradation.train_net(cfg, "cifar_plain56", seed=0)
    plain = seen["digits"]
    assert [round(plain.lr * lr_factor(e, plain), 6) for e in range(8)] == resnet_rates  # every net alike

    letter = replace(cfg, warmup_epochs=0, depths=(20, 110))  # the paper's recipe: 0.01 until 80%, 110 only
    degradation.train_net(letter, "cifar_resnet110", seed=0)
    assert seen["digits"].error_warmup_lr == 0.01 and seen["digits"].warmup_epochs == 0
    degradation.train_net(letter, "cifar_resnet20", seed=0)
    assert seen["digits"].error_warmup_lr is None and seen["digits"].warmup_epochs == 0

    (tmp_path / "runs" / "g" / "cifar_plain20-seed0").mkdir(parents=True)  # a retried trial
    shards = str(tmp_path / "shards")
    write_manifest(
        shards,
        Manifest(
            classes=list("abc"),
            class_names=list("abc"),
            splits={"train": SplitManifest(256), "val": SplitManifest(50)},
        ),
    )
    cfg = replace(cfg, data=shards, train_rows=None)
    r = degradation.train_net(cfg, "cifar_plain20", seed=0)
    c = seen["prepared"]
    assert c.data == shards and c.epochs == 8 and c.lr_milestones == (4, 6) and c.augmentation == "pad-crop"
    assert c.resume == "must" and c.warmup_epochs == 2 and c.error_warmup_lr is None and r.result.params > 0


def test_verdict_on_means_and_seed_by_seed():
    v = verdict(summarize(_results(ORDERED)), margin=0.01)
    assert v["ordering_holds"] and v["plain"]["holds"] and v["resnet"]["holds"]
    assert v["plain"]["seeds_holding"] == 3 and v["resnet"]["seeds_holding"] == 2  # seed 1: 3.5% > 2% + 1
    assert v["resnet"]["deep_train_error"] == pytest.approx(np.mean(ORDERED["cifar_resnet56"]))
    deep_resnet_worse = dict(ORDERED, cifar_resnet56=[0.10, 0.12, 0.11])
    v = verdict(summarize(_results(deep_resnet_worse)), margin=0.01)
    assert v["plain"]["holds"] and not v["resnet"]["holds"] and not v["ordering_holds"]
    no_degradation = dict(ORDERED, cifar_plain56=[0.04, 0.05, 0.04])
    assert not verdict(summarize(_results(no_degradation)), margin=0.01)["ordering_holds"]


def test_progress_lines_name_the_net_and_what_it_reached():
    assert trial_label({"arch": "cifar_plain56", "seed": 2}) == "plain-56 seed 2"
    assert trial_label({"arch": "cifar_resnet110", "seed": 0}) == "ResNet-110 seed 0"
    reached = {"train_error": 0.0035, "test_error": 0.0195, "time_total_s": 95.2}
    assert trial_outcome(reached) == "training error 0.35%, test error 1.95% (95 s)"
    assert trial_outcome({}) == "finished"  # a trial that reported nothing


def check_outputs(out: Path, *, epochs: int, seeds: int) -> dict:
    """What the job writes: the figure (two panels with data), the table (4 rows), results.json."""
    png = out / "figure6.png"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape[1] > 2 * rgb.shape[0] // 2  # wide: two panels side by side
    colored = (rgb.max(axis=2) - rgb.min(axis=2)) > 60  # the curves (gray grid and black text are not)
    half = rgb.shape[1] // 2
    assert colored[:, :half].sum() > 200 and colored[:, half:].sum() > 200, "a panel has no curves"
    panels = json.loads((out / "figure6.json").read_text())
    assert set(panels) == {"plain", "resnet"}
    assert set(panels["plain"]) == {"plain-20", "plain-56"} and set(panels["resnet"]) == {
        "ResNet-20",
        "ResNet-56",
    }
    for series in (s for p in panels.values() for s in p.values()):
        assert len(series["iterations"]) == len(series["train_error"]) == len(series["test_error"]) == epochs
        assert all(0 <= e <= 1 for e in series["train_error"] + series["test_error"])
        assert series["iterations"] == sorted(series["iterations"]) and series["iterations"][0] > 0

    md = (out / "table.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == list(TABLE_COLUMNS)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == LABELS
    for r in rows:
        assert len(r) == len(TABLE_COLUMNS) and " ± " in r[3] and " ± " in r[4]
        assert len(r[5].split(" / ")) == seeds and r[6] == str(seeds)
    assert "ordering" in md and "Wall time" in md

    results = json.loads((out / "results.json").read_text())
    assert len(results["nets"]) == 4 and len(results["trials"]) == 4 * seeds
    assert isinstance(results["verdict"]["ordering_holds"], bool) and results["wall_s"] > 0
    return results


def test_outputs_from_made_up_results(tmp_path):
    config = DegradationConfig(output=str(tmp_path / "out"), track=False, name="made-up")
    outcome = write_outputs(config, _results(ORDERED), wall_s=12.5)
    results = check_outputs(tmp_path / "out", epochs=3, seeds=3)
    assert outcome.verdict["ordering_holds"] and results["verdict"]["ordering_holds"]
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| plain-56 | 56 | 0.85M | 20.00 ± 5.00 |" in md and "20.00 / 25.00 / 15.00" in md
    assert "**The paper's ordering holds**" in md and "8.75" in md and "6.97" in md


@pytest.mark.slow
def test_degradation_job_at_a_tiny_budget(tmp_path, ray_local, mlflow_server, caplog, capsys):
    """The whole job (CLI, Tune grid, Ray Train, MLflow) on 64 digits at 8x8 for three epochs: the
    outputs exist and are well formed, and every net trained at the recipe's rates with the warm-up.
    The console shows the job's own line per trial, not Tune's tables. In-process on the session's
    Ray (2 CPUs); 4 nets at once."""
    from mlflow import MlflowClient

    # Through the root logger, as a user's own log config would receive them (pytest's capture
    # handler is also on the non-propagating "ray.data" logger: _compat must leave its level alone).
    caplog.set_level(logging.INFO, logger="resnet_platform.tune.trials")
    out = tmp_path / "out"
    rc = load_job().main(
        [
            "--train-rows", "64", "--digits-size", "8", "--epochs", "3", "--warmup-epochs", "1", "--seeds", "0",
            "--batch-size", "32", "--max-concurrent-trials", "4", "--cpus-per-worker", "0.2",
            "--storage", str(tmp_path / "runs"), "--name", "tiny", "--output", str(out),
            "--tracking-uri", mlflow_server.uri, "--experiment", "degradation-test",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr()
    assert "Trial status" not in printed.out + printed.err  # Tune's tables are off without --verbose
    lines = [r.getMessage() for r in caplog.records if r.name == "resnet_platform.tune.trials"]
    for label in LABELS:
        assert f"{label} seed 0: started" in lines
        assert any(line.startswith(f"{label} seed 0: training error ") for line in lines), lines
    assert any(line.endswith("(4 of 4 done)") for line in lines)
    results = check_outputs(out, epochs=3, seeds=1)
    assert all(t["result"]["history"][0]["step"] == 2 for t in results["trials"])  # 64 rows / batch 32
    # The rate each epoch trained at, as the training loop logged it: the warm-up's 0.01 for plain and
    # residual nets alike, then 0.1, divided by 100 by the third epoch (1/2 and 3/4 of 3 round to 2).
    for trial in results["trials"]:
        rates = [round(h["lr"], 6) for h in trial["result"]["history"]]
        assert rates == [0.01, 0.1, 0.001], (trial["result"]["arch"], rates)

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("degradation-test").experiment_id])
    assert {r.info.run_name for r in runs} == {f"{a}-seed0" for a in DegradationConfig().archs} | {
        "tiny-summary"
    }
    assert all(r.info.status == "FINISHED" for r in runs)
    summary = next(r for r in runs if r.info.run_name == "tiny-summary")
    assert {"figure6.png", "figure6.json", "table.md", "results.json"} <= {
        a.path for a in client.list_artifacts(summary.info.run_id)
    }
    assert {f"train_error_{a}" for a in DegradationConfig().archs} <= set(summary.data.metrics)
    assert summary.data.metrics["ordering_holds"] in (0.0, 1.0)


@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 7, 8, 12, 13, 16, 164])
def test_one_lr_division_formula_pins_cifar_config_and_the_warmup_check(epochs):
    """``schedule.milestones_at`` is where both callers get the epochs of the lr divisions: the
    recipe's step schedule, and the degradation job's rule that a warm-up ends before the first."""
    from resnet_platform.paper.recipe import cifar_config
    from resnet_platform.paper.schedule import milestones_at

    divisions = milestones_at(epochs)
    assert divisions == (max(1, round(epochs / 2)), max(1, round(epochs * 3 / 4)))  # 1/2 and 3/4
    assert cifar_config("/d", train_rows=100, epochs=epochs).lr_milestones == divisions
    first = divisions[0]
    with pytest.raises(ValueError, match=f"first lr division \\(epoch {first} of {epochs}\\)"):
        DegradationConfig(epochs=epochs, warmup_epochs=first)
    assert DegradationConfig(epochs=epochs, warmup_epochs=first - 1).resolved_warmup_epochs == first - 1


@pytest.mark.slow  # a fresh interpreter importing torch: 10-20 s on 2 busy cores
def test_the_degradation_config_imports_no_training_stack():
    """What 6aabccd's function-level ``from .recipe import milestones_at`` did: checking a config
    imported paper/recipe.py and with it Ray Train, the tracking runs and MLflow. The formula now
    lives in paper/schedule.py (no imports). In a fresh interpreter."""
    code = (
        "import sys\n"
        "from resnet_platform.paper.degradation_config import DegradationConfig\n"
        "DegradationConfig(epochs=8, warmup_epochs=3)\n"
        "print(sorted(m for m in ('mlflow', 'ray.train', 'resnet_platform.paper.recipe') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "platform")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_failed_trials_are_one_line_when_the_user_can_fix_them_and_keep_rays_text_otherwise(tmp_path):
    """``paper/grid.collect_results`` on Ray's own wrapper of a trial's exception (a ``RayTaskError``
    as Tune's ``Result.error`` holds it): a user's error becomes one line naming the trial."""
    from types import SimpleNamespace

    from ray.exceptions import RayTaskError

    from resnet_platform.errors import ConfigError
    from resnet_platform.paper.grid import TrialsFailedError, collect_results

    def failed(cause: Exception, seed: int):
        error = RayTaskError(
            "train", "Traceback (most recent call last):\n  ...", cause
        ).as_instanceof_cause()
        return SimpleNamespace(error=error, config={"arch": "cifar_plain20", "seed": seed}, checkpoint=None)

    user = [failed(ConfigError("--lr must be more than 0, got 0.0"), seed) for seed in (0, 1)]
    with pytest.raises(TrialsFailedError) as caught:
        collect_results(user, "result.json", trial_label)
    assert str(caught.value) == (
        "2 of 2 trials failed: plain-20 seed 0: --lr must be more than 0, got 0.0; "
        "plain-20 seed 1: --lr must be more than 0, got 0.0"
    )
    with pytest.raises(RuntimeError, match="^trials failed: plain-20 seed 0: ") as caught:
        collect_results([user[0], failed(KeyError("a bug"), 0)], "result.json", trial_label)
    assert not isinstance(caught.value, TrialsFailedError)
