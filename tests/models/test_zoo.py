"""Every registered zoo model: builds, runs at 224/32/28 px, traces with torch.fx, known sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.models import create_model, list_models, register_model
from edgecompress.models import registry
from edgecompress.models.blocks import ChannelShuffle, InvertedResidual, ShuffleUnitV1, make_divisible

torch.set_num_threads(1)

ALL = list_models()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one input of `shape`."""
    total = 0

    def hook(m, _inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def test_registry_lists_every_family():
    assert ALL == sorted(ALL)
    assert {"mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2", "squeezenet"} <= set(ALL)
    assert {"resnet20", "resnet32", "resnet56"} <= set(ALL)
    assert list_models("*shuffle*") == ["shufflenet_v1", "shufflenet_v1_g8", "shufflenet_v2"]
    assert list_models("resnet*") == ["resnet20", "resnet32", "resnet56"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", ALL)
def test_forward_at_224(name):
    model = create_model(name, num_classes=7, input_size=224).eval()
    assert model.input_shape == (3, 224, 224)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_small_input_keeps_a_spatial_map(name, in_channels, size):
    model = create_model(name, num_classes=10, in_channels=in_channels, input_size=size).eval()
    assert model.input_shape == (in_channels, size, size)
    assert all(type(v) is int for v in model.input_shape)
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        out = model(x)
        final_map = model.features(x)
    assert out.shape == (2, 10)
    # The stems drop their early downsampling at <= 64 px, so there is still a map to pool.
    assert final_map.shape[-1] >= 2 and final_map.shape[-2] >= 2


def test_small_input_strides_documented():
    # Final map side at 28 px: total stride 16 for MobileNets (28 -> 2), 8 for ShuffleNets
    # (28 -> 4), 8 for SqueezeNet with unpadded ceil-mode pools (28 -> 3), 4 for CIFAR ResNets (28 -> 7).
    expected = {
        "mobilenet_v1": 2, "mobilenet_v2": 2, "shufflenet_v1": 4, "shufflenet_v2": 4, "squeezenet": 3, "resnet20": 7
    }
    for name, side in expected.items():
        model = create_model(name, num_classes=10, in_channels=1, input_size=28).eval()
        with torch.no_grad():
            assert model.features(torch.zeros(1, 1, 28, 28)).shape[-1] == side, name


@pytest.mark.parametrize("name", ALL)
def test_half_width_has_fewer_params(name):
    full = create_model(name, num_classes=10, input_size=32)
    half = create_model(name, num_classes=10, input_size=32, width_mult=0.5)
    assert n_params(half) < 0.6 * n_params(full)


@pytest.mark.parametrize("name", ALL)
def test_fx_symbolic_trace_matches_eager(name):
    model = create_model(name, num_classes=10, in_channels=1, input_size=28).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_weight_init(name):
    model = create_model(name, num_classes=10, input_size=32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.std() > 0 for m in convs)


def test_params_match_published_figures():
    import torchvision

    # Keras' MobileNet(alpha=1.0) reports 4,231,976 trainable params (convs, BN gamma/beta, FC).
    assert n_params(create_model("mobilenet_v1")) == 4_231_976
    # Same layouts as torchvision, so exactly the same counts (MobileNetV2: 3,504,872).
    assert n_params(create_model("mobilenet_v2")) == n_params(torchvision.models.mobilenet_v2()) == 3_504_872
    assert n_params(create_model("shufflenet_v2")) == n_params(torchvision.models.shufflenet_v2_x1_0()) == 2_278_604
    assert n_params(create_model("shufflenet_v2", width_mult=0.5)) == n_params(torchvision.models.shufflenet_v2_x0_5())
    assert n_params(create_model("squeezenet")) == n_params(torchvision.models.squeezenet1_1()) == 1_235_496


def test_resnet20_params():
    # 3x3 stem 3->16: 432 + BN 32.
    # Stage 1, 3 blocks of two 16->16 convs: 3 * 2 * (2304 + 32) = 14,016.
    # Stage 2: first block 16->32 (4608 + 64) + 32->32 (9216 + 64) + 1x1 shortcut (512 + 64) = 14,528,
    #          two more blocks 2 * 2 * (9216 + 64) = 37,120.
    # Stage 3: first block 32->64 (18432 + 128) + 64->64 (36864 + 128) + shortcut (2048 + 128) = 57,728,
    #          two more blocks 2 * 2 * (36864 + 128) = 147,968.
    # FC 64*10 + 10 = 650. Total 272,474; option A (no shortcut convs) would be 269,722 ≈ 0.27 M.
    assert n_params(create_model("resnet20")) == 272_474
    # Each extra block pair per stage: 2*(2*(2304+32) + 2*(9216+64) + 2*(36864+128)) = 194,432.
    assert n_params(create_model("resnet32")) == 272_474 + 194_432
    assert n_params(create_model("resnet56")) == 272_474 + 3 * 194_432


def test_macs_match_papers():
    # MobileNetV1 paper: 569 M mult-adds; ShuffleNetV1 1x g=3 and g=8: 140 MFLOPs (= MACs);
    # ResNet-20 on CIFAR: ~41 M.
    assert round(count_macs(create_model("mobilenet_v1"), (3, 224, 224)) / 1e6) == 569
    assert 130e6 < count_macs(create_model("shufflenet_v1"), (3, 224, 224)) < 145e6
    assert 130e6 < count_macs(create_model("shufflenet_v1_g8"), (3, 224, 224)) < 145e6
    assert round(count_macs(create_model("resnet20"), (3, 32, 32)) / 1e6) == 41


def test_make_divisible():
    assert make_divisible(32 * 0.5) == 16
    assert make_divisible(116 * 0.75) == 88  # 87 rounds to the nearest multiple of 8
    assert make_divisible(10) == 16  # 8 would lose more than 10%
    assert make_divisible(3) == 8  # never below one divisor
    assert make_divisible(120, 24) == 120


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_inverted_residual_shortcut_only_when_shape_kept():
    assert InvertedResidual(16, 16, 1, 6).use_residual
    assert not InvertedResidual(16, 16, 2, 6).use_residual
    assert not InvertedResidual(16, 24, 1, 6).use_residual


def test_shuffle_unit_v1_checks_group_divisibility():
    with pytest.raises(ValueError, match="not divisible by groups 3"):
        ShuffleUnitV1(24, 100, 2, groups=3)


def test_create_model_errors():
    with pytest.raises(UserError, match=r"unknown zoo model 'mobilenet_v3' \(did you mean mobilenet_v2"):
        create_model("mobilenet_v3")
    with pytest.raises(UserError, match="does not take 'groups'"):
        create_model("resnet20", groups=3)
    with pytest.raises(UserError, match="width_mult must be > 0"):
        create_model("mobilenet_v2", width_mult=0)
    with pytest.raises(UserError, match="input_size must be an int >= 16"):
        create_model("squeezenet", input_size=8)
    assert isinstance(create_model("zoo:resnet20"), nn.Module)


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model
    def tiny_net(num_classes: int = 3):
        return nn.Linear(4, num_classes)

    @register_model(name="tiny_alias")
    def _other():
        return nn.Identity()

    assert create_model("tiny_net", num_classes=5).out_features == 5
    assert isinstance(create_model("tiny_alias"), nn.Identity)
    assert "tiny_net" in list_models("tiny*")
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda: nn.Identity(), name="tiny_net")


def test_import_does_not_pull_torchvision():
    code = "import sys, edgecompress.models; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
