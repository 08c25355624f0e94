"""The rule of ``--resume`` and the settings a resume may change (``train/resume.py``), without Ray:
how the flag parses, which mode continues what, and the one line naming the settings that differ."""

from __future__ import annotations

import pytest

from resnet_platform.train import resume
from resnet_platform.train.cli import config_from_args, parse_config
from resnet_platform.train.config import TrainConfig
from resnet_platform.train.runner import RunExistsError, check_run_name, remember_settings


def parsed(*flags: str) -> TrainConfig:
    _, args = parse_config(["--data", "/d", "--arch", "resnet18", *flags])
    return config_from_args(args)


def test_the_flag_defaults_to_auto_and_alone_means_must():
    assert parsed().resume == "auto"
    assert parsed("--resume").resume == "must"
    assert parsed("--resume", "never").resume == "never"
    assert parsed("--checkpoint-every-steps", "50").checkpoint_every_steps == 50
    assert TrainConfig(resume=True).resume == "must" and TrainConfig(resume=False).resume == "never"


@pytest.mark.parametrize(
    ("mode", "exists", "continued"),
    [("auto", True, True), ("auto", False, False), ("must", True, True), ("never", False, False)],
)
def test_each_mode_continues_or_starts(mode, exists, continued):
    assert resume.resolve(mode, exists, "/runs/x", "run", RunExistsError) is continued


def test_must_needs_a_run_and_never_refuses_one():
    with pytest.raises(RunExistsError, match="no run at /runs/x"):
        resume.resolve("must", False, "/runs/x", "run", RunExistsError)
    with pytest.raises(RunExistsError, match="already exists"):
        resume.resolve(False, True, "/runs/x", "run", RunExistsError)  # a sweep's switch, off


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(data="/d", arch="resnet18", storage=str(tmp_path), name="r", num_classes=10)
    return TrainConfig(**{**values, **overrides})


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    first = check_run_name(config(tmp_path, lr=0.1))
    assert first.resume == "never"  # a new run: its settings are stored once its checks passed
    remember_settings(first)
    # What may change on a resume does not count: more epochs, other workers, timeouts, tracking.
    again = check_run_name(
        config(tmp_path, lr=0.1, epochs=120, num_workers=4, data_wait_s=5, tracking_uri="http://x:1")
    )
    assert again.resume == "must"
    with pytest.raises(resume.SettingsChangedError) as caught:
        check_run_name(config(tmp_path, lr=0.2, weight_decay=5e-5))
    message = str(caught.value)
    assert "\n" not in message
    assert "--lr 0.1 -> 0.2" in message and "--weight-decay 0.0001 -> 5e-05" in message
    assert "epochs" not in message and "num-workers" not in message


def test_stored_settings_hold_no_credentials(tmp_path):
    remember_settings(
        check_run_name(config(tmp_path, tracking_uri="https://user:s3cret@mlflow.example:5000"))
    )
    assert "s3cret" not in (tmp_path / "r" / resume.SETTINGS_FILE).read_text()


def test_every_exempt_setting_is_a_setting():
    fields = set(TrainConfig.__dataclass_fields__)
    assert resume.MAY_CHANGE_ON_RESUME <= fields, resume.MAY_CHANGE_ON_RESUME - fields
