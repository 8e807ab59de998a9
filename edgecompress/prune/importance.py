"""Importance criteria for structured pruning: one score per unit of a `ChannelGroup`.

A criterion is a function `(model, group) -> Tensor[len(group.units)]` of non-negative
floats, higher = more important; the pruner removes the lowest-scoring units. Criteria are
registered by name (`get_importance("l2")`, `list_importances()`), so adding one adds a
function, not a branch.

Weight-based criteria score each member of the group separately, one value per atom, then:

1. normalise: divide a member's atom scores by their mean over the atoms it touches, so
   a layer with large weights (or large gradients) does not outvote the others;
2. combine the members touching an atom with `reduce` ("mean", "sum" or "max");
3. sum the atoms of each unit (a unit of a residual group holds one atom per producer).

Which slice of a member's parameters belongs to a position:
  "out", "group_out", "depthwise": weight[pos] (a filter or a Linear row), bias[pos];
  "in": weight[:, pos] (a column; after a flatten an atom has one column per pixel, and the
        columns of an atom are pooled before the norm, so l2 is the norm of all of them);
  "group_in": weight[rows of pos's conv group, pos % in_per_group];
  "norm": weight[pos] (|gamma|), bias[pos].
Members without a usable weight (BatchNorm with affine=False, bias-only) are skipped.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from edgecompress.errors import UserError, suggest
from edgecompress.graph.groups import ChannelGroup, Member

ImportanceFn = Callable[[nn.Module, ChannelGroup], torch.Tensor]
REDUCTIONS = ("mean", "sum", "max")

_PRODUCER_KINDS = ("out", "group_out", "depthwise")
_WEIGHT_KINDS = ("out", "group_out", "depthwise", "in", "group_in")
_ALL_KINDS = _WEIGHT_KINDS + ("norm",)

_REGISTRY: dict[str, ImportanceFn] = {}


# --- registry ------------------------------------------------------------------------

def register_importance(name: str) -> Callable[[ImportanceFn], ImportanceFn]:
    """Decorator: `@register_importance("l1")` makes `get_importance("l1")` return the function."""
    def add(fn: ImportanceFn) -> ImportanceFn:
        if name in _REGISTRY:
            raise ValueError(f"importance criterion {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return add


def get_importance(name: str) -> ImportanceFn:
    """The criterion registered as `name`; UserError for an unknown name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown importance criterion {name!r}{suggest(str(name), _REGISTRY)}; "
                        f"choose one of {', '.join(list_importances())}") from None


def list_importances() -> list[str]:
    """Registered criterion names, sorted."""
    return sorted(_REGISTRY)


# --- reusable helpers ----------------------------------------------------------------

def atom_values(group: ChannelGroup, member: Member, per_position: torch.Tensor) -> torch.Tensor:
    """Sum `per_position` (one value per member.positions entry) into one value per atom: Tensor[group.channels].

    Atoms the member does not touch get 0.
    """
    if per_position.shape != (len(member.positions),):
        raise ValueError(f"per_position has shape {tuple(per_position.shape)}, member {member.name} "
                         f"has {len(member.positions)} positions")
    out = torch.zeros(group.channels, dtype=per_position.dtype, device=per_position.device)
    index = torch.tensor(member.atoms, dtype=torch.long, device=per_position.device)
    return out.index_add_(0, index, per_position)


def unit_values(group: ChannelGroup, atom_scores: torch.Tensor) -> torch.Tensor:
    """Sum atom scores (Tensor[group.channels]) over each unit: Tensor[len(group.units)]."""
    if atom_scores.shape != (group.channels,):
        raise ValueError(f"atom_scores has shape {tuple(atom_scores.shape)}, the group has {group.channels} atoms")
    unit_of = torch.empty(group.channels, dtype=torch.long, device=atom_scores.device)
    for i, unit in enumerate(group.units):
        unit_of[list(unit)] = i
    out = torch.zeros(len(group.units), dtype=atom_scores.dtype, device=atom_scores.device)
    return out.index_add_(0, unit_of, atom_scores)


def _module(model: nn.Module, group: ChannelGroup, member: Member) -> nn.Module:
    try:
        return model.get_submodule(member.name)
    except AttributeError:
        raise UserError(f"group member {member.name!r} (producers {', '.join(group.producers) or 'none'}) is not a "
                        f"module of {type(model).__name__}; build the groups from this model") from None


def _param(module: nn.Module, attr: str) -> torch.Tensor | None:
    p = getattr(module, attr, None)
    return p if isinstance(p, torch.Tensor) and p.is_floating_point() else None


def _rows(t: torch.Tensor, module: nn.Module, member: Member) -> torch.Tensor:
    """The slice of `t` (a weight, or its gradient) each position owns: Tensor[len(positions), K]."""
    pos = torch.tensor(member.positions, dtype=torch.long, device=t.device)
    if member.kind in ("out", "group_out", "depthwise", "norm"):
        return t[pos].reshape(len(pos), -1)
    if member.kind == "in":
        return t[:, pos].movedim(1, 0).reshape(len(pos), -1)
    if member.kind == "group_in":  # weight is [out, in/groups, kh, kw]: a position lives in one conv group
        per_in = t.shape[1]
        per_out = t.shape[0] // module.groups
        conv_group, local = pos // per_in, pos % per_in
        out_rows = conv_group[:, None] * per_out + torch.arange(per_out, device=t.device)[None, :]
        return t[out_rows, local[:, None]].reshape(len(pos), -1)
    raise ValueError(f"member {member.name} has unknown kind {member.kind!r}")


def _combine(group: ChannelGroup, scored: list[tuple[Member, torch.Tensor]], reduce: str) -> torch.Tensor:
    """Normalise each member's atom scores by their mean, combine per atom with `reduce`, sum per unit."""
    if reduce not in REDUCTIONS:
        raise UserError(f"reduce {reduce!r} must be one of {', '.join(REDUCTIONS)}")
    scores, masks = [], []
    for member, atoms in scored:
        mask = torch.zeros(group.channels, dtype=torch.bool)
        mask[list(member.atoms)] = True
        atoms = atoms.detach().to("cpu", torch.float64)
        mean = atoms[mask].mean()
        # An all-zero member carries no ranking information; dividing would make NaNs.
        scores.append(atoms / mean if mean > 0 else atoms)
        masks.append(mask)
    s, m = torch.stack(scores), torch.stack(masks)
    count = m.sum(0)
    if reduce == "max":
        combined = torch.where(m, s, torch.full_like(s, -torch.inf)).amax(0)
        combined = torch.where(count > 0, combined, torch.zeros_like(combined))
    else:
        combined = torch.where(m, s, torch.zeros_like(s)).sum(0)
        if reduce == "mean":
            combined = combined / count.clamp(min=1)
    return unit_values(group, combined).float()


def _score_members(model: nn.Module, group: ChannelGroup, kinds: tuple[str, ...], reduce: str, criterion: str,
                   per_member: Callable[[nn.Module, Member, torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """Shared driver: `per_member(module, member, weight)` gives the member's Tensor[group.channels]
    of atom scores (or None to skip it); members of other kinds or without a weight are skipped."""
    scored = []
    for member in group.members:
        if member.kind not in kinds or not member.positions:
            continue
        module = _module(model, group, member)
        weight = _param(module, "weight")
        if weight is None:
            continue
        atoms = per_member(module, member, weight)
        if atoms is not None:
            scored.append((member, atoms))
    if not scored:
        raise UserError(f"importance {criterion!r}: the group of {', '.join(group.producers) or 'no producer'} "
                        f"has no member with weights it can score ({', '.join(kinds)}); choose another criterion")
    return _combine(group, scored, reduce)


# --- criteria ------------------------------------------------------------------------

@register_importance("l1")
def l1_importance(model: nn.Module, group: ChannelGroup, *, reduce: str = "mean") -> torch.Tensor:
    """Sum of |w| over each member's slice (filters, columns); BatchNorm scales are left to bn_scale."""
    def per_member(module: nn.Module, member: Member, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return atom_values(group, member, _rows(weight, module, member).abs().sum(1))
    return _score_members(model, group, _WEIGHT_KINDS, reduce, "l1", per_member)


@register_importance("l2")
def l2_importance(model: nn.Module, group: ChannelGroup, *, reduce: str = "mean") -> torch.Tensor:
    """Euclidean norm of each member's slice; an atom with several columns gets the norm of all of them."""
    def per_member(module: nn.Module, member: Member, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return atom_values(group, member, _rows(weight, module, member).pow(2).sum(1)).sqrt()
    return _score_members(model, group, _WEIGHT_KINDS, reduce, "l2", per_member)


@register_importance("bn_scale")
def bn_scale_importance(model: nn.Module, group: ChannelGroup, *, reduce: str = "mean") -> torch.Tensor:
    """|gamma| of the group's BatchNorm/LayerNorm members (network slimming, Liu et al. ICCV 2017)."""
    def per_member(module: nn.Module, member: Member, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return atom_values(group, member, _rows(weight, module, member).abs().sum(1))
    if not any(m.kind == "norm" and _param(_module(model, group, m), "weight") is not None for m in group.members):
        raise UserError(f"importance 'bn_scale': the group of {', '.join(group.producers) or 'no producer'} has no "
                        "BatchNorm or LayerNorm with affine weights; use l1, l2, taylor or fpgm for it")
    return _score_members(model, group, ("norm",), reduce, "bn_scale", per_member)


@register_importance("taylor")
def taylor_importance(model: nn.Module, group: ChannelGroup, *, reduce: str = "mean") -> torch.Tensor:
    """First-order Taylor estimate of the loss change (Molchanov et al. CVPR 2019): (sum of w * dL/dw)^2
    over each member's slice (weight, plus bias for filters and norms), using the `.grad` already
    accumulated on the parameters (see `accumulate_gradients`)."""
    def has_grad(member: Member) -> bool:
        weight = _param(_module(model, group, member), "weight")
        return weight is not None and weight.grad is not None

    if not any(has_grad(m) for m in group.members if m.positions):
        raise UserError(f"importance 'taylor': no gradients on the layers of the group of "
                        f"{', '.join(group.producers) or 'no producer'}; call accumulate_gradients(model, "
                        "loader, batches) first")

    def per_member(module: nn.Module, member: Member, weight: torch.Tensor) -> torch.Tensor | None:
        if weight.grad is None:
            return None  # a frozen parameter: it would not change, so it does not vote
        with torch.no_grad():
            per_pos = _rows(weight * weight.grad, module, member).sum(1)
            bias = _param(module, "bias")
            if member.kind in _PRODUCER_KINDS + ("norm",) and bias is not None and bias.grad is not None:
                per_pos = per_pos + _rows(bias * bias.grad, module, member).sum(1)
            # Square after pooling the positions: an atom is one parameter group, however many columns it has.
            return atom_values(group, member, per_pos).pow(2)

    return _score_members(model, group, _ALL_KINDS, reduce, "taylor", per_member)


@register_importance("fpgm")
def fpgm_importance(model: nn.Module, group: ChannelGroup, *, reduce: str = "mean") -> torch.Tensor:
    """Filter pruning via geometric median (He et al. CVPR 2019): for each producer filter, the sum of
    Euclidean distances to the other filters of its layer; a filter near the others' geometric median
    (small sum) is replaceable by them, hence least important."""
    def per_member(module: nn.Module, member: Member, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rows = _rows(weight, module, member).double()
            return atom_values(group, member, torch.cdist(rows, rows).sum(1))
    return _score_members(model, group, _PRODUCER_KINDS, reduce, "fpgm", per_member)


@register_importance("random")
def random_importance(model: nn.Module, group: ChannelGroup, *, reduce: str = "mean", seed: int = 0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random scores in [0, 1), one per unit: the baseline every criterion must beat.

    With `generator`, draws from it. Otherwise draws from a generator seeded with `seed` mixed
    with the group's producers, so a seed gives the same scores every call and groups of the
    same size get different orders. `reduce` is accepted for a uniform signature and ignored.
    """
    del model, reduce
    if generator is None:
        tag = "|".join(group.producers) + f"#{group.channels}"
        generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(tag.encode())) % 2**63)
    return torch.rand(len(group.units), generator=generator)


# --- whole model ---------------------------------------------------------------------

def score_groups(model: nn.Module, groups: Iterable[ChannelGroup], criterion: str | ImportanceFn = "l2",
                 reduce: str = "mean") -> list[torch.Tensor]:
    """One score vector per group, in order: Tensor[len(group.units)] (float32, CPU) for a prunable
    group, an empty tensor for a group that is not prunable.

    criterion: a registered name (then `reduce` is passed to it) or any ImportanceFn (called as
    fn(model, group); bind options with functools.partial, e.g. partial(random_importance, seed=3)).
    """
    if reduce not in REDUCTIONS:
        raise UserError(f"reduce {reduce!r} must be one of {', '.join(REDUCTIONS)}")
    fn: Callable[..., Any]
    fn = functools.partial(get_importance(criterion), reduce=reduce) if isinstance(criterion, str) else criterion
    out = []
    for group in groups:
        if not group.prunable:
            out.append(torch.empty(0))
            continue
        scores = torch.as_tensor(fn(model, group)).detach().to("cpu", torch.float32)
        if scores.shape != (len(group.units),):
            raise ValueError(f"importance returned shape {tuple(scores.shape)} for a group of "
                             f"{len(group.units)} units ({', '.join(group.producers)})")
        out.append(scores)
    return out


def accumulate_gradients(model: nn.Module, loader: Iterable[Any], batches: int,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Zero the gradients, then add up d(loss)/d(parameter) over `batches` batches of (x, y) from `loader`.

    Runs in eval mode (BatchNorm statistics and dropout frozen, so scoring does not change the
    model) with autograd on; restores every module's training flag. loss_fn defaults to
    cross-entropy. A loader shorter than `batches` is used whole.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UserError(f"batches = {batches!r} must be an int >= 1 (how many batches to accumulate gradients over)")
    loss_fn = loss_fn or nn.functional.cross_entropy
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    model.zero_grad(set_to_none=True)
    model.eval()
    seen = 0
    try:
        with torch.enable_grad():
            for batch in loader:
                if seen >= batches:
                    break
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise UserError(f"accumulate_gradients needs batches of (inputs, targets), got {type(batch).__name__}")
                x, y = batch[0].to(device), batch[1].to(device)
                loss_fn(model(x), y).backward()
                seen += 1
    finally:
        for m, training in modes.items():
            m.training = training
    if seen == 0:
        raise UserError("accumulate_gradients: the loader yielded no batches; pass a non-empty data loader")
