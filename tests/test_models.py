"""The paper's networks: exact torchvision compatibility, Table 1 FLOPs, Table 6 params, options."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_platform.models import build_model, complexity, count_params, list_archs
from resnet_platform.models.resnet import ZeroPadShortcut

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
TABLE1_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
TABLE6_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


@pytest.mark.parametrize("arch,expected", TORCHVISION_PARAMS.items())
def test_param_counts_equal_torchvision(arch, expected):
    assert complexity(arch).params == expected


@pytest.mark.parametrize("depth,paper", TABLE1_GFLOPS.items())
def test_v1_flops_within_3_percent_of_table1(depth, paper):
    stride = "v1" if depth >= 50 else "v1.5"
    gflops = complexity(f"resnet{depth}", stride=stride).gflops
    assert abs(gflops - paper) / paper < 0.03, gflops


def test_v15_costs_more_than_v1_for_bottlenecks():
    assert complexity("resnet50").gflops > complexity("resnet50", stride="v1").gflops * 1.05


@pytest.mark.parametrize("depth,paper", TABLE6_PARAMS_M.items())
def test_cifar_params_within_3_percent_of_table6(depth, paper):
    params_m = complexity(f"cifar_resnet{depth}").params / 1e6
    assert abs(params_m - paper) / paper < 0.03, params_m


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_and_outputs_match(arch):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)().eval()
    ours = build_model(arch).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["resnet101", "resnet152"])
def test_deep_state_dict_keys_and_shapes_match_torchvision(arch):
    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)().state_dict()
        ours = build_model(arch).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


@pytest.mark.parametrize("arch", ["plain18", "plain50", "cifar_plain20"])
def test_plain_nets_have_no_shortcut_path(arch):
    model = build_model(arch)
    assert not any("downsample" in name for name, _ in model.named_modules() if name)
    assert not any(isinstance(m, ZeroPadShortcut) for m in model.modules())
    # Without a shortcut, zeroing a block's branch kills the signal (no identity path around it).
    block = model.layer1[0]
    torch.nn.init.zeros_(block.last_bn().weight)
    torch.nn.init.zeros_(block.last_bn().bias)
    x = torch.randn(1, 3, 32, 32)
    out = block.eval()(model.relu(model.bn1.eval()(model.conv1(x))))
    assert torch.count_nonzero(out) == 0


def test_residual_block_with_zeroed_branch_is_identity():
    model = build_model("resnet18", zero_init_residual=True).eval()
    block = model.layer1[1]
    x = torch.relu(torch.randn(1, 64, 8, 8))
    torch.testing.assert_close(block(x), x)


def test_option_a_adds_no_parameters_and_c_adds_most():
    a, b, c = (count_params(build_model("resnet34", shortcut=s)) for s in "ABC")
    with torch.device("meta"):
        plain = count_params(build_model("plain34"))
    assert a == plain
    assert plain < b < c
    assert any(isinstance(m, ZeroPadShortcut) for m in build_model("resnet34", shortcut="A").modules())


def test_cifar_default_is_option_a():
    assert count_params(build_model("cifar_resnet20")) == count_params(build_model("cifar_plain20"))


@pytest.mark.parametrize("arch", ["resnet18", "plain34", "resnet50", "cifar_resnet20", "cifar_plain56"])
def test_forward_shapes(arch):
    model = build_model(arch, num_classes=7).eval()
    size = 32 if arch.startswith("cifar") else 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_option_a_bottleneck_forward_works():
    model = build_model("resnet50", shortcut="A", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_list_archs_covers_the_paper():
    archs = list_archs()
    for d in (18, 34, 50, 101, 152):
        assert f"resnet{d}" in archs and f"plain{d}" in archs
    for d in (20, 32, 44, 56, 110, 1202):
        assert f"cifar_resnet{d}" in archs and f"cifar_plain{d}" in archs


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50") as err:
        build_model("resnet51")
    assert "cifar_resnet110" in str(err.value) and "resnet51" in str(err.value)


@pytest.mark.parametrize(
    "arch,options,message",
    [
        ("plain18", {"shortcut": "B"}, "plain"),
        ("resnet18", {"shortcut": "D"}, "shortcut"),
        ("resnet18", {"stride": "v1"}, "basic blocks"),
        ("cifar_resnet20", {"stride": "v1"}, "basic blocks"),
        ("resnet50", {"stride": "v2"}, "stride"),
        ("plain50", {"zero_init_residual": True}, "plain"),
        ("resnet18", {"num_classes": 0}, "num_classes"),
    ],
)
def test_impossible_options_raise_clear_errors(arch, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, **options)
