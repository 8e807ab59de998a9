"""Coupled-channel groups on the zoo and on hand-built graphs (edgecompress/graph/groups.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.graph.groups import SHUFFLE_REASON, ChannelGroup, build_groups, describe_groups
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
        assert group.prunable and group.channels == 16 * 2**stage
        expected = {f"features.{b}.conv2.conv" for b in blocks}
        expected.add("features.0.conv" if stage == 0 else f"features.{blocks[0]}.shortcut.conv")
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
    assert not out.prunable and out.reason == "network output" and out.channels == 10
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
    assert stem.depthwise == (("features.1.conv.dw.conv", 0),) and stem.channels == 16
    # Residual-connected project convs share one group per stage (stage widths at 0.5x).
    for units, width in (((2, 3), 16), ((4, 5, 6), 16), ((7, 8, 9, 10), 32), ((11, 12, 13), 48),
                         ((14, 15, 16), 80)):
        group = _group_of(groups, f"features.{units[0]}.conv.project.conv")
        assert group.producers == tuple(f"features.{u}.conv.project.conv" for u in units)
        assert group.channels == width and group.prunable
    assert _group_of(groups, "features.18.conv").consumers == (("classifier.1", 0),)
    out = _group_of(groups, "classifier.1")
    assert not out.prunable and out.reason == "network output"


def test_shufflenet_v2_shuffle_groups_refused() -> None:
    groups = _zoo("shufflenet_v2", width_mult=0.5)
    assert len(groups) == 23
    refused = [g for g in groups if not g.prunable and g.producers and g.reason != "network output"]
    assert len(refused) == 3  # one per stage: everything the shuffles and splits mix
    for group in refused:
        assert SHUFFLE_REASON in group.reason
    assert "features.5.branch1.1.conv" in refused[1].producers
    # Inside a unit, branch2's 1x1 -> depthwise -> 1x1 channels are still prunable.
    inner = _group_of(groups, "features.6.branch2.0.conv")
    assert inner.prunable and inner.depthwise == (("features.6.branch2.1.conv", 0),)
    assert inner.consumers == (("features.6.branch2.2.conv", 0),) and inner.channels == 48


def test_shufflenet_v1_grouped_convs_refused() -> None:
    groups = _zoo("shufflenet_v1")
    assert len(groups) == 19
    assert not any(g.prunable for g in groups)  # every group touches a grouped 1x1 conv
    reduce = _group_of(groups, "features.2.reduce.conv")
    assert "grouped conv features.2.reduce.conv (groups=3)" in reduce.reason
    assert SHUFFLE_REASON in reduce.reason


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
    assert (a.channels, b.channels) == (4, 6)
    assert a.consumers == (("c", 0),) and b.consumers == (("c", 4),)
    assert a.norms == (("bn", 0),) and b.norms == (("bn", 4),)
    added = _group_of(groups, "c")
    assert added.producers == ("c", "d") and added.channels == 8
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
    """cat(4, 4) + conv(8): channel k lines up, but the layouts differ; and a spatial flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 4, 1)
        self.c = nn.Conv2d(1, 8, 1)
        self.head = nn.Sequential(nn.Conv2d(8, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


def test_refusals_name_the_cause() -> None:
    groups = build_groups(_Mismatch(), (1, 4, 4))
    for name in ("a", "b", "c"):
        group = _group_of(groups, name)
        assert not group.prunable and "channel layouts differ" in group.reason
    flat = _group_of(groups, "head.0")
    assert not flat.prunable and "flattens a 4x4 map" in flat.reason
    assert _group_of(groups, "head.2").reason == "network output"


class _LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.gamma = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x) * self.gamma)


def test_per_channel_parameter_is_refused_not_ignored() -> None:
    group = _group_of(build_groups(_LayerScale(), (1, 4, 4)), "conv")
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
    with pytest.raises(ValueError, match="reason"):
        ChannelGroup((), (), (), (), 4, prunable=False)
    with pytest.raises(ValueError, match="channels"):
        ChannelGroup((), (), (), (), 0, prunable=True)
