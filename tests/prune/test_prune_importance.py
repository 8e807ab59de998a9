from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.errors import UserError
from edgecompress.graph.groups import ChannelGroup, Member, build_groups
from edgecompress.prune.importance import (
    accumulate_gradients,
    atom_values,
    get_importance,
    list_importances,
    random_importance,
    register_importance,
    score_groups,
    unit_values,
)

ALL = ["bn_scale", "fpgm", "l1", "l2", "random", "taylor"]


class ConvBNConv(nn.Module):
    """conv1 (2 -> 3, 1x1) -> bn (3) -> relu -> conv2 (3 -> 2, 1x1), weights set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            # rows (filters): l1 = 3, 7, 1; squared l2 = 5, 25, 1
            self.conv1.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.0, 1.0]]).view(3, 2, 1, 1))
            self.bn.weight.copy_(torch.tensor([0.5, -2.0, 0.1]))
            # columns: l1 = 2, 2, 3; squared l2 = 2, 4, 9
            self.conv2.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, 3.0]]).view(2, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def single_units(n: int) -> tuple[tuple[int, ...], ...]:
    return tuple((i,) for i in range(n))


def mid_group(*kinds: str) -> ChannelGroup:
    """The 3-channel group between conv1 and conv2, with the members of the given kinds."""
    every = {
        "out": Member("conv1", "out", (0, 1, 2), (0, 1, 2)),
        "norm": Member("bn", "norm", (0, 1, 2), (0, 1, 2)),
        "in": Member("conv2", "in", (0, 1, 2), (0, 1, 2)),
    }
    return ChannelGroup(channels=3, units=single_units(3), members=tuple(every[k] for k in kinds), prunable=True)


def normalised(values: list[float]) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float64)
    return v / v.mean()


def close(actual: torch.Tensor, expected: torch.Tensor | list[float]) -> None:
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


# --- registry --------------------------------------------------------------------------

def test_registry_lists_the_six_criteria_and_rejects_unknown_names():
    assert list_importances() == ALL
    with pytest.raises(UserError, match=r"unknown importance criterion 'l3'.*did you mean l2, l1\?"):
        get_importance("l3")
    with pytest.raises(ValueError, match="already registered"):
        register_importance("l1")(lambda model, group: torch.zeros(0))


# --- helpers ---------------------------------------------------------------------------

def test_atom_values_scatter_positions_and_unit_values_sum_atoms():
    group = ChannelGroup(channels=4, units=((0, 2), (1, 3)), members=(), prunable=True)
    member = Member("fc", "in", (0, 1, 2, 3, 4), (1, 1, 3, 0, 1))
    atoms = atom_values(group, member, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    close(atoms, [4.0, 8.0, 0.0, 3.0])
    close(unit_values(group, atoms), [4.0 + 0.0, 8.0 + 3.0])


# --- magnitude criteria ----------------------------------------------------------------

def test_l1_and_l2_of_producer_rows_are_normalised_norms():
    model = ConvBNConv()
    close(get_importance("l1")(model, mid_group("out")), normalised([3, 7, 1]))
    close(get_importance("l2")(model, mid_group("out")), normalised([math.sqrt(5), 5, 1]))
    # BatchNorm scales are bn_scale's business: the same group with its BN scores the same.
    close(get_importance("l1")(model, mid_group("out", "norm")), normalised([3, 7, 1]))


def test_members_are_normalised_then_combined_with_reduce():
    model = ConvBNConv()
    group = mid_group("out", "norm", "in")
    rows, cols = normalised([3, 7, 1]), normalised([2, 2, 3])
    l1 = get_importance("l1")
    close(l1(model, group), (rows + cols) / 2)
    close(l1(model, group, reduce="sum"), rows + cols)
    close(l1(model, group, reduce="max"), torch.maximum(rows, cols))
    # A layer with 1000x larger weights does not outvote the other one.
    with torch.no_grad():
        model.conv2.weight.mul_(1000.0)
    close(l1(model, group), (rows + cols) / 2)
    with pytest.raises(UserError, match="reduce 'median'"):
        l1(model, group, reduce="median")


def test_linear_after_flatten_pools_the_columns_of_an_atom():
    fc = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, -2.0, 2.0, 0.0]]))
    model = nn.Sequential()
    model.add_module("fc", fc)
    # Two channels of 2 pixels each after a flatten: atom 0 owns columns 0, 1; atom 1 owns 2, 3.
    group = ChannelGroup(channels=2, units=single_units(2), members=(Member("fc", "in", (0, 1, 2, 3), (0, 0, 1, 1)),),
                         prunable=True)
    close(get_importance("l1")(model, group), normalised([3, 2]))
    close(get_importance("l2")(model, group), normalised([math.sqrt(5), 2]))


def test_grouped_conv_input_slices_come_from_their_conv_group():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)  # weight [4 out, 2 in-per-group, 1, 1]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]).view(4, 2, 1, 1))
    model = nn.Sequential()
    model.add_module("g", conv)
    group = ChannelGroup(channels=4, units=((0, 1), (2, 3)), members=(Member("g", "group_in", (0, 1, 2, 3), (0, 1, 2, 3)),),
                         prunable=True)
    # input channel 0 -> rows 0, 1 col 0: 1 + 3; channel 1 -> 2 + 4; channel 2 -> rows 2, 3 col 0: 5 + 7; channel 3 -> 6 + 8
    atoms = normalised([4, 6, 12, 14])
    close(get_importance("l1")(model, group), [atoms[0] + atoms[1], atoms[2] + atoms[3]])


def test_units_of_two_atoms_sum_their_atoms():
    """A residual pair: conv_a makes atoms 0, 1 and conv_b atoms 2, 3; units tie (0, 2) and (1, 3)."""
    model = nn.Module()
    model.a = nn.Conv2d(1, 2, 1, bias=False)
    model.b = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))
        model.b.weight.copy_(torch.tensor([10.0, 30.0]).view(2, 1, 1, 1))
    group = ChannelGroup(channels=4, units=((0, 2), (1, 3)), prunable=True, members=(
        Member("a", "out", (0, 1), (0, 1)), Member("b", "out", (0, 1), (2, 3))))
    # each member: [1, 3] / 2 = [0.5, 1.5]; unit 0 = 0.5 + 0.5, unit 1 = 1.5 + 1.5
    close(get_importance("l1")(model, group), [1.0, 3.0])


# --- bn_scale ----------------------------------------------------------------------------

def test_bn_scale_follows_abs_gamma_and_needs_an_affine_norm():
    model = ConvBNConv()
    scores = get_importance("bn_scale")(model, mid_group("out", "norm", "in"))
    close(scores, normalised([0.5, 2.0, 0.1]))
    assert scores.argsort().tolist() == [2, 0, 1]
    with pytest.raises(UserError, match=r"bn_scale.*conv1.*no BatchNorm"):
        get_importance("bn_scale")(model, mid_group("out", "in"))
    model.bn = nn.BatchNorm2d(3, affine=False)  # a weightless norm is skipped by the others, refused here
    with pytest.raises(UserError, match="affine"):
        get_importance("bn_scale")(model, mid_group("out", "norm"))
    close(get_importance("l1")(model, mid_group("out", "norm")), normalised([3, 7, 1]))


# --- taylor ------------------------------------------------------------------------------

def test_taylor_is_squared_sum_of_weight_times_grad_per_channel():
    model = ConvBNConv()
    group = mid_group("out")
    with pytest.raises(UserError, match="accumulate_gradients"):
        get_importance("taylor")(model, group)
    model.conv1.weight.grad = torch.tensor([[1.0, 1.0], [0.5, 0.5], [2.0, -1.0]]).view(3, 2, 1, 1)
    # rows . grads: 1 + 2 = 3; 1.5 - 2 = -0.5; 0 - 1 = -1  -> squared 9, 0.25, 1
    close(get_importance("taylor")(model, group), normalised([9.0, 0.25, 1.0]))


def test_accumulate_gradients_runs_in_eval_mode_and_restores_the_flag():
    torch.manual_seed(0)
    model = ConvBNConv()
    model.train()
    model.bn.eval()  # a frozen BN must stay frozen
    stats = model.bn.running_mean.clone()
    x = torch.randn(8, 2, 4, 4)
    y = torch.randint(0, 2, (8, 4, 4))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    accumulate_gradients(model, loader, batches=5)  # only 2 batches exist: both are used
    assert model.training and not model.bn.training and model.conv1.training
    assert torch.equal(model.bn.running_mean, stats)
    # The same gradient computed directly: the sum over the two batches of the eval-mode loss.
    ref = ConvBNConv()
    ref.eval()
    for xb, yb in loader:
        nn.functional.cross_entropy(ref(xb), yb).backward()
    close(model.conv1.weight.grad.flatten(), ref.conv1.weight.grad.flatten())
    scores = get_importance("taylor")(model, mid_group("out", "norm", "in"))
    assert scores.shape == (3,) and bool((scores >= 0).all()) and float(scores.sum()) > 0
    with pytest.raises(UserError, match="batches = 0"):
        accumulate_gradients(model, loader, batches=0)
    with pytest.raises(UserError, match="no batches"):
        accumulate_gradients(model, [], batches=1)


# --- fpgm --------------------------------------------------------------------------------

def test_fpgm_ranks_the_filter_nearest_the_others_least_important():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    points = [(0.0, 0.0), (2.0, 0.0), (0.0, 2.0), (0.6, 0.6)]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(points).view(4, 2, 1, 1))
    model = nn.Sequential()
    model.add_module("c", conv)
    group = ChannelGroup(channels=4, units=single_units(4), members=(Member("c", "out", (0, 1, 2, 3), (0, 1, 2, 3)),),
                         prunable=True)
    sums = [sum(math.dist(p, q) for q in points) for p in points]
    scores = get_importance("fpgm")(model, group)
    close(scores, normalised(sums))
    assert int(scores.argmin()) == 3


# --- random ------------------------------------------------------------------------------

def test_random_is_reproducible_per_seed():
    model, group = ConvBNConv(), mid_group("out", "in")
    a = random_importance(model, group, seed=1)
    assert torch.equal(a, random_importance(model, group, seed=1))
    assert not torch.equal(a, random_importance(model, group, seed=2))
    assert a.shape == (3,) and bool(((a >= 0) & (a < 1)).all())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_importance(model, group, generator=g1), random_importance(model, group, generator=g2))
    seeded = functools.partial(random_importance, seed=1)
    assert torch.equal(score_groups(model, [group], seeded)[0], a)


# --- whole models ------------------------------------------------------------------------

def test_score_groups_on_built_groups_gives_empty_tensors_for_fixed_groups():
    model = ConvBNConv()
    groups = build_groups(model, (2, 4, 4))
    scores = score_groups(model, groups, "l1")
    assert [s.numel() for s in scores] == [len(g.units) if g.prunable else 0 for g in groups]
    (mid,) = [s for s, g in zip(scores, groups) if g.prunable]
    close(mid, (normalised([3, 7, 1]) + normalised([2, 2, 3])) / 2)
    with pytest.raises(UserError, match="unknown importance"):
        score_groups(model, groups, "l0")


def test_every_criterion_scores_every_prunable_group_of_resnet20():
    from edgecompress.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    groups = build_groups(model, (1, 28, 28))
    data = TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    accumulate_gradients(model, DataLoader(data, batch_size=4), batches=2)
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) >= 10
    for name in list_importances():
        for reduce in ("mean", "max"):
            for group, scores in zip(groups, score_groups(model, groups, name, reduce)):
                if not group.prunable:
                    assert scores.numel() == 0
                    continue
                assert scores.shape == (len(group.units),), (name, group.producers)
                assert bool(torch.isfinite(scores).all()) and bool((scores >= 0).all()), (name, group.producers)
