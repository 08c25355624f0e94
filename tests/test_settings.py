"""Flags generated from the config dataclasses: one declaration per setting, no drift."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from resnet_platform.paper.reproduce import ReproduceConfig
from resnet_platform.settings import add_flags, flag_fields, setting, values_from_args
from resnet_platform.train.cli import build_parser, config_from_args
from resnet_platform.train.config import FLAG_GROUPS, TrainConfig
from resnet_platform.tune.cli import build_parser as sweep_parser
from resnet_platform.tune.cli import config_from_args as sweep_config


def test_every_training_setting_is_a_flag_and_defaults_round_trip():
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in flag_fields(TrainConfig)} <= dests
    config = config_from_args(parser.parse_args(["--data", "/d"]))
    fresh = TrainConfig(data="/d")
    for f in flag_fields(TrainConfig):
        assert getattr(config, f.name) == getattr(fresh, f.name), f.name


def test_flags_set_their_fields_with_types():
    args = build_parser().parse_args(
        ["--data", "/d", "--lr-milestones", "10,20,25", "--no-channels-last", "--lr", "0.2", "--decode", "gpu",
         "--data-node-label", "role=data", "--arch", "resnet18", "--num-workers", "4", "--batch-size", "512"]
    )  # fmt: skip
    c = config_from_args(args)
    assert c.lr_milestones == (10, 20, 25) and c.channels_last is False and c.lr == 0.2
    assert (
        c.decode == "gpu" and c.data_node_label == "role=data" and c.arch == "resnet18" and c.num_workers == 4
    )


def test_choices_come_from_the_code_they_name():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "/d", "--shortcut", "D"])
    action = next(a for a in parser._actions if a.dest == "shortcut")
    from resnet_platform.models.resnet import SHORTCUT_OPTIONS

    assert list(action.choices) == list(SHORTCUT_OPTIONS)
    aug = next(a for a in parser._actions if a.dest == "augmentation")
    assert "pad-crop" in aug.choices and "pad-crop" in aug.help


def test_a_new_setting_is_one_line():
    @dataclasses.dataclass
    class Config:
        alpha: float = setting(0.5, "mixing weight", group="g")
        beta: tuple[int, ...] = setting((1, 2), "sizes", group="g")
        hidden: int = setting(3, group="g", cli=False)

    p = argparse.ArgumentParser()
    add_flags(p, Config, groups={"g": "group"})
    values = values_from_args(p.parse_args(["--alpha", "0.25", "--beta", "4,5"]), Config)
    assert Config(**values) == Config(alpha=0.25, beta=(4, 5))
    assert "hidden" not in values


def test_sweep_and_paper_jobs_reuse_the_training_settings():
    args = sweep_parser().parse_args(["--data", "/d", "--archs", "18", "--lrs", "0.1", "--decode", "gpu"])
    config = sweep_config(args)
    assert config.base.decode == "gpu" and config.base.lr_schedule == "cosine"  # the sweep's own default
    assert config.base.name is None  # --name names the sweep, not each trial's run
    paper_fields = {f.name for f in flag_fields(ReproduceConfig)}
    assert {"data_node_label", "data_node_resource", "depths", "epochs"} <= paper_fields
    assert set(FLAG_GROUPS) >= {"data", "model", "optimization", "execution", "checkpoints", "tracking"}
