"""factorize_ on whole models (edgecompress/lowrank/factorize.py): rules, the budget search, the device check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.graph import analyze
from edgecompress.lowrank import LowRank, LowRankConfig, factorize_
from edgecompress.models import create_model

torch.set_num_threads(1)
SHAPE = (1, 28, 28)


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, in_channels=1).eval()


def _lowrank_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, LowRank)}


@pytest.mark.parametrize("method", ["spatial-svd", "tucker2", "cp"])
def test_rank_ratio_factorizes_every_3x3_conv_and_counts_what_it_built(method):
    model = _resnet20()
    x = torch.randn(4, *SHAPE)
    result = factorize_(model, LowRankConfig(method=method, rank=0.25, round_to=8), input_shape=SHAPE)
    done = {p.name for p in result.factorized}
    # ResNet-20: 19 3x3 convs; the stem (1 input channel) has no rank that saves MACs; 1x1 shortcuts and the
    # classifier are not spatial.
    assert len(done) == 18 and "features.0.conv" not in done and _lowrank_names(model) == done
    reasons = {p.name: p.reason for p in result.layers if p.status != "factorized"}
    assert "would not save macs" in reasons["features.0.conv"]
    # tucker2 takes a 1x1 conv, but its three layers cost more than the one
    shortcut = "would not save macs" if method == "tucker2" else "1x1 kernel"
    assert shortcut in reasons["features.4.shortcut.conv"] and "Linear" in reasons["classifier"]
    after = analyze(model, SHAPE)
    assert result.macs_after == after.total_macs < result.macs_before
    assert sum(p.macs_after for p in result.layers) + sum(
        l.macs for l in after.layers if not any(l.name.startswith(p.name) for p in result.layers)) == after.total_macs
    for plan in result.factorized:
        assert 0 < plan.rel_error < 1 and plan.params_after < plan.params_before
    assert torch.isfinite(model(x)).all()


def test_svd_takes_linear_and_1x1_layers_only():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28, width_mult=0.5).eval()
    result = factorize_(model, LowRankConfig(method="svd", rank=0.5, round_to=8), input_shape=SHAPE)
    kinds = {p.kind for p in result.factorized}
    assert kinds <= {"Conv2d 1x1", "Linear"} and result.factorized
    assert any("grouped conv" in p.reason for p in result.layers if p.kind.startswith("Conv2d 3x3 groups"))


@pytest.mark.parametrize("method,target", [("spatial-svd", "macs=0.5"), ("tucker2", "params=0.5")])
def test_budget_is_met_just_below_the_target(method, target):
    model = _resnet20()
    result = factorize_(model, LowRankConfig(method=method, target=target), input_shape=SHAPE)
    assert 0.40 < result.achieved <= 0.5
    metric = result.macs_ratio if target.startswith("macs") else result.params_ratio
    assert metric == pytest.approx(result.achieved)
    # the greedy stops once the budget holds: some layer is left whole, with that reason
    assert any("the budget" in p.reason and "was met without it" in p.reason for p in result.layers)


def test_an_unreachable_target_names_the_floor_and_changes_nothing():
    model = _resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"macs=0.05 cannot be reached by factorization alone: .* keeps 0\.\d+ of its "
                                         r"macs; add smaller ratios, prune first"):
        factorize_(model, LowRankConfig(method="spatial-svd", target="macs=0.05"), input_shape=SHAPE)
    assert not _lowrank_names(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _planted(rank: int) -> nn.Sequential:
    """A conv whose (ci*kh) x (co*kw) spatial matrix has exactly `rank`, and a ReLU."""
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    with torch.no_grad():
        a, b = torch.randn(32 * 3, rank), torch.randn(rank, 32 * 3)
        conv.weight.copy_((a @ b).reshape(32, 3, 32, 3).permute(2, 0, 1, 3))  # M[(ci,kh),(co,kw)] -> W[co,ci,kh,kw]
    return nn.Sequential(conv, nn.ReLU())


def test_energy_rule_finds_a_planted_rank_and_reconstructs_it():
    model = _planted(4)
    x = torch.randn(2, 32, 12, 12)
    y = model(x)
    result = factorize_(model, LowRankConfig(method="spatial-svd", rank="energy=0.999", round_to=1),
                        input_shape=(32, 12, 12))
    (plan,) = result.factorized
    assert plan.rank == 4 and plan.full_rank == 96 and plan.rel_error < 1e-5
    assert torch.allclose(model(x), y, atol=1e-4)


def test_vbmf_estimates_tucker2_ranks_of_a_planted_core():
    torch.manual_seed(2)
    conv = nn.Conv2d(48, 64, 3, padding=1, bias=False)
    with torch.no_grad():
        core = torch.randn(6, 5, 3, 3)
        u_out, u_in = torch.linalg.qr(torch.randn(64, 6))[0], torch.linalg.qr(torch.randn(48, 5))[0]
        w = torch.einsum("os,sr...,ir->oi...", u_out, core, u_in) * 10
        conv.weight.copy_(w + 0.01 * torch.randn_like(w))
    model = nn.Sequential(conv)
    result = factorize_(model, LowRankConfig(method="tucker2", rank="vbmf", round_to=1), input_shape=(48, 8, 8))
    assert result.factorized[0].rank == [5, 6]


def test_ignore_and_overrides_choose_per_layer():
    model = _resnet20()
    config = LowRankConfig(method="spatial-svd", rank=0.25, ignore=(r"^features\.1\.",),
                           overrides={r"^features\.9\.conv2": {"method": "tucker2", "rank": 0.5}})
    result = factorize_(model, config, input_shape=SHAPE)
    plans = {p.name: p for p in result.layers}
    assert plans["features.1.conv1.conv"].reason == "ignored by the config"
    assert plans["features.9.conv2.conv"].method == "tucker2" and plans["features.9.conv2.conv"].rank == [32, 32]
    assert plans["features.9.conv1.conv"].method == "spatial-svd"


def test_accuracy_sensitivity_spares_the_layer_the_evaluator_needs():
    model = _resnet20()
    fragile = "features.8.conv1.conv"
    calls = []

    def evaluate(m: nn.Module) -> float:  # accuracy collapses when the fragile layer is factorized
        calls.append(1)
        return 0.2 if isinstance(m.get_submodule(fragile), LowRank) else 0.9

    result = factorize_(model, LowRankConfig(method="spatial-svd", target="macs=0.7", sensitivity="accuracy"),
                        input_shape=SHAPE, evaluate=evaluate)
    plans = {p.name: p for p in result.layers}
    assert plans[fragile].status == "skipped" and result.achieved <= 0.7
    assert len(calls) > 18  # the baseline, then every layer at every rank it may take
    assert not isinstance(model.get_submodule(fragile), LowRank)
    with pytest.raises(UserError, match="sensitivity accuracy measures each layer's accuracy drop: pass evaluate"):
        factorize_(_resnet20(), LowRankConfig(method="spatial-svd", target="macs=0.7", sensitivity="accuracy"),
                   input_shape=SHAPE)


class _FakeTimer:
    """Blocks cost their MACs, except the factors of layers with 32 input channels, which are 'slow'."""

    name = "fake phone onnxruntime 1T"

    def __init__(self) -> None:
        self.blocks = 0

    def time_blocks(self, blocks):
        self.blocks += len(blocks)
        out = []
        for module, shape in blocks:
            ms = analyze(module, shape).total_macs / 1e6
            if isinstance(module, LowRank) and module[0].in_channels == 32:
                ms *= 10
            out.append(ms)
        return out

    def model_ms(self, model, shape):
        return analyze(model, shape).total_macs / 1e6


def test_layers_not_faster_on_the_device_stay_whole_and_the_report_says_so():
    model, timer = _resnet20(), _FakeTimer()
    result = factorize_(model, LowRankConfig(method="spatial-svd", rank=0.25), input_shape=SHAPE, timer=timer)
    slow = [p for p in result.layers if "not faster on fake phone" in p.reason]
    wide = {n for n, m in _resnet20().named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == 32 and m.kernel_size == (3, 3)}
    assert {p.name for p in slow} == wide
    for p in slow:
        assert p.latency_after_ms > p.latency_before_ms and not isinstance(model.get_submodule(p.name), LowRank)
    fast = result.factorized
    assert fast and all(p.latency_after_ms < p.latency_before_ms for p in fast)
    assert result.latency_before_ms == pytest.approx(sum(p.latency_before_ms for p in fast))
    assert "left alone because they were not faster on the device" in result.summary()


def test_a_latency_budget_replans_without_the_slow_layers():
    model, timer = _resnet20(), _FakeTimer()
    result = factorize_(model, LowRankConfig(method="spatial-svd", target="latency=0.6"), input_shape=SHAPE,
                        timer=timer)
    assert result.achieved <= 0.6
    assert not any(isinstance(m, LowRank) and m[0].in_channels == 32 for m in model.modules())
    assert any("whole model on fake phone" in n for n in result.notes)
    with pytest.raises(UserError, match="needs latency measured on a device"):
        factorize_(_resnet20(), LowRankConfig(method="spatial-svd", target="latency=0.6"), input_shape=SHAPE)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "svdd", "rank": 0.5}, r"method = 'svdd' must be one of .*did you mean svd"),
    ({"rank": 0.0}, r"rank = 0.0 must be a ratio of the full rank in \(0, 1\]"),
    ({"rank": 1.5}, r"rank = 1.5 must be a ratio"),
    ({"rank": "energy=2"}, r"energy kept must be in \(0, 1\]"),
    ({"rank": "vbmf"}, r"'vbmf' estimates Tucker-2 ranks; use method tucker2"),
    ({}, r"needs exactly one of rank .* and target"),
    ({"rank": 0.5, "target": "macs=0.5"}, r"needs exactly one of rank"),
    ({"target": "flops=0.5"}, r"target metric 'flops' must be one of"),
    ({"rank": 0.5, "round_to": 0}, r"round_to = 0 must be an integer >= 1"),
    ({"rank": 0.5, "ignore": ("[",)}, r"ignore pattern '\[' is not a regular expression"),
    ({"target": "macs=0.5", "overrides": {"x": {"method": "cp"}}}, r"overrides\['x'\] needs a rank"),
])
def test_bad_config_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankConfig(**kwargs)


def test_a_model_with_nothing_to_factorize_is_refused():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU())
    with pytest.raises(UserError, match=r"spatial-svd finds no layer to factorize .*grouped conv"):
        factorize_(model, LowRankConfig(rank=0.5), input_shape=(8, 8, 8))
