"""Coupled-channel groups on the zoo and on hand-built graphs (edgecompress/graph/groups.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.graph.groups import ChannelGroup, Member, build_groups, describe_groups
from edgecompress.models import create_model

torch.set_num_threads(1)


def _zoo(name: str, **kwargs) -> list[ChannelGroup]:
    model = create_model(name, num_classes=10, in_channels=1, input_size=28, **kwargs)
    return build_groups(model, (1, 28, 28))


def _group_of(groups: list[ChannelGroup], producer: str) -> ChannelGroup:
    (group,) = [g for g in groups if producer in g.producers]
    return group


def test_resnet20_stage_residual_groups() -> None:
    groups = _zoo("resnet20")
    # input + 3 stage residual groups + 9 conv1 groups + classifier output
    assert len(groups) == 14
    assert sum(g.prunable for g in groups) == 12
    stages = {0: range(1, 4), 1: range(4, 7), 2: range(7, 10)}
    for stage, blocks in stages.items():
        group = _group_of(groups, f"features.{blocks[0]}.conv2.conv")
        expected = {f"features.{b}.conv2.conv" for b in blocks}
        expected.add("features.0.conv" if stage == 0 else f"features.{blocks[0]}.shortcut.conv")
        assert group.prunable and group.width == 16 * 2**stage and len(group.units) == group.width
        assert group.unit_size == 1 and group.channels == group.width * len(expected)
        assert set(group.producers) == expected
        assert {n for n, _ in group.norms} == {p[: -len("conv")] + "bn" for p in expected}
    last = _group_of(groups, "features.9.conv2.conv")
    assert ("classifier", 0) in last.consumers  # pool -> flatten -> Linear keeps channels 1:1
    for b in range(1, 10):
        inner = _group_of(groups, f"features.{b}.conv1.conv")
        assert inner.producers == (f"features.{b}.conv1.conv",)
        assert inner.consumers == ((f"features.{b}.conv2.conv", 0),)
        assert inner.norms == ((f"features.{b}.conv1.bn", 0),)
    out = _group_of(groups, "classifier")
    assert not out.prunable and out.reason == "network output" and out.width == 10
    assert groups[0].reason == "network input" and groups[0].consumers == (("features.0.conv", 0),)


def test_mobilenet_v2_expansion_depthwise_and_residual_project() -> None:
    groups = _zoo("mobilenet_v2", width_mult=0.5)
    assert len(groups) == 27
    assert sum(g.prunable for g in groups) == 25
    for b in range(2, 18):  # every unit with an expansion conv
        p = f"features.{b}.conv"
        group = _group_of(groups, f"{p}.expand.conv")
        assert group.prunable
        assert group.producers == (f"{p}.expand.conv",)
        assert group.depthwise == ((f"{p}.dw.conv", 0),)
        assert group.norms == ((f"{p}.expand.bn", 0), (f"{p}.dw.bn", 0))
        assert group.consumers == ((f"{p}.project.conv", 0),)
    # The first unit (expand ratio 1): the depthwise conv joins the stem's group.
    stem = _group_of(groups, "features.0.conv")
    assert stem.depthwise == (("features.1.conv.dw.conv", 0),) and stem.width == 16
    # Residual-connected project convs share one group per stage (stage widths at 0.5x).
    for units, width in (((2, 3), 16), ((4, 5, 6), 16), ((7, 8, 9, 10), 32), ((11, 12, 13), 48),
                         ((14, 15, 16), 80)):
        group = _group_of(groups, f"features.{units[0]}.conv.project.conv")
        assert group.producers == tuple(f"features.{u}.conv.project.conv" for u in units)
        assert group.width == width and len(group.units) == width and group.prunable
    assert _group_of(groups, "features.18.conv").consumers == (("classifier.1", 0),)
    out = _group_of(groups, "classifier.1")
    assert not out.prunable and out.reason == "network output"


def test_shufflenet_v2_shuffles_and_chunks_tie_channels_into_units() -> None:
    groups = _zoo("shufflenet_v2", width_mult=0.5)
    assert len(groups) == 23
    # The channels a stage's shuffles and chunks move around form one group per stage. A unit
    # holds the channels that must go together so that chunk(2) still splits the same
    # channels and the shuffle stays a shuffle: stage 2 (24 wide) cuts in thirds, stage 4
    # (96 wide) in twelfths, and stage 3's eight units tie everything into one unit.
    stage2 = _group_of(groups, "features.1.branch1.1.conv")
    assert stage2.prunable and stage2.width == 24 and len(stage2.units) == 3
    assert {"features.1.branch2.2.conv", "features.4.branch2.2.conv"} <= set(stage2.producers)
    stage3 = _group_of(groups, "features.5.branch1.1.conv")
    assert not stage3.prunable and "tied into one unit" in stage3.reason
    stage4 = _group_of(groups, "features.13.branch1.1.conv")
    assert stage4.prunable and stage4.width == 96 and len(stage4.units) == 12
    # Inside a unit, branch2's 1x1 -> depthwise -> 1x1 channels are cut one by one.
    inner = _group_of(groups, "features.6.branch2.0.conv")
    assert inner.prunable and inner.depthwise == (("features.6.branch2.1.conv", 0),)
    assert inner.consumers == (("features.6.branch2.2.conv", 0),) and inner.width == 48 and len(inner.units) == 48


def test_shufflenet_v1_grouped_conv_then_shuffle_ties_everything() -> None:
    groups = _zoo("shufflenet_v1")
    assert len(groups) == 3  # input, one group for all inner channels, the output
    body = _group_of(groups, "features.2.reduce.conv")
    assert not body.prunable and "tied into one unit" in body.reason
    assert ("features.2.reduce.conv", 0) in body.consumers  # grouped convs read it by whole groups
    assert any(m.kind == "group_out" and m.name == "features.2.reduce.conv" for m in body.members)


def test_squeezenet_fire_concat_offsets() -> None:
    groups = _zoo("squeezenet")
    assert len(groups) == 27
    assert sum(g.prunable for g in groups) == 25
    # Fire (squeeze, expand) at 28 px: features.3/4 expand 64, 6/7 128, 9/10 192, 11/12 256.
    nxt = {3: "features.4.squeeze", 4: "features.6.squeeze", 6: "features.7.squeeze", 7: "features.9.squeeze",
           9: "features.10.squeeze", 10: "features.11.squeeze", 11: "features.12.squeeze", 12: "classifier.1"}
    widths = {3: 64, 4: 64, 6: 128, 7: 128, 9: 192, 10: 192, 11: 256, 12: 256}
    for fire, consumer in nxt.items():
        left = _group_of(groups, f"features.{fire}.expand1x1")
        right = _group_of(groups, f"features.{fire}.expand3x3")
        assert left.consumers == ((consumer, 0),)
        assert right.consumers == ((consumer, widths[fire]),)
        assert left.channels == right.channels == widths[fire]
        squeeze = _group_of(groups, f"features.{fire}.squeeze")
        assert squeeze.consumers == ((f"features.{fire}.expand1x1", 0), (f"features.{fire}.expand3x3", 0))


class _CatAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 8, 1)
        self.d = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(torch.cat([self.a(x), self.b(x)], dim=1))
        z = torch.relu(self.c(y)) + self.d(x)
        z = torch.roll(self.dw(z), 1, 1)
        return self.fc(z.mean((2, 3), keepdim=True).flatten(1))


def test_tiny_cat_and_add() -> None:
    groups = build_groups(_CatAdd(), (3, 8, 8))
    a, b = _group_of(groups, "a"), _group_of(groups, "b")
    assert a.prunable and b.prunable
    assert (a.width, b.width) == (4, 6)
    assert a.consumers == (("c", 0),) and b.consumers == (("c", 4),)
    assert a.norms == (("bn", 0),) and b.norms == (("bn", 4),)
    added = _group_of(groups, "c")
    assert added.producers == ("c", "d") and added.width == 8 and added.channels == 16
    assert added.depthwise == (("dw", 0),)
    # torch.roll is not a known op: refused with its name, never guessed.
    assert not added.prunable and "unsupported op roll" in added.reason
    inp = groups[0]
    assert inp.reason == "network input"
    assert inp.consumers == (("a", 0), ("b", 0), ("d", 0))
    rows = describe_groups(groups)
    assert json.loads(json.dumps(rows)) == rows
    assert rows[1]["consumers"] == [{"name": "c", "offset": 0}]


class _Mismatch(nn.Module):
    """cat(4, 4) + conv(8): channel k of the concat meets channel k of c; then a spatial flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 4, 1)
        self.c = nn.Conv2d(1, 8, 1)
        self.head = nn.Sequential(nn.Conv2d(8, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


def test_add_of_a_concat_and_flatten_into_linear() -> None:
    groups = build_groups(_Mismatch(), (1, 4, 4))
    added = _group_of(groups, "c")
    assert added.prunable and set(added.producers) == {"a", "b", "c"} and len(added.units) == 8
    # Unit k holds channel k of c and channel k of the concat (a's first four, b's next four).
    out_c = next(m for m in added.members if m.name == "c" and m.kind == "out")
    out_a = next(m for m in added.members if m.name == "a" and m.kind == "out")
    unit_of = {a: i for i, u in enumerate(added.units) for a in u}
    assert [unit_of[a] for a in out_a.atoms] == [unit_of[a] for a in out_c.atoms[:4]]
    # head.0's two channels feed the Linear as 16 features each (a 4x4 map flattened).
    flat = _group_of(groups, "head.0")
    assert flat.prunable and len(flat.units) == 2
    (linear_in,) = [m for m in flat.members if m.name == "head.2"]
    assert linear_in.kind == "in" and linear_in.positions == tuple(range(32))
    assert linear_in.atoms == (0,) * 16 + (1,) * 16
    assert _group_of(groups, "head.2").reason == "network output"


class _LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.gamma = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x) * self.gamma)


def test_per_channel_parameter_joins_the_group_and_others_are_refused() -> None:
    group = _group_of(build_groups(_LayerScale(), (1, 4, 4)), "conv")
    assert group.prunable
    (gamma,) = [m for m in group.members if m.kind == "param"]
    assert gamma.name == "gamma" and gamma.positions == (0, 1, 2, 3)

    class _Table(_LayerScale):  # a 2-D tensor (channels x something) used in forward is not followed
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(1, 4, 4, 1))

    group = _group_of(build_groups(_Table(), (1, 4, 4)), "conv")
    assert not group.prunable and "tensor attribute gamma" in group.reason


def test_training_modes_restored() -> None:
    model = _CatAdd()
    model.bn.eval()  # a frozen BN inside a training model must stay frozen
    build_groups(model, (3, 8, 8))
    assert model.training and not model.bn.training


class _Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x
        return -x


def test_untraceable_and_bad_shape_are_user_errors() -> None:
    with pytest.raises(UserError, match="cannot trace _Branchy"):
        build_groups(_Branchy(), (1, 4, 4))
    with pytest.raises(UserError, match="input_shape"):
        build_groups(_CatAdd(), (3, 8))
    with pytest.raises(UserError, match="fails on a zero input"):
        build_groups(_CatAdd(), (2, 8, 8))  # conv a expects 3 channels


def test_group_validation() -> None:
    member = Member("conv", "out", (0, 1), (0, 1))
    with pytest.raises(ValueError, match="reason"):
        ChannelGroup(2, ((0,), (1,)), (member,), prunable=False)
    with pytest.raises(ValueError, match="channels"):
        ChannelGroup(0, (), (), prunable=True)
    with pytest.raises(ValueError, match="partition"):
        ChannelGroup(2, ((0,),), (member,), prunable=True)
    with pytest.raises(ValueError, match="kind"):
        Member("conv", "weights", (0,), (0,))


def _prunable(groups: list[ChannelGroup]) -> list[tuple]:
    return sorted((g.producers, g.channels, g.units, tuple(sorted((m.name, m.kind, m.positions) for m in g.members)))
                  for g in groups if g.prunable)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet20", {}), ("mobilenet_v2", {"width_mult": 0.5}), ("shufflenet_v2", {"width_mult": 0.5}),
    ("squeezenet", {}), ("shufflenet_v1", {}),
])
def test_torch_export_graph_gives_the_same_groups_as_fx(name: str, kwargs: dict) -> None:
    model = create_model(name, num_classes=10, in_channels=1, input_size=28, **kwargs)
    fx_groups = build_groups(model, (1, 28, 28), tracer="fx")
    export_groups = build_groups(model, (1, 28, 28), tracer="export")
    assert _prunable(export_groups) == _prunable(fx_groups)
    assert len(export_groups) == len(fx_groups)


class _ShapeBranch(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 8:
            x = nn.functional.avg_pool2d(x, 2)
        y = torch.relu(self.bn(self.a(x)))
        y = y + self.b(y)
        return self.fc(self.norm(y.mean((2, 3))))


def test_fx_failure_falls_back_to_torch_export_and_says_so() -> None:
    with pytest.raises(UserError, match="cannot trace _ShapeBranch with torch.fx"):
        build_groups(_ShapeBranch(), (1, 16, 16), tracer="fx")
    with pytest.warns(UserWarning, match="torch.fx cannot trace _ShapeBranch .*torch.export's graph for input shape \\(1, 16, 16\\)"):
        groups = build_groups(_ShapeBranch(), (1, 16, 16))
    (group,) = [g for g in groups if g.prunable]
    assert set(group.producers) == {"a", "b"}  # the residual add ties a and b
    assert {(m.name, m.kind) for m in group.members} == {
        ("a", "out"), ("bn", "norm"), ("b", "in"), ("b", "out"), ("norm", "norm"), ("fc", "in")}
    with pytest.raises(UserError, match="tracer must be one of"):
        build_groups(_ShapeBranch(), (1, 16, 16), tracer="jit")


class _ScaledConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight * 2, self.bias, self.stride, self.padding)


class _OwnConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3)
        self.b = _ScaledConv(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_torch_export_leaves_a_conv_with_its_own_forward_refused() -> None:
    """Only an exact nn.Conv2d call on its own weights becomes the module again; the rest is refused."""
    groups = build_groups(_OwnConv(), (1, 8, 8), tracer="export")
    by_producer = {p: g for g in groups for p in g.producers}
    assert not by_producer["a"].prunable and "conv2d" in by_producer["a"].reason
    fx_groups = build_groups(_OwnConv(), (1, 8, 8), tracer="fx")  # fx traces into b's forward: the same refusal
    def layers(gs: list[ChannelGroup]) -> list[tuple]:
        return sorted((g.producers, g.prunable) for g in gs if g.producers)

    assert layers(fx_groups) == layers(groups) == [(("a",), False), (("c",), False)]
