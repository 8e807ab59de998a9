"""Coupled-channel dependency groups: channels that must be pruned together.

A `ChannelGroup` is what a structured pruner scores and cuts. Its channels are *atoms*:
one output channel of a conv or linear layer. Removing an atom removes its output row
from the producer, its input column(s) from every consumer (wherever concats, splits or
shuffles moved it), its entry in every BatchNorm/LayerNorm and the matching group of a
depthwise or grouped conv. Atoms that must go together (a residual add, a channel shuffle
that must stay a shuffle, the two halves of a chunk, one group of a grouped conv) form a
*unit*; a pruner keeps or removes whole units.

How it is built
---------------
The model is traced with torch.fx and run once on a zero input by an interpreter that
carries, next to every real tensor, an *id tensor* of the same shape whose entries name
the atom each element belongs to (-1: none). Layers read ids and create new atoms; every
op that only moves data (view, reshape, flatten, transpose, permute, cat, chunk, split,
indexing) is simply run on the id tensor as well, so the tracker never needs a rule per
layout trick: a channel shuffle, a flatten into a Linear layer or a cat of tokens come out
right by construction. Then three constraints turn moved data into ties:

- an elementwise op (residual add, SE multiply) ties the atoms that meet element by element;
- a layer reading a channel dimension ties the atoms that share one position of it;
- splitting a channel dimension into two (the view of a channel shuffle, a chunk) ties
  the atoms that share an inner index, so the pruned tensor still splits the same way.

Models torch.fx cannot trace (Python control flow on shapes, calls fx cannot proxy) are
captured with torch.export instead, for the same input shape. Its ATen graph is brought to
the vocabulary above: a conv2d/linear/batch_norm/layer_norm call on a module's own parameters, with
that module's settings, becomes a call of the module; every other ATen op is looked up
under the torch function it stands for (aten.add.Tensor is an add, aten.view a move).

Refusal over guessing: any op or module this file does not know, a parameter used
directly in forward, slicing a channel range with fixed bounds, and the network's input
and output make the atoms they touch not prunable, with the reason and the node name.
"""

from __future__ import annotations

import operator
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from edgecompress.errors import UserError

OUTPUT_REASON = "network output"
INPUT_REASON = "network input"

# Modules and functions that keep every element in place (elementwise on one tensor).
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.GELU, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity,
)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.relu6, nn.functional.hardswish,
    nn.functional.hardsigmoid, nn.functional.silu, nn.functional.gelu, nn.functional.dropout,
    nn.functional.hardtanh, nn.functional.sigmoid, torch.clone,
}
_POOL_FUNCS = {nn.functional.adaptive_avg_pool2d, nn.functional.max_pool2d, nn.functional.avg_pool2d,
               nn.functional.adaptive_max_pool2d}
# torchvision.ops.stochastic_depth is fx-wrapped: it zeroes whole samples, never channels.
_PASS_NAMES = {"stochastic_depth"}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "detach", "float",
                 "to", "type_as"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.truediv,
                torch.add, torch.mul, torch.sub, torch.div}
_ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
# Ops that move elements without computing: replayed on the id tensor.
_MOVE_FUNCS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.cat, torch.concat,
               torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, torch.narrow, operator.getitem}
_MOVE_METHODS = {"view", "reshape", "flatten", "unflatten", "transpose", "permute", "chunk", "split",
                 "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "narrow", "t"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}

aten = torch.ops.aten
F = nn.functional
# ATen ops of a torch.export graph, under the torch function the tables above know them by.
# The node keeps its ATen target: that is what runs (on real tensors and, for moves, on ids).
_ATEN = {
    aten.relu.default: torch.relu, aten.relu_.default: torch.relu, aten.sigmoid.default: torch.sigmoid,
    aten.tanh.default: torch.tanh, aten.hardtanh.default: F.hardtanh, aten.hardtanh_.default: F.hardtanh,
    aten.hardswish.default: F.hardswish, aten.hardswish_.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid, aten.silu.default: F.silu, aten.silu_.default: F.silu,
    aten.gelu.default: F.gelu, aten.dropout.default: F.dropout, aten.dropout_.default: F.dropout, aten.clone.default: torch.clone,
    aten.contiguous.default: torch.clone, aten.alias.default: torch.clone,
    aten.add.Tensor: operator.add, aten.add_.Tensor: operator.add, aten.sub.Tensor: operator.sub,
    aten.mul.Tensor: operator.mul, aten.mul_.Tensor: operator.mul, aten.div.Tensor: operator.truediv,
    aten.mean.dim: torch.mean, aten.sum.dim_IntList: torch.sum, aten.amax.default: torch.amax,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d, aten.max_pool2d.default: F.max_pool2d,
    aten.avg_pool2d.default: F.avg_pool2d, aten.layer_norm.default: F.layer_norm,
    aten.view.default: torch.reshape, aten.reshape.default: torch.reshape, aten._unsafe_view.default: torch.reshape,
    aten.flatten.using_ints: torch.flatten, aten.unflatten.int: torch.reshape,
    aten.transpose.int: torch.transpose, aten.permute.default: torch.permute, aten.t.default: torch.transpose,
    aten.cat.default: torch.cat, aten.chunk.default: torch.chunk, aten.split.Tensor: torch.split,
    aten.split_with_sizes.default: torch.split, aten.squeeze.dim: torch.squeeze, aten.squeeze.dims: torch.squeeze,
    aten.unsqueeze.default: torch.unsqueeze, aten.expand.default: torch.reshape, aten.repeat.default: torch.reshape,
    aten.slice.Tensor: torch.narrow, aten.select.int: torch.narrow, aten.narrow.default: torch.narrow,
}
# ATen ops that take a fixed part of one dim: (index of the dim argument, its default).
_ATEN_SLICES = {aten.slice.Tensor: (1, 0), aten.select.int: (1, None), aten.narrow.default: (1, None)}

KINDS = ("out", "in", "norm", "depthwise", "group_in", "group_out", "param")


@dataclass(frozen=True)
class Member:
    """One module's share of a group.

    kind: "out" (Conv2d/Linear output: weight rows, bias), "in" (Conv2d/Linear input:
    weight columns), "norm" (BatchNorm channels, LayerNorm last dim), "depthwise" (a
    depthwise conv: channel k in is channel k out), "group_in"/"group_out" (the input and
    output channels of a grouped conv, removed a whole conv group at a time), "param" (a
    per-channel tensor used directly in forward, e.g. ConvNeXt's layer scale; `name` is
    the tensor's qualified name and its one dimension longer than 1 is the channel one).
    positions[i] is an index along the member's channel dimension; atoms[i] the group
    channel it carries. After a flatten one atom has several positions (one per pixel).
    """

    name: str
    kind: str
    positions: tuple[int, ...]
    atoms: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Member.kind {self.kind!r} must be one of {', '.join(KINDS)}")
        if len(self.positions) != len(self.atoms):
            raise ValueError(f"Member {self.name}: {len(self.positions)} positions but {len(self.atoms)} atoms")

    @property
    def offset(self) -> int:
        return min(self.positions) if self.positions else 0


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together, cut in whole `units`, touching `members`.

    `channels` counts atoms: one per output channel of each producer, so a residual group
    of four 16-channel convs has 64 atoms in 16 units of 4 (one per conv).
    """

    channels: int
    units: tuple[tuple[int, ...], ...]
    members: tuple[Member, ...]
    prunable: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if sorted(a for u in self.units for a in u) != list(range(self.channels)):
            raise ValueError("units must partition range(channels)")
        if not self.prunable and not self.reason:
            raise ValueError("reason must say why a group is not prunable")

    def _named(self, *kinds: str) -> tuple[tuple[str, int], ...]:
        return tuple((m.name, m.offset) for m in self.members if m.kind in kinds)

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose output channels are (part of) the group."""
        return tuple(m.name for m in self.members if m.kind in ("out", "group_out"))

    @property
    def consumers(self) -> tuple[tuple[str, int], ...]:
        """(module, first input position) of every layer reading the group."""
        return self._named("in", "group_in")

    @property
    def norms(self) -> tuple[tuple[str, int], ...]:
        return self._named("norm")

    @property
    def depthwise(self) -> tuple[tuple[str, int], ...]:
        return self._named("depthwise")

    @property
    def unit_size(self) -> int:
        """Channels one unit removes from a single layer (the most over all members): usually 1;
        a whole conv group, or several channels tied by a shuffle, otherwise."""
        unit_of = {a: i for i, u in enumerate(self.units) for a in u}
        most = 1
        for m in self.members:
            counts: dict[int, int] = defaultdict(int)
            for a in set(m.atoms):
                counts[unit_of[a]] += 1
            most = max(most, *counts.values()) if counts else most
        return most

    @property
    def width(self) -> int:
        """Channels of the widest producer (what a table of layer widths shows)."""
        return max((len(m.positions) for m in self.members if m.kind in ("out", "group_out")), default=self.channels)


class _Atoms:
    """Union-find over atoms, with the reasons that forbid pruning them."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reasons: dict[int, list[str]] = defaultdict(list)

    def new(self, n: int, reason: str | None = None) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if reason:
            for a in range(start, start + n):
                self.reasons[a].append(reason)
        return torch.arange(start, start + n)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def tie(self, pairs: torch.Tensor) -> None:
        """Union each column (a, b) of a 2 x N tensor; -1 entries are skipped."""
        if pairs.numel() == 0:
            return
        pairs = pairs[:, (pairs >= 0).all(0)]
        pairs = pairs[:, pairs[0] != pairs[1]]
        for a, b in pairs.unique(dim=1).t().tolist():
            self.union(a, b)

    def refuse(self, ids: torch.Tensor | None, reason: str) -> None:
        if ids is None:
            return
        for a in ids.unique().tolist():
            if a >= 0:
                self.reasons[a].append(reason)


def _label(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


class _Tracker(fx.Interpreter):
    """Runs the graph on real tensors and, alongside, computes every node's id tensor."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.source_modules = dict(model.named_modules())  # the traced graph drops modules it traced through
        self.atoms = _Atoms()
        self.ids: dict[fx.Node, Any] = {}
        self.members: list[tuple[str, str, list[int], list[int]]] = []  # (name, kind, positions, atoms)
        self.modules = dict(gm.named_modules())

    # --- plumbing -------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.ids[n] = self._ids_for(n, result)
        return result

    def _in_ids(self, arg: Any) -> Any:
        """The id structure of an argument (tensor ids, a tuple of them, or None)."""
        if isinstance(arg, fx.Node):
            return self.ids.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._in_ids(a) for a in arg)
        return None

    def _inputs(self, n: fx.Node) -> list[torch.Tensor]:
        out = []
        for node in n.all_input_nodes:
            v = self.ids.get(node)
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, (tuple, list)):
                out.extend(t for t in v if isinstance(t, torch.Tensor))
        return out

    def _opaque(self, n: fx.Node, result: Any, reason: str) -> Any:
        """Refuse every input atom; the result gets fresh, refused atoms."""
        for ids in self._inputs(n):
            self.atoms.refuse(ids, reason)
        return self._fresh_like(result, reason)

    def _fresh_like(self, result: Any, reason: str) -> Any:
        if isinstance(result, torch.Tensor):
            return self.atoms.new(1, reason).expand(result.shape) if result.dim() else None
        if isinstance(result, (tuple, list)):
            return tuple(self._fresh_like(r, reason) for r in result)
        return None

    # --- the walk -------------------------------------------------------------------
    def _ids_for(self, n: fx.Node, result: Any) -> Any:
        if n.op == "placeholder":
            if isinstance(result, torch.Tensor) and result.dim() >= 2:
                return _along(self.atoms.new(result.shape[1], INPUT_REASON), 1, result.shape)
            return None
        if n.op == "output":
            for ids in self._inputs(n):
                self.atoms.refuse(ids, OUTPUT_REASON)
            return None
        if n.op == "get_attr":
            return self._attr(str(n.target), result)
        if not _has_tensor(result):
            return None  # size(), dim(), shape arithmetic: carries no channels
        inputs = self._inputs(n)
        if not inputs:
            return None  # a constant made in forward (torch.zeros, arange): no atoms
        if n.op == "call_module":
            return self._module(n, self.modules[n.target], result)
        fn, is_method = _ATEN.get(n.target, n.target) if n.op == "call_function" else n.target, n.op == "call_method"
        x = self.ids.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
        if (is_method and fn in _PASS_METHODS) or (not is_method and (fn in _PASS_FUNCS or _label(n) in _PASS_NAMES)):
            return x if isinstance(x, torch.Tensor) and x.shape == result.shape else self._opaque(n, result, f"{_label(n)} ({n.name}) changes shape")
        if not is_method and fn is nn.functional.layer_norm:
            return self._layer_norm(n, x, result)
        if not is_method and fn in _POOL_FUNCS:
            return self._pool(n, x, result)
        if (is_method and fn in _ELEMENTWISE_METHODS) or (not is_method and fn in _ELEMENTWISE):
            return self._elementwise(n, result)
        if (is_method and fn in _REDUCE_METHODS) or (not is_method and fn in _REDUCE_FUNCS):
            return self._reduce(n, x, result)
        if (is_method and fn in _MOVE_METHODS) or (not is_method and fn in _MOVE_FUNCS):
            return self._move(n, result)
        return self._opaque(n, result, f"unsupported op {_label(n)} ({n.name})")

    def _attr(self, target: str, value: Any) -> Any:
        """A tensor used directly in forward. Per-channel ones (one dim longer than 1) get an atom per
        entry and are cut with the channels they meet; others refuse whatever they touch."""
        if not isinstance(value, torch.Tensor) or value.numel() <= 1:
            return None
        long_dims = [d for d, size in enumerate(value.shape) if size > 1]
        owner = self.source_modules.get(target.rpartition(".")[0])
        if len(long_dims) != 1:
            return self.atoms.new(1, f"tensor attribute {target} used in forward is not tracked").expand(value.shape)
        d, size = long_dims[0], value.shape[long_dims[0]]
        ids = self.atoms.new(size)
        if not isinstance(owner, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):  # a norm's own tensors: see _layer_norm
            self.members.append((target, "param", list(range(size)), ids.tolist()))
        return _along(ids, d, value.shape)

    def _layer_norm(self, n: fx.Node, x: Any, result: Any) -> Any:
        """F.layer_norm over the last dim (LayerNorm on a permuted map, e.g. ConvNeXt's LayerNorm2d)."""
        shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
        if not isinstance(x, torch.Tensor) or len(tuple(shape)) != 1:
            return self._opaque(n, result, f"layer_norm ({n.name}) over more than one dim")
        affine = [a for a in (list(n.args[2:4]) + [n.kwargs.get("weight"), n.kwargs.get("bias")]) if isinstance(a, fx.Node)]
        owners = {str(a.target).rpartition(".")[0] if a.op == "get_attr" else None for a in affine}
        owner = next(iter(owners)) if len(owners) == 1 else None
        if not affine:
            return x
        if not isinstance(self.source_modules.get(owner or ""), nn.LayerNorm):
            return self._opaque(n, result, f"layer_norm ({n.name}) with weights not owned by one nn.LayerNorm")
        atoms = torch.tensor(self._read(owner, "norm", x, -1))
        for a in affine:
            ids = self.ids.get(a)
            if isinstance(ids, torch.Tensor):
                self.atoms.tie(torch.stack([atoms, ids.reshape(-1)]))
        return x

    def _module(self, n: fx.Node, mod: nn.Module, result: Any) -> Any:
        name = str(n.target)
        x = self.ids.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
        if not isinstance(x, torch.Tensor):
            return self._opaque(n, result, f"unsupported input of {type(mod).__name__} ({name})")
        if isinstance(mod, nn.Conv2d) and x.dim() == 4:
            return self._conv(name, mod, x, result)
        if isinstance(mod, nn.Linear):
            self._read(name, "in", x, -1)
            out = self.atoms.new(mod.out_features)
            self._record_out(name, mod.out_features)
            return _along(out, -1, result.shape)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and x.dim() >= 2:
            self._read(name, "norm", x, 1)
            return x
        if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1:
            self._read(name, "norm", x, -1)
            return x
        if isinstance(mod, _PASS_MODULES):
            return x
        if isinstance(mod, _POOL_MODULES):
            return self._pool(n, x, result)
        if isinstance(mod, nn.Flatten):
            return self._move(n, result)
        why = f"unsupported module {type(mod).__name__} ({name})"
        if isinstance(mod, nn.MultiheadAttention):
            why = (f"attention {name}: nn.MultiheadAttention ties its heads to the embedding width, "
                   "so neither heads nor the width it reads are pruned")
        return self._opaque(n, result, why)

    def _record_out(self, name: str, n: int, kind: str = "out") -> list[int]:
        atoms = list(range(len(self.atoms.parent) - n, len(self.atoms.parent)))
        self.members.append((name, kind, list(range(n)), atoms))
        return atoms

    def _read(self, name: str, kind: str, x: torch.Tensor, dim: int) -> list[int]:
        """Record `name` reading dim `dim` of x; atoms sharing a position are tied. Returns one atom per position (-1: none)."""
        dim = dim % x.dim()
        per_pos = _compact(x, keep=dim).movedim(dim, 0).reshape(x.shape[dim], -1)
        first = per_pos[:, 0]
        if per_pos.shape[1] > 1 and not bool((per_pos == first[:, None]).all()):
            self.atoms.tie(torch.stack([first[:, None].expand_as(per_pos).reshape(-1), per_pos.reshape(-1)]))
        atoms = first.tolist()
        keep = [(p, a) for p, a in enumerate(atoms) if a >= 0]
        self.members.append((name, kind, [p for p, _ in keep], [a for _, a in keep]))
        return atoms

    def _conv(self, name: str, mod: nn.Conv2d, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
        if g == 1:
            self._read(name, "in", x, 1)
            out = self.atoms.new(cout)
            self._record_out(name, cout)
            return _along(out, 1, result.shape)
        if g == cin == cout:  # depthwise: channel k in is channel k out
            self._read(name, "depthwise", x, 1)
            return _along(x.movedim(1, 0).reshape(cin, -1)[:, 0], 1, result.shape)
        # Grouped conv: a conv group (its inputs and outputs) is removed as a whole.
        ins = self._read(name, "group_in", x, 1)
        out = self.atoms.new(cout)
        self._record_out(name, cout, "group_out")
        a, b = cin // g, cout // g
        for i in range(g):
            members = [v for v in ins[i * a:(i + 1) * a] if v >= 0] + out[i * b:(i + 1) * b].tolist()
            for v in members[1:]:
                self.atoms.union(members[0], v)
        return _along(out, 1, result.shape)

    def _pool(self, n: fx.Node, x: Any, result: torch.Tensor) -> Any:
        """Pooling keeps channels in place when the ids do not vary over the pooled (spatial) dims."""
        if not isinstance(x, torch.Tensor) or x.dim() != result.dim() or x.dim() < 3:
            return self._opaque(n, result, f"pooling {n.name} on an unexpected layout")
        spatial = _compact(x, keep=1).flatten(2)
        if not bool((spatial == spatial[..., :1]).all()):
            return self._opaque(n, result, f"pooling {n.name} mixes channels that vary across space")
        return _along(spatial[0, :, 0], 1, result.shape) if x.shape[0] == 1 else self._opaque(n, result, f"pooling {n.name}")

    def _elementwise(self, n: fx.Node, result: torch.Tensor) -> Any:
        operands = [self.ids.get(a) for a in n.args if isinstance(a, fx.Node)]
        operands = [o for o in operands if isinstance(o, torch.Tensor)]
        if not isinstance(result, torch.Tensor):
            return self._opaque(n, result, f"{_label(n)} ({n.name}) does not return a tensor")
        # Dims along which an id tensor is a broadcast view hold one value: tie on the
        # compact shape (C pairs for a residual add, not C x H x W).
        compact = [_compact(o) for o in operands]
        try:
            shape = torch.broadcast_shapes(*(c.shape for c in compact))
            full = [c.expand(shape) for c in compact]
            base = full[0]
            for other in full[1:]:
                self.atoms.tie(torch.stack([base.reshape(-1), other.reshape(-1)]))
                base = torch.where(base >= 0, base, other)
            return base.expand(result.shape)
        except RuntimeError:
            return self._opaque(n, result, f"{_label(n)} ({n.name}) broadcasts in a way not tracked")

    def _reduce(self, n: fx.Node, x: Any, result: Any) -> Any:
        """mean/sum over dims whose ids are constant keeps the atoms (global pooling as x.mean((2, 3)))."""
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if not isinstance(x, torch.Tensor) or not isinstance(result, torch.Tensor) or dims is None:
            return self._opaque(n, result, f"{_label(n)} ({n.name}) reduces over channels")
        dims = [dims] if isinstance(dims, int) else list(dims)
        keepdim = bool(n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False))
        y = x
        for d in sorted((d % x.dim() for d in dims), reverse=True):
            sl = y.narrow(d, 0, 1)
            if not bool((y == sl).all()):
                return self._opaque(n, result, f"{_label(n)} ({n.name}) reduces over channels")
            y = sl if keepdim else sl.squeeze(d)
        return y.expand(result.shape) if y.shape != result.shape else y

    def _move(self, n: fx.Node, result: Any) -> Any:
        """Replay a data-movement op on the id tensors, then add the ties it implies."""
        args = tuple(self._swap(a) for a in n.args)
        kwargs = {k: self._swap(v) for k, v in n.kwargs.items()}
        try:
            if n.op == "call_method":
                out = getattr(args[0], n.target)(*args[1:], **kwargs)
            elif n.op == "call_module":
                out = self.modules[n.target](*args, **kwargs)
            else:
                out = n.target(*args, **kwargs)
        except Exception as exc:  # an op whose args we cannot swap: refuse rather than guess
            return self._opaque(n, result, f"{_label(n)} ({n.name}) could not be followed ({type(exc).__name__})")
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        label = f"{_label(n)} ({n.name})"
        if n.op == "call_function" and n.target is operator.getitem and src is not None:
            self._check_slice(src, n.args[1], label)
        if n.target in _ATEN_SLICES and src is not None and isinstance(out, torch.Tensor):
            at, default = _ATEN_SLICES[n.target]
            dim = (args[at] if len(args) > at else kwargs.get("dim", default)) % src.dim()
            if (out.dim() < src.dim() or out.shape[dim] != src.shape[dim]) and _varies(src, dim):
                self.atoms.refuse(src, f"{label} takes a fixed range of a channel dimension")
            return out
        if isinstance(out, (tuple, list)) and src is not None and len(out) > 1:
            self._tie_pieces(n, src, out, label)
        elif isinstance(out, torch.Tensor) and src is not None and out.dim() > src.dim():
            self._tie_split_dims(src, out)
        return out

    def _swap(self, a: Any) -> Any:
        """An argument for the replay: a node becomes its id tensor (or its real value if it has none)."""
        if isinstance(a, fx.Node):
            v = self.ids.get(a)
            # Always contiguous: the model may call .contiguous() (a no-op on ids) before a view.
            if isinstance(v, torch.Tensor):
                return v.contiguous()
            if isinstance(v, (tuple, list)):
                return type(v)(t.contiguous() if isinstance(t, torch.Tensor) else t for t in v)
            real = self.env.get(a)
            if isinstance(real, torch.Tensor):  # a tensor without atoms (a constant): ids of -1
                return torch.full(real.shape, -1, dtype=torch.long)
            return real
        if isinstance(a, (tuple, list)):
            return type(a)(self._swap(x) for x in a)
        return a

    def _check_slice(self, src: torch.Tensor, index: Any, label: str) -> None:
        """Indexing with fixed bounds along a dim that carries several atoms cannot follow a pruned width."""
        index = list(index) if isinstance(index, tuple) else [index]
        if Ellipsis in index:
            at = index.index(Ellipsis)
            explicit = sum(1 for i in index if i is not None and i is not Ellipsis)
            index[at:at + 1] = [slice(None)] * (src.dim() - explicit)
        dim = 0
        for item in index:
            if item is None:
                continue
            if dim < src.dim() and _varies(src, dim) and item != slice(None):
                self.atoms.refuse(src, f"{label} takes a fixed range of a channel dimension")
                return
            dim += 1

    def _tie_pieces(self, n: fx.Node, src: torch.Tensor, pieces: Any, label: str) -> None:
        """chunk/split along a channel dim: equal pieces tie index j of every piece; unequal ones are fixed sizes."""
        tensors = [p for p in pieces if isinstance(p, torch.Tensor)]
        dims = [d for d in range(src.dim()) if tensors and tensors[0].shape[d] != src.shape[d]]
        if not dims:
            return
        d = dims[0]
        if not _varies(src, d):
            return
        sizes = {t.shape[d] for t in tensors}
        if len(sizes) != 1 or sum(t.shape[d] for t in tensors) != src.shape[d]:
            self.atoms.refuse(src, f"{label} splits a channel dimension into pieces of fixed, unequal sizes")
            return
        stacked = torch.stack([t.movedim(d, 0).reshape(t.shape[d], -1) for t in tensors])  # pieces x width x rest
        for other in stacked[1:]:
            self.atoms.tie(torch.stack([stacked[0].reshape(-1), other.reshape(-1)]))

    def _tie_split_dims(self, src: torch.Tensor, out: torch.Tensor) -> None:
        """A view that splits a channel dim into (outer, inner): atoms sharing an inner index are tied.

        That is what keeps a channel shuffle a shuffle after pruning: code computes the
        inner size from the tensor (channels // groups) and keeps the outer one (groups).
        """
        for d in range(out.dim() - 1):
            if out.shape[d] > 1 and out.shape[d + 1] > 1 and _varies(out, d) and _varies(out, d + 1):
                if out.shape[d] * out.shape[d + 1] in src.shape:
                    inner = out.movedim(d + 1, 0).movedim(d + 1, 1)  # inner x outer x rest
                    flat = inner.reshape(inner.shape[0], inner.shape[1], -1)
                    for k in range(1, flat.shape[1]):
                        self.atoms.tie(torch.stack([flat[:, 0].reshape(-1), flat[:, k].reshape(-1)]))


def _has_tensor(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    return isinstance(v, (tuple, list)) and any(_has_tensor(x) for x in v)


def _varies(t: torch.Tensor, dim: int) -> bool:
    if t.shape[dim] <= 1 or t.stride(dim) == 0:
        return False
    t = _compact(t, keep=dim)
    return not bool((t == t.narrow(dim, 0, 1)).all())


def _compact(t: torch.Tensor, keep: int | None = None) -> torch.Tensor:
    """`t` with every broadcast (stride-0) dim except `keep` cut to size 1: same ids, far fewer elements."""
    for d in range(t.dim()):
        if d != keep and t.shape[d] > 1 and t.stride(d) == 0:
            t = t.narrow(d, 0, 1)
    return t


def _along(values: torch.Tensor | list[int], dim: int, shape: torch.Size) -> torch.Tensor:
    """An id tensor of `shape` whose entries vary only along `dim`, as a cheap expanded view."""
    v = torch.as_tensor(values, dtype=torch.long)
    view = [1] * len(shape)
    view[dim] = v.numel()
    return v.view(view).expand(shape)


TRACERS = ("auto", "fx", "export")


def build_groups(model: nn.Module, input_shape: tuple[int, int, int], tracer: str = "auto") -> list[ChannelGroup]:
    """Dependency groups of `model` for one input of shape `input_shape` (C, H, W), in graph order.

    `tracer`: "fx" (torch.fx symbolic trace), "export" (torch.export for this input shape) or
    "auto" (fx, and torch.export where fx fails). Raises UserError if the model cannot be
    captured or fails on the input.
    """
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise UserError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    modes = {m: m.training for m in model.modules()}  # restored one by one: frozen BNs stay frozen
    model.eval()
    x = torch.zeros(1, *input_shape)
    try:
        gm = trace(model, x, tracer)
        tracker = _Tracker(gm, model)
        with torch.no_grad():
            tracker.run(x)
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{type(model).__name__} fails on a zero input of shape {tuple(input_shape)} "
                        f"({type(exc).__name__}: {first}); pass the (C, H, W) the model expects") from exc
    finally:
        for m, training in modes.items():
            m.training = training
    return _collect(tracker)


def trace(model: nn.Module, example: torch.Tensor, tracer: str = "auto") -> fx.GraphModule:
    """A graph of `model` in torch.fx form: fx's symbolic trace, or torch.export's graph for
    `example` where fx fails (tracer="auto"). UserError naming both failures otherwise."""
    if tracer not in TRACERS:
        raise UserError(f"tracer must be one of {', '.join(TRACERS)}, got {tracer!r}")
    fx_error = None
    if tracer in ("auto", "fx"):
        try:
            return fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
            fx_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if tracer == "fx":
                raise UserError(f"cannot trace {type(model).__name__} with torch.fx ({fx_error}); "
                                "channel groups need a traceable model") from exc
    try:
        gm = _exported(model, example)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        why = f"torch.fx: {fx_error}; torch.export: {first}" if fx_error else f"torch.export: {first}"
        raise UserError(f"cannot trace {type(model).__name__} ({why}); channel groups need a model "
                        "that torch.fx or torch.export can capture (no data-dependent control flow)") from exc
    if fx_error:
        warnings.warn(f"torch.fx cannot trace {type(model).__name__} ({fx_error}); channel groups come from "
                      f"torch.export's graph for input shape {tuple(example.shape[1:])}", stacklevel=3)
    return gm


def _exported(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """torch.export's graph of `model` with layer calls turned back into module calls."""
    with torch.no_grad():
        exported = torch.export.export(model, (example,), strict=False).module()
    graph = exported.graph
    modules = dict(model.named_modules())
    for node in list(graph.nodes):
        if node.op == "call_module" and not node.users:  # torch.export's input guards
            graph.erase_node(node)
        elif node.op == "call_function":
            owner = _layer_owner(node, modules)
            if owner is not None:
                with graph.inserting_before(node):
                    call = graph.call_module(owner, (node.args[0],))
                node.replace_all_uses_with(call)
                graph.erase_node(node)
    graph.eliminate_dead_code()  # the layers' weights, no longer read
    copy = fx.Graph()
    copy.output(copy.graph_copy(graph, {}))
    # Modules are the model's own; tensors come from the export (it adds constants it lifted).
    root = {n.target: modules[n.target] if n.op == "call_module" else _fetch(exported, n.target)
            for n in copy.nodes if n.op in ("call_module", "get_attr")}
    return fx.GraphModule(root, copy)


def _fetch(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _layer_owner(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The module an ATen conv2d/linear/batch_norm/layer_norm call belongs to, if it is exactly that module's
    forward (its own parameters, its settings); None leaves the call functional (and refused)."""
    def owner_of(arg: Any) -> str | None:
        return arg.target.rpartition(".")[0] if isinstance(arg, fx.Node) and arg.op == "get_attr" else None

    args = list(node.args)
    if node.target is aten.conv2d.default and len(args) >= 2:
        name = owner_of(args[1])
        mod = modules.get(name or "")
        want = [mod.stride, mod.padding, mod.dilation, mod.groups] if _plain(mod, nn.Conv2d) else None
        defaults = [(1, 1), (0, 0), (1, 1), 1]  # stride, padding, dilation, groups
        got = [args[i] if i < len(args) else defaults[i - 3] for i in range(3, 7)]
        if want and not isinstance(mod.padding, str) and mod.padding_mode == "zeros" and \
                [tuple(v) if isinstance(v, (list, tuple)) else v for v in got] == want and \
                (len(args) > 2 and owner_of(args[2]) == name or mod.bias is None):
            return name
    elif node.target is aten.linear.default and len(args) >= 2:
        name = owner_of(args[1])
        mod = modules.get(name or "")
        if _plain(mod, nn.Linear) and (len(args) > 2 and owner_of(args[2]) == name or mod.bias is None):
            return name
    elif node.target is aten.batch_norm.default and len(args) >= 8:
        name = owner_of(args[3])  # running_mean: present with or without affine weights
        mod = modules.get(name or "")
        if (_plain(mod, nn.BatchNorm1d) or _plain(mod, nn.BatchNorm2d)) and args[5] is False:
            return name
    elif node.target is aten.layer_norm.default and len(args) >= 3:
        name = owner_of(args[2])
        mod = modules.get(name or "")
        if _plain(mod, nn.LayerNorm) and tuple(args[1]) == tuple(mod.normalized_shape):
            return name
    return None


def _plain(mod: nn.Module | None, kind: type) -> bool:
    """`mod` is a `kind` whose forward is kind's own (a subclass that adds computation is not)."""
    return isinstance(mod, kind) and type(mod).forward is kind.forward


def _collect(t: _Tracker) -> list[ChannelGroup]:
    atoms = t.atoms
    n = len(atoms.parent)
    unit_of = [atoms.find(a) for a in range(n)]
    # Units that share a member belong to one group (scored and cut under one ratio).
    gparent = list(range(n))

    def gfind(u: int) -> int:
        while gparent[u] != u:
            gparent[u] = gparent[gparent[u]]
            u = gparent[u]
        return u

    # Only producers join units into a group: a layer reading two groups (after a concat)
    # keeps them apart, so each producer can get its own ratio and its own rounding.
    produced = {a for _, kind, _, ats in t.members if kind in ("out", "group_out") for a in ats}
    for _, kind, _, member_atoms in t.members:
        if kind not in ("out", "group_out") and any(a in produced for a in member_atoms):
            continue
        units = {unit_of[a] for a in member_atoms}
        first = next(iter(units), None)
        for u in units:
            ru, rf = gfind(u), gfind(first)
            if ru != rf:
                gparent[max(ru, rf)] = min(ru, rf)
    by_group: dict[int, list[int]] = defaultdict(list)
    for a in range(n):
        by_group[gfind(unit_of[a])].append(a)
    members_of: dict[int, list[tuple[str, str, list[int], list[int]]]] = defaultdict(list)
    for name, kind, pos, ats in t.members:  # a consumer of several groups is split into one member per group
        split: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for p, a in zip(pos, ats):
            split[gfind(unit_of[a])][0].append(p)
            split[gfind(unit_of[a])][1].append(a)
        for root, (ps, as_) in split.items():
            members_of[root].append((name, kind, ps, as_))

    groups = []
    for root in sorted(by_group):  # atoms are numbered in graph order
        group_atoms = by_group[root]
        local = {a: i for i, a in enumerate(group_atoms)}
        units: dict[int, list[int]] = defaultdict(list)
        for a in group_atoms:
            units[unit_of[a]].append(local[a])
        reasons = list(dict.fromkeys(r for a in group_atoms for r in atoms.reasons.get(a, ())))
        members = tuple(Member(name, kind, tuple(pos), tuple(local[a] for a in ats))
                        for name, kind, pos, ats in members_of[root])
        if not members and not reasons:
            continue  # atoms nothing reads or writes (e.g. a constant's): nothing to prune
        if members and all(m.kind == "param" for m in members) and not reasons:
            reasons = [f"tensor {members[0].name} is not tied to any layer's channels"]
        if not reasons and len(units) == 1 and len(group_atoms) > 1:
            reasons = ["all channels are tied into one unit (the chunks, shuffles or grouped convs they pass "
                       "through leave no smaller set that can go)"]
        groups.append(ChannelGroup(
            channels=len(group_atoms), units=tuple(tuple(u) for u in units.values()), members=members,
            prunable=not reasons, reason="; ".join(reasons),
        ))
    return groups


def describe_groups(groups: list[ChannelGroup]) -> list[dict]:
    """JSON-ready rows, one per group (members with their first position as `offset`)."""
    def members(kind: str) -> list[dict]:
        return [{"name": n, "offset": o} for n, o in kind]

    return [
        {
            "id": i, "channels": g.width, "units": len(g.units), "unit_size": g.unit_size,
            "prunable": g.prunable, "reason": g.reason, "producers": list(g.producers),
            "consumers": members(g.consumers), "norms": members(g.norms), "depthwise": members(g.depthwise),
        }
        for i, g in enumerate(groups)
    ]
