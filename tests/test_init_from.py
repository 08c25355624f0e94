"""--init-from and --freeze without Ray: torchvision's own state dicts load, other architectures are
refused in one line, the head is replaced when the class count differs, frozen parts stay as loaded."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_platform.models import build_model
from resnet_platform.models.freeze import FrozenBatchNorm2d, freeze, parse_freeze, parts
from resnet_platform.train import TrainConfig
from resnet_platform.train.init_from import InitFromError, apply, prepare
from resnet_platform.train.optim import build_optimizer


def _config(source, **overrides) -> TrainConfig:
    values = dict(data="unused", arch="resnet50", num_classes=1000, init_from=str(source), num_workers=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory):
    """torchvision's resnet50() (random weights: the keys and shapes are what is tested), saved as a
    user's own copy of its weights would be."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def test_torchvision_resnet50_state_dict_loads_into_the_platforms_resnet50(torchvision_resnet50):
    path, expected = torchvision_resnet50
    config, origin = prepare(_config(path))
    assert origin.checkpoint == str(path) and config.init_from == str(path)
    model = apply(build_model("resnet50", 1000), config)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)  # every tensor, the fc included


def test_another_class_count_replaces_the_head_only(torchvision_resnet50):
    path, expected = torchvision_resnet50
    config, _ = prepare(_config(path, num_classes=10))
    torch.manual_seed(1)
    fresh = build_model("resnet50", 10)
    head = fresh.fc.weight.detach().clone()
    model = apply(fresh, config)
    assert model.fc.weight.shape == (10, 2048) and torch.equal(model.fc.weight, head)  # the new head
    assert torch.equal(model.layer4[2].conv3.weight, expected["layer4.2.conv3.weight"])


def test_another_architecture_is_one_line_naming_it(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(InitFromError) as err:
        prepare(_config(path))
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert "holds a resnet18 state dict, not resnet50" in message and "more differences" in message


def test_missing_source_and_bad_freeze_are_one_line(tmp_path, torchvision_resnet50):
    with pytest.raises(InitFromError, match="no such file or checkpoint folder"):
        prepare(_config(tmp_path / "nope.pth"))
    with pytest.raises(InitFromError, match="no part 'layer5'.*stem, layer1, layer2, layer3, layer4, head"):
        prepare(_config(torchvision_resnet50[0], freeze="layer5"))
    with pytest.raises(InitFromError, match="--freeze needs --init-from"):
        prepare(_config(None, init_from=None, freeze="stem"))


def test_freeze_all_but_head_leaves_backbone_and_bn_statistics_untouched():
    model = build_model("cifar_resnet20", 10)
    assert parse_freeze("all-but-head", parts(model)) == ("stem", "layer1", "layer2", "layer3")
    frozen = freeze(model, parse_freeze("all-but-head", parts(model)))
    assert frozen and not any(name.startswith("fc.") for name in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(data="x", arch="cifar_resnet20", num_workers=1, lr=0.5, head_lr_factor=10.0)
    optimizer = build_optimizer(model, config)
    assert [g["lr"] for g in optimizer.param_groups] == [5.0]  # only the head trains, at 10x the rate
    model.train()
    assert isinstance(model.bn1, FrozenBatchNorm2d) and not model.bn1.training
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.arange(8)).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_head_lr_factor_keeps_the_backbone_rate_first():
    model = build_model("cifar_resnet20", 10)
    config = TrainConfig(data="x", arch="cifar_resnet20", num_workers=1, lr=0.1, head_lr_factor=5.0)
    groups = build_optimizer(model, config).param_groups
    assert [round(g["lr"], 6) for g in groups] == [0.1, 0.5]
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
