"""The search space (edgecompress/search/space.py): groups, policies, cost estimates, the clamp."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.models import create_model
from edgecompress.search.space import FEATURES, Constraint, LinearLatencyModel, Policy, SearchSpace

torch.set_num_threads(1)
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def resnet_space() -> SearchSpace:
    return SearchSpace.from_model(create_model("resnet20", num_classes=10, in_channels=1), SHAPE)


@pytest.fixture(scope="module")
def mobilenet_space() -> SearchSpace:
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.5, input_size=28)
    return SearchSpace.from_model(model, SHAPE)


def test_groups_features_and_bounds(resnet_space, mobilenet_space):
    sp = resnet_space
    assert len(sp) == 12 and sp.skipped == []
    assert sp.names[0] == "features.0.conv" and sp.groups[0].producers[1:] == (
        "features.1.conv2.conv", "features.2.conv2.conv", "features.3.conv2.conv")  # the residual stage
    assert [g.choices for g in sp.groups[:2]] == [(8, 16), (8, 16)]  # 16 channels at multiples of 8
    assert sp.groups[-1].choices == (16, 24, 32, 40, 48, 56, 64)  # 64 channels, keep >= 0.2 -> >= 16
    feats = sp.features()
    assert feats.shape == (12, len(FEATURES)) and feats.min() == 0 and feats.max() == 1
    assert feats[:, 0].tolist() == pytest.approx(np.linspace(0, 1, 12).tolist())
    # MobileNetV2 at width 0.5: 24 groups; the 8-channel project of block 1 cannot be cut at multiples of 8.
    mb = mobilenet_space
    assert len(mb) == 24 and [n for n, _ in mb.skipped] == ["features.1.conv.project.conv"]
    expand = mb.groups[mb.names.index("features.2.conv.expand.conv")]
    assert (expand.layer_type, expand.in_channels, expand.out_channels, expand.kernel, expand.feature_size) == (
        "conv", 8, 48, 1, 28 * 28)
    # The expand group also scales the depthwise conv and the projection that read it.
    assert expand.macs == 301056 + 84672 + 48 * 16 * 14 * 14


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_macs_and_params_estimates_equal_the_pruned_model(name, resnet_space, mobilenet_space):
    sp = resnet_space if name == "resnet" else mobilenet_space
    rng = np.random.default_rng(0)
    for _ in range(3):
        policy = sp.policy(rng.uniform(0.2, 1.0, len(sp)))
        pruned, result = sp.prune(policy)
        assert sp.macs(policy) == pytest.approx(result.macs_after, rel=1e-9)
        assert sp.params(policy) == pytest.approx(result.params_after, rel=1e-9)
        # the space's kept widths are exactly what prune_ kept
        kept = {gp.producers[0]: gp.width_after for gp in result.groups if gp.producers}
        assert [kept[n] for n in sp.names] == sp.widths(policy)
        assert all(w % 8 == 0 for w in sp.widths(policy))
        assert sum(p.numel() for p in pruned.parameters()) == result.params_after
    assert sp.macs(sp.full_policy()) == sp.total_macs  # widths are multiples of 8 already: nothing cut


def test_estimate_on_concat_grouped_and_flatten_layers():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.g = nn.Conv2d(24, 24, 3, padding=1, groups=24)
            self.p = nn.Conv2d(24, 12, 1)
            self.fc = nn.Linear(12 * 4 * 4, 20)
            self.out = nn.Linear(20, 5)

        def forward(self, x):
            y = self.g(torch.cat([self.a(x), self.b(x)], 1))
            y = nn.functional.adaptive_avg_pool2d(self.p(y), 4).flatten(1)
            return self.out(torch.relu(self.fc(y)))

    net = Net()
    sp = SearchSpace.from_model(net, (3, 16, 16), round_to=1, min_channels=1)
    assert sp.names == ("a.0", "b.0", "p", "fc")
    for keep in ([0.5, 0.75, 0.25, 0.4], [1.0, 0.25, 1.0, 0.2], [0.3, 0.3, 0.3, 0.3]):
        policy = sp.policy(keep)
        _, result = sp.prune(policy)
        assert sp.macs(policy) == pytest.approx(result.macs_after, rel=1e-9)
        assert sp.params(policy) == pytest.approx(result.params_after, rel=1e-9)
    # At multiples of 8 with keep >= 0.8, fc (20 wide) has one width: not searched, yet prune_
    # still rounds it to 16 and the estimate follows.
    sp8 = SearchSpace.from_model(net, (3, 16, 16), min_keep=0.8)
    assert sp8.names == ("p",) and sp8.fixed == {4: 16 / 20}
    assert [n for n, _ in sp8.skipped] == ["a.0", "b.0", "fc"]
    policy = sp8.min_policy()
    _, result = sp8.prune(policy)
    assert sp8.widths(policy) == [8] and sp8.macs(policy) == pytest.approx(result.macs_after, rel=1e-9)


def test_prune_config_uses_anchored_overrides(resnet_space):
    sp = resnet_space
    policy = sp.policy([0.5] * len(sp))
    config = sp.prune_config(policy)
    assert list(config.overrides)[:2] == ["^features\\.0\\.conv$", "^features\\.1\\.conv1\\.conv$"]
    for pattern in config.overrides:  # each pattern matches exactly one module
        assert sum(bool(re.search(pattern, n)) for n, _ in sp.model.named_modules()) == 1
    assert config.round_to == 8 and set(config.overrides.values()) == {0.5}
    pruned = sp.apply(policy)
    assert pruned is not sp.model and pruned.features[0].conv.out_channels == 8
    assert sp.model.features[0].conv.out_channels == 16  # the original is untouched


def test_policy_json_and_checks(resnet_space):
    sp = resnet_space
    policy = sp.policy([0.6] * len(sp))
    assert policy.keep[0] == 0.5 and policy.keep[-1] == 40 / 64  # snapped to the allowed widths
    again = Policy.from_json(policy.to_json())
    assert again == policy and sp.units(again) == sp.units(policy)
    with pytest.raises(UserError, match="policy has 3 keep ratios but the search space has 12 groups"):
        sp.units(Policy((0.5, 0.5, 0.5)))
    wrong = Policy(policy.keep, ("x",) + policy.groups[1:])
    with pytest.raises(UserError, match="policy group 0 is 'x' but the model's is 'features.0.conv'"):
        sp.check(wrong)
    with pytest.raises(ValueError, match=r"Policy.keep\[1\] = 1.5 must be in \(0, 1\]"):
        Policy((0.5, 1.5))
    with pytest.raises(ValueError, match="unknown policy key 'kep'"):
        Policy.from_dict({"kep": [0.5]})
    with pytest.raises(ValueError, match="min_keep = 0 must be in"):
        SearchSpace.from_model(sp.model, SHAPE, min_keep=0)
    with pytest.raises(ValueError, match="max_keep = 0.1 must be in"):
        SearchSpace.from_model(sp.model, SHAPE, min_keep=0.2, max_keep=0.1)


def test_bounds_and_ignore(resnet_space):
    sp = SearchSpace.from_model(resnet_space.model, SHAPE, min_keep=0.5, max_keep=0.75, ignore=(r"^features\.1\.",))
    assert "features.0.conv" not in sp.names  # its residual group includes features.1.conv2
    assert ("features.0.conv", "ignored") in sp.skipped
    g = sp.groups[-1]
    assert (g.choices[0], g.choices[-1]) == (32, 48)  # 64 channels kept between 0.5 and 0.75
    assert sp.full_policy().keep[-1] == 0.75


def test_clamp_always_meets_the_budget(resnet_space, mobilenet_space):
    """Property test: whatever the actions, the clamped policy's estimate is within budget,
    and no group could have kept one more step without breaking it."""
    rng = np.random.default_rng(1)
    for sp in (resnet_space, mobilenet_space):
        floor = sp.cost_units([g.choices[0] for g in sp.groups])
        for trial in range(60):
            metric = "macs" if trial % 2 else "params"
            whole = sp.total_macs if metric == "macs" else sp.total_params
            low = sp.cost_units([g.choices[0] for g in sp.groups], metric)
            limit = low + rng.uniform(0, 1) * (whole - low)
            c = Constraint(sp, metric, limit)
            wants = [g.choices[rng.integers(len(g.choices))] for g in sp.groups]
            decided: list[int] = []
            for want in wants:
                got = c.clamp(decided, want)
                i = len(decided)
                assert got <= want and got in sp.groups[i].choices
                rest = [g.choices[0] for g in sp.groups[i + 1:]]
                assert c.estimate_units([*decided, got, *rest]) <= limit
                bigger = [x for x in sp.groups[i].choices if got < x <= want]
                if bigger:  # the clamp keeps as much as the budget allows
                    assert c.estimate_units([*decided, bigger[0], *rest]) > limit
                decided.append(got)
            projected = c.project(sp.from_units(wants))
            assert sp.units(projected) == decided
            assert sp.cost_units(decided, metric) <= limit
        assert floor < sp.total_macs


def test_linear_latency_model_fits_the_probes():
    sp = SearchSpace.chain([32, 32, 32])
    calls = []

    def ms(policy: Policy) -> float:  # a latency with an interaction between layers
        calls.append(policy)
        u = np.array(sp.units(policy)) / 32
        return 1.0 + 2.0 * u[0] + 1.0 * u[1] * u[2]

    model = LinearLatencyModel.fit(sp, ms)
    assert len(calls) == len(sp) + 2
    assert model.estimate(sp.full_policy()) == pytest.approx(4.0)
    assert sp.units(sp.min_policy()) == [6, 6, 6]  # exact at both ends, the interaction included
    assert model.estimate(sp.min_policy()) == pytest.approx(1 + 2 * 6 / 32 + (6 / 32) ** 2)
    mid = sp.policy([0.5, 0.5, 0.5])
    before = model.estimate(mid)
    model.observe(mid, 2 * before)
    assert model.correction == pytest.approx(2.0) and model.estimate(mid) == pytest.approx(2 * before)
    again = LinearLatencyModel.from_dict(sp, model.to_dict())
    assert again.estimate(mid) == pytest.approx(model.estimate(mid))
    c = Constraint(sp, "latency", 3.0, estimate=model.estimate_units)
    assert c.estimate(c.project(sp.full_policy())) <= 3.0
    with pytest.raises(ValueError, match="latency constraint needs estimate"):
        Constraint(sp, "latency", 3.0)


def test_empty_space_is_a_user_error():
    tiny = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 4))
    with pytest.raises(UserError, match="the search space is empty"):
        SearchSpace.from_model(tiny, SHAPE)


# -- the joint space: a rank ratio per factorizable layer after the groups -------------------


@pytest.fixture(scope="module")
def joint_space(resnet_space) -> SearchSpace:
    return SearchSpace.from_model(resnet_space.model, SHAPE, lowrank="spatial-svd")


def test_joint_space_dims_names_and_features(resnet_space, joint_space):
    sp = joint_space
    convs = [n for n, m in sp.model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # every 3x3 conv but the stem: 1 -> 16 channels, where even rank 3 of 3 costs more than the conv
    assert sp.rank_names == tuple(convs[1:]) and len(sp.ranks) == 18
    assert sp.skipped == [("features.0.conv", "spatial-svd at its smallest rank 3 would not save MACs "
                                                "(119,952 vs 112,896)")]
    assert sp.names == resnet_space.names and len(sp) == 12 + 18 and sp.lowrank == "spatial-svd"
    assert sp.dims == [*sp.groups, *sp.ranks]
    r = sp.ranks[0]
    assert r.choices == (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0) and (r.min_keep, r.max_keep) == (0.125, 1.0)
    assert (r.in_channels, r.out_channels, r.kernel, r.macs, r.in_hw) == (16, 16, 3, 1806336, (28, 28))
    assert r.snap(0.3) == 0.25 and r.snap(0.3125) == 0.375 and r.snap(0.95) == 1.0
    feats = sp.features()
    assert feats.shape == (30, len(FEATURES)) and (feats[12:, 1] == 1).all() and (feats[:12, 1] < 1).all()
    full = sp.full_policy()
    assert full.rank == (1.0,) * 18 and full.rank_layers == sp.rank_names and full.lowrank == "spatial-svd"
    assert sp.macs(full) == resnet_space.total_macs and sp.signature() != resnet_space.signature()
    assert sp.to_dict()["ranks"][0]["name"] == "features.1.conv1.conv"
    assert [r.name for r in SearchSpace.from_model(sp.model, SHAPE, lowrank="svd").ranks] == [
        "features.4.shortcut.conv", "features.7.shortcut.conv", "classifier"]
    with pytest.raises(ValueError, match="lowrank = 'svdd' must be one of svd, spatial-svd, tucker2, cp"):
        SearchSpace.from_model(sp.model, SHAPE, lowrank="svdd")
    with pytest.raises(UserError, match="lowrank svd: no layer of this model can be factorized"):
        SearchSpace.from_model(sp.model, SHAPE, lowrank="svd", ignore=("shortcut|classifier",))


@pytest.mark.parametrize("method", ["spatial-svd", "svd", "tucker2"])
def test_joint_estimate_equals_the_pruned_and_factorized_model(method, resnet_space):
    """Exact, not approximate: the rank of a pruned layer and its factors' cost come from
    lowrank.decomposition at the pruned widths (cp is exact the same way, only slow to decompose)."""
    from edgecompress.graph.cost import analyze
    from edgecompress.lowrank import LowRank

    sp = SearchSpace.from_model(resnet_space.model, SHAPE, lowrank=method)
    rng = np.random.default_rng(0)
    factorized = 0
    for _ in range(3):
        policy = sp.policy(rng.uniform(0.1, 1.0, len(sp)))
        pruned, result = sp.prune(policy)
        measured = analyze(pruned, SHAPE)
        assert sp.macs(policy) == pytest.approx(measured.total_macs, rel=1e-12) == result.macs_after
        assert sp.params(policy) == pytest.approx(measured.total_params, rel=1e-12) == result.params_after
        replaced = {n for n, m in pruned.named_modules() if isinstance(m, LowRank)}
        assert replaced == {p["name"] for p in (result.factorized or {"layers": []})["layers"]}
        assert replaced <= {r.name for r, k in zip(sp.ranks, policy.rank) if k < 1}
        factorized += len(replaced)
    assert factorized > 0


def test_joint_policy_round_trip_and_errors(joint_space, tmp_path):
    sp = joint_space
    policy = sp.policy([0.6] * 12 + [0.3] * 18)
    assert policy.rank == (0.25,) * 18 and sp.units(policy)[12:] == [0.25] * 18
    again = Policy.from_json(policy.to_json())
    assert again == policy and again.to_dict()["lowrank"] == "spatial-svd"
    best = tmp_path / "best_policy.json"  # the runner's file: keep ratios under "policy"
    best.write_text(json.dumps({"policy": list(policy.keep), "groups": list(sp.names), "rank": list(policy.rank),
                                "rank_layers": list(sp.rank_names), "lowrank": "spatial-svd", "widths": [8] * 12}))
    assert Policy.load(best) == policy
    old = Policy.from_dict({"keep": [0.5] * 12, "groups": list(sp.names)})  # saved before rank existed
    assert old.rank == () and old.lowrank is None and "rank" not in old.to_dict()
    with pytest.raises(UserError, match="policy has 0 rank ratios but the search space has 18 rank layers "
                                        r"\(lowrank spatial-svd\)"):
        sp.check(old)
    with pytest.raises(ValueError, match=r"Policy.rank\[1\] = 0.0 must be in \(0, 1\] \(the fraction of the "
                                         "layer's full rank kept; 1 leaves it whole\)"):
        Policy((0.5,), rank=(0.5, 0), lowrank="svd")
    with pytest.raises(ValueError, match=r"Policy.rank\[0\] = 1.5 must be in \(0, 1\]"):
        Policy((0.5,), rank=(1.5,), lowrank="svd")
    with pytest.raises(ValueError, match="Policy has 2 rank ratios but 1 rank layer names"):
        Policy((0.5,), rank=(0.5, 0.5), rank_layers=("a",), lowrank="svd")
    with pytest.raises(ValueError, match="Policy has rank ratios but no lowrank method"):
        Policy((0.5,), rank=(0.5,))
    with pytest.raises(ValueError, match="Policy.lowrank = 'svdd' must be one of"):
        Policy((0.5,), rank=(0.5,), lowrank="svdd")
    with pytest.raises(UserError, match="policy factorizes with 'tucker2' but the search space with 'spatial-svd'"):
        sp.check(Policy(policy.keep, rank=policy.rank, lowrank="tucker2"))
    renamed = Policy(policy.keep, rank=policy.rank, rank_layers=("x",) + sp.rank_names[1:], lowrank="spatial-svd")
    with pytest.raises(UserError, match="policy rank layer 0 is 'x' but the model's is 'features.1.conv1.conv'"):
        sp.check(renamed)


def test_clamp_covers_the_rank_dims(joint_space):
    """The clamp over groups then rank layers: within budget, and maximal in every dimension."""
    sp = joint_space
    rng = np.random.default_rng(2)
    low = sp.cost_units([d.choices[0] for d in sp.dims])
    assert low == sp.macs(sp.min_policy()) < sp.cost_units([g.choices[0] for g in sp.groups])  # ranks cut more
    for _ in range(15):
        limit = low + rng.uniform(0, 0.6) * (sp.total_macs - low)
        c = Constraint(sp, "macs", limit)
        wants = [d.choices[rng.integers(len(d.choices))] for d in sp.dims]
        decided: list[float] = []
        for i, want in enumerate(wants):
            got = c.clamp(decided, want)
            rest = [d.choices[0] for d in sp.dims[i + 1:]]
            assert got <= want and got in sp.dims[i].choices
            assert c.estimate_units([*decided, got, *rest]) <= limit
            bigger = [x for x in sp.dims[i].choices if got < x <= want]
            if bigger:
                assert c.estimate_units([*decided, bigger[0], *rest]) > limit
            decided.append(got)
        assert sp.units(c.project(sp.from_units(wants))) == decided
    # a latency budget: the linear model has a term per dimension, rank layers included
    calls = []
    model = LinearLatencyModel.fit(sp, lambda p: calls.append(p) or 0.1 + sp.macs(p) * 1e-7)
    assert len(calls) == len(sp) + 2 == 32 and model.estimate(sp.full_policy()) == pytest.approx(
        0.1 + sp.total_macs * 1e-7)
    assert model.savings[12:].min() > 0  # a rank layer at its smallest rank alone saves time
    c = Constraint(sp, "latency", 0.1 + 0.4 * sp.total_macs * 1e-7, estimate=model.estimate_units)
    assert model.estimate(c.project(sp.full_policy())) <= c.limit
