"""Structured pruning with physical removal (edgecompress/prune/structured.py).

The central check is *zero equivalence*: removing a set of units must give exactly the
function of the original model with those channels zeroed at their producers (weights,
biases, BN scale and shift). If a group missed a coupled layer, or a unit missed a channel
a shuffle or chunk moved, the outputs differ.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.graph.cost import analyze
from edgecompress.graph.groups import ChannelGroup, build_groups
from edgecompress.models import create_model
from edgecompress.prune.structured import PruneConfig, Target, describe_result, prune_

torch.set_num_threads(1)


class _Everything(nn.Module):
    """add, cat, chunk, channel shuffle, grouped + depthwise convs, SE, flatten -> Linear, token MLP, attention."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.Hardswish())
        self.se_fc1 = nn.Conv2d(24, 8, 1)
        self.se_fc2 = nn.Conv2d(8, 24, 1)
        self.project = nn.Sequential(nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16))
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 32)
        self.norm = nn.LayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.out = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = torch.cat([self.left(s), self.right(s)], dim=1) + s  # cat + residual add
        z = self.dw(self.grouped(y))
        z = z * torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(z.mean((2, 3), keepdim=True)))))  # SE
        p = self.project(z) + y
        a, b = p.chunk(2, dim=1)  # ShuffleNetV2-style split, branch, concat, shuffle
        q = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = q.shape
        q = q.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        f = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(q), 4), 1))
        t = f.view(f.shape[0], 1, 32).expand(-1, 3, -1)  # three "tokens"
        t = t + self.mlp(self.norm(t))
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.out(t.mean(1))


def _zeroed(model: nn.Module, groups: list[ChannelGroup], removed: dict[int, list[int]]) -> nn.Module:
    """A copy of `model` with the removed units' channels zeroed where they are produced."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for i, units in removed.items():
            g = groups[i]
            atoms = {a for u in units for a in g.units[u]}
            for m in g.members:
                pos = [p for p, a in zip(m.positions, m.atoms) if a in atoms]
                mod = mods[m.name]
                if m.kind in ("out", "group_out", "depthwise", "norm") and pos:
                    mod.weight[pos] = 0
                    if mod.bias is not None:
                        mod.bias[pos] = 0
    return ref


def _by_index(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Scores that make prune_ drop the lowest-numbered units: the test knows what goes."""
    return torch.arange(len(group.units), dtype=torch.float64)


def _check_zero_equivalence(model: nn.Module, shape: tuple[int, int, int], ratio: float = 0.5) -> dict:
    model.eval()
    groups = build_groups(model, shape)
    pruned = copy.deepcopy(model)
    result = prune_(pruned, PruneConfig(ratio=ratio, round_to=1, min_channels=1), input_shape=shape,
                    importance_fn=_by_index)
    removed = {}
    for i, (g, plan) in enumerate(zip(groups, result.groups)):
        if plan.units_after < plan.units_before:
            removed[i] = list(range(plan.units_before - plan.units_after))
    ref = _zeroed(model, groups, removed)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref(x), pruned(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    return {"result": result, "removed": removed, "groups": groups, "pruned": pruned}


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def test_hand_written_model_every_construct() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_Everything())
    out = _check_zero_equivalence(model, (3, 8, 8))
    cut = {p for gp in out["result"].groups if gp.units_after < gp.units_before for p in gp.producers}
    # Every prunable construct was actually cut ...
    assert {"left", "right.0", "stem.0", "grouped.0", "se_fc1", "branch.0", "head", "mlp.0"} <= cut
    pruned = out["pruned"]
    assert pruned.grouped[0].groups == 2 and pruned.grouped[0].out_channels == 12  # whole conv groups
    assert pruned.dw[0].groups == pruned.dw[0].in_channels == 12
    assert pruned.se_fc1.out_channels == 4 and pruned.se_fc2.in_channels == 4
    assert pruned.mlp[0].out_features == 24 and pruned.mlp[2].in_features == 24
    assert pruned.fc.in_features == 2 * 16  # head lost 2 of 4 channels: 16 features each
    # ... and what cannot be cut is left whole with a reason.
    whole = {gp.producers[0]: gp.why_whole for gp in out["result"].groups if gp.why_whole and gp.producers}
    assert "nn.MultiheadAttention" in whole["fc"]


@pytest.mark.parametrize("name,kwargs", [
    ("resnet20", {}), ("mobilenet_v2", {"width_mult": 0.5}), ("shufflenet_v2", {"width_mult": 0.5}),
    ("squeezenet", {}), ("mobilenet_v1", {"width_mult": 0.5}),
])
def test_zoo_zero_equivalence(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name, num_classes=10, in_channels=1, input_size=28, **kwargs))
    out = _check_zero_equivalence(model, (1, 28, 28), ratio=0.4)
    assert out["result"].macs_after < out["result"].macs_before


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf"])
def test_torchvision_zero_equivalence(name: str) -> None:
    """torchvision's own channel shuffle (view, transpose, contiguous, view), SE blocks and grouped convs."""
    from edgecompress.models.loading import load_model

    torch.manual_seed(0)
    model = _randomize_bn(load_model(f"torchvision:{name}").model)
    out = _check_zero_equivalence(model, (3, 64, 64), ratio=0.4)
    assert out["result"].macs_ratio < 0.9


class _Resizing(nn.Module):
    """Shape-dependent Python control flow (torch.fx fails, torch.export works) around add, chunk and SE."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1))
        self.se = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1), nn.Sigmoid())
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 16:
            x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear")
        s = self.stem(x)
        s = s + self.body(s)
        a, b = s.chunk(2, dim=1)
        s = torch.cat([a, b * self.se(b.mean((2, 3), keepdim=True))], dim=1)
        return self.fc(s.mean((2, 3)))


def test_untraceable_by_fx_prunes_through_torch_export() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_Resizing())
    with pytest.warns(UserWarning, match="torch.fx cannot trace _Resizing"):
        out = _check_zero_equivalence(model, (3, 24, 24))
    pruned = out["pruned"]
    assert pruned.body[0].out_channels == 16 and pruned.se[0].out_channels == 2
    assert pruned.stem[0].out_channels == 8 and pruned.fc.in_features == 8  # chunk halves stay equal
    assert pruned.se[2].out_channels == 4


def test_target_macs_met_and_widths_rounded() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28, width_mult=0.5)
    base = analyze(model, (1, 28, 28)).total_macs
    result = prune_(model, PruneConfig(target="macs=0.5", importance="l2"), input_shape=(1, 28, 28))
    assert result.macs_before == base
    assert 0.40 <= result.macs_ratio <= 0.5 and result.achieved == pytest.approx(result.macs_ratio)
    assert analyze(model, (1, 28, 28)).total_macs == result.macs_after  # the model itself shrank
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels != 10:
            assert m.out_channels % 8 == 0, m  # round_to=8 everywhere
    assert all(gp.width_after >= 8 for gp in result.groups if gp.producers)
    assert any("left whole" in line for line in describe_result(result))


def test_global_ranking_and_params_target() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    result = prune_(model, PruneConfig(target="params=0.6", ranking="global", round_to=4, min_channels=4),
                    input_shape=(1, 28, 28))
    assert result.params_ratio <= 0.6 and result.params_ratio >= 0.45
    widths = [gp.width_after / gp.width_before for gp in result.groups if gp.units_after < gp.units_before]
    assert len(set(widths)) > 1  # global ranking cuts layers unevenly


def test_overrides_ignore_and_absolute_target() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    cfg = PruneConfig(target="macs=20M", overrides={r"features\.1\.conv1": 0.5}, ignore=(r"features\.9\.",),
                      round_to=1, min_channels=1)
    result = prune_(model, cfg, input_shape=(1, 28, 28))
    assert result.macs_after <= 20e6
    assert model.features[1].conv1.conv.out_channels == 8
    assert model.features[9].conv1.conv.out_channels == 64  # ignored
    with pytest.warns(UserWarning, match="matches no module"):
        prune_(create_model("resnet20", num_classes=10, in_channels=1, input_size=28),
               PruneConfig(ratio=0.2, ignore=("nothing_like_this",)), input_shape=(1, 28, 28))


def test_unreachable_target_names_the_minimum_and_changes_nothing() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"cannot be reached: .* gives macs 0\.\d+"):
        prune_(model, PruneConfig(target="macs=0.01"), input_shape=(1, 28, 28))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 1.0}, r"ratio = 1.0 must be in \[0, 1\)"),
    ({"ratio": -0.1}, "ratio"),
    ({"ratio": 0.3, "target": "macs=0.5"}, "either ratio or target"),
    ({"target": "flops=0.5"}, "must be one of macs, params, latency"),
    ({"target": "macs=1.0"}, "keeps everything"),
    ({"target": "macs=abc"}, "not a number"),
    ({"ratio": 0.3, "ranking": "glob"}, "did you mean global"),
    ({"ratio": 0.3, "round_to": 0}, "round_to"),
    ({"overrides": {"conv": 1.5}}, r"overrides\['conv'\]"),
    ({"ratio": 0.2, "ignore": ("(",)}, "not a valid regex"),
    ({}, "needs a ratio, a target or overrides"),
])
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kwargs)


def test_target_parse_and_config_round_trip() -> None:
    assert Target.parse("macs=0.5") == Target("macs", 0.5, True)
    assert Target.parse("params=1.5M") == Target("params", 1.5e6, False)
    assert Target.parse("latency=3.5ms") == Target("latency", 3.5, False)
    assert str(Target.parse("latency=3.5ms")) == "latency=3.5ms"
    cfg = PruneConfig(target="macs=0.5", ignore=("fc",), overrides={"a": 0.1})
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PruneConfig key"):
        PruneConfig.from_dict({"ratoi": 0.1})


def test_latency_target_uses_the_given_measurement() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    calls = []

    def fake_ms(m: nn.Module) -> float:  # a stand-in device: latency proportional to MACs
        calls.append(1)
        return analyze(m, (1, 28, 28)).total_macs / 1e7

    result = prune_(model, PruneConfig(target="latency=0.6"), input_shape=(1, 28, 28), latency_fn=fake_ms)
    assert result.achieved <= 0.6 and result.latency_after_ms <= 0.6 * result.latency_before_ms and len(calls) >= 5
    assert result.latency_before_ms == pytest.approx(31_021_952 / 1e7)
    with pytest.raises(UserError, match="needs a latency measurement"):
        prune_(model, PruneConfig(target="latency=0.5"), input_shape=(1, 28, 28))


def test_pruned_grouped_conv_model_saves_and_reloads(tmp_path) -> None:
    """RegNet's grouped convs lose whole conv groups; the checkpoint records the new group counts."""
    from edgecompress.models.loading import load_model, save_checkpoint

    loaded = load_model("torchvision:regnet_x_400mf")
    model = loaded.model.eval()
    shape = (3, 64, 64)
    result = prune_(model, PruneConfig(ratio=0.3, round_to=1, min_channels=1), input_shape=shape)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    before = {m.groups for m in load_model("torchvision:regnet_x_400mf").model.modules()
              if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}
    assert grouped and {m.groups for m in grouped} != before  # groups were removed, widths per group kept
    assert all(m.in_channels // m.groups in (8, 16) for m in grouped)  # regnet_x_400mf's group width is 16 (8 in s1)
    assert result.macs_ratio < 0.8
    path = save_checkpoint(model, tmp_path / "r.pt", arch_spec="torchvision:regnet_x_400mf", arch_kwargs={},
                           input_shape=shape)
    again = load_model(str(path)).model.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_convnext_layer_scale_and_layer_norm_2d_are_cut_with_their_channels(tmp_path) -> None:
    """ConvNeXt's residual width runs through a per-channel layer scale (a tensor used in forward)
    and LayerNorm2d (F.layer_norm on a permuted map): both follow the pruned channels."""
    from edgecompress.models.loading import load_model, save_checkpoint

    model = load_model("torchvision:convnext_tiny").model.eval()
    shape = (3, 64, 64)
    groups = build_groups(model, shape)
    stage1 = next(g for g in groups if "features.0.0" in g.producers)
    assert stage1.prunable and len(stage1.units) == 96
    kinds = {(m.name, m.kind) for m in stage1.members}
    assert ("features.1.0.layer_scale", "param") in kinds and ("features.0.1", "norm") in kinds
    result = prune_(model, PruneConfig(ratio=0.3, round_to=8), input_shape=shape)
    assert result.macs_ratio < 0.55
    assert model.features[1][0].layer_scale.shape == (model.features[0][0].out_channels, 1, 1) == (64, 1, 1)
    assert model.features[0][1].normalized_shape == (64,)
    path = save_checkpoint(model, tmp_path / "c.pt", arch_spec="torchvision:convnext_tiny", arch_kwargs={}, input_shape=shape)
    again = load_model(str(path)).model.eval()
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
