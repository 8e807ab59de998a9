"""Coupled-channel dependency groups: channels that must be pruned together.

A `ChannelGroup` is the unit a structured pruner scores and cuts: removing channel k of
the group removes output channel k of every producer (conv/linear), the matching input
channel of every consumer (at its offset, which is non-zero after a concat), channel k
of every BatchNorm/LayerNorm and every depthwise conv that carries it.

How it is built
---------------
`build_groups` traces the model with torch.fx, runs `ShapeProp` on a zero input and
walks the graph once. Every tensor carries a list of segments `(space, start, length)`:
which "channel space" each stretch of its channel dimension (dim 1) comes from. A conv
or linear creates a new space for its output; BN, activations, pooling and a depthwise
conv pass segments through; `torch.cat` concatenates the lists; an elementwise op with
two channel-carrying operands (residual add, SE multiply) unions the spaces segment by
segment (union-find), because channel k of both operands must go together.

Refusal over guessing: a grouped conv (1 < groups < channels), a channel shuffle
(unflatten/view/transpose/flatten that mixes channels), a chunk/split that cuts a space,
a flatten of a spatial map into features, and any op this module does not know make the
spaces they touch not prunable, with the reason and the node name. The network input
and output are never prunable.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgecompress.errors import UserError

SHUFFLE_REASON = "channel shuffle permutes channels across groups; pruning per group not supported yet"
OUTPUT_REASON = "network output"
INPUT_REASON = "network input"

# Leaf modules and ops that keep channel k in place (elementwise on one tensor, pooling).
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.GELU, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_PASS_FUNCS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.relu6, nn.functional.hardswish,
    nn.functional.hardsigmoid, nn.functional.silu, nn.functional.gelu, nn.functional.dropout,
    nn.functional.adaptive_avg_pool2d, nn.functional.max_pool2d, nn.functional.avg_pool2d,
}
# torchvision.ops.stochastic_depth is fx-wrapped: it zeroes whole samples, never channels.
_PASS_NAMES = {"stochastic_depth"}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, torch.add, torch.mul, torch.sub}
_ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_", "sub"}
_RESHAPES_F = {torch.flatten, torch.reshape, torch.transpose, torch.permute}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "transpose", "permute"}
_SPLITS_F = {torch.chunk, torch.split}
_SPLIT_METHODS = {"chunk", "split"}


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together.

    `producers`: modules whose output channels are the group (offset 0, all of them).
    `consumers`, `norms`, `depthwise`: (module name, channel offset) pairs; the offset is
    where the group's channels start in that module's input (consumers) or channels
    (norms, depthwise convs), non-zero after a concat. `channels` is the group's width
    (for a not-prunable group merged from spaces of different widths, the widest).
    """

    producers: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]
    norms: tuple[tuple[str, int], ...]
    depthwise: tuple[tuple[str, int], ...]
    channels: int
    prunable: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if not self.prunable and not self.reason:
            raise ValueError("reason must say why a group is not prunable")


@dataclass
class _Space:
    size: int
    producers: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    norms: list[tuple[str, int]] = field(default_factory=list)
    depthwise: list[tuple[str, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    order: int = 0  # creation order, so groups come out in graph order


Segments = list[tuple[int, int, int]]  # (space id, start in space, length)


class _Builder:
    def __init__(self) -> None:
        self.spaces: list[_Space] = []
        self.parent: list[int] = []

    def new_space(self, size: int, producer: str | None = None, reason: str | None = None) -> int:
        sid = len(self.spaces)
        self.spaces.append(_Space(size, [producer] if producer else [], order=sid))
        self.parent.append(sid)
        if reason:
            self.spaces[sid].reasons.append(reason)
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def space(self, sid: int) -> _Space:
        return self.spaces[self.find(sid)]

    def union(self, a: int, b: int, note_size: bool = True) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        keep, drop = (ra, rb) if self.spaces[ra].order <= self.spaces[rb].order else (rb, ra)
        k, d = self.spaces[keep], self.spaces[drop]
        if k.size != d.size and note_size:
            k.reasons.append(f"merged spaces of {k.size} and {d.size} channels")
            k.size = max(k.size, d.size)
        for name in ("producers", "consumers", "norms", "depthwise", "reasons"):
            getattr(k, name).extend(getattr(d, name))
        self.parent[drop] = keep
        return keep

    def refuse(self, segs: Segments, reason: str) -> None:
        for sid, _, _ in segs:
            self.space(sid).reasons.append(reason)

    def record(self, segs: Segments, kind: str, name: str) -> None:
        """Add `name` as a consumer/norm/depthwise member of every segment, at its offset."""
        offset = 0
        for sid, start, length in segs:
            space = self.space(sid)
            if start != 0 or length != space.size:
                space.reasons.append(f"{name} sees only channels {start}..{start + length} of this group")
            getattr(space, kind).append((name, offset))
            offset += length

    def opaque(self, inputs: list[Segments], size: int, reason: str) -> Segments:
        """A fresh not-prunable space for an op's output, merged with every input space."""
        sid = self.new_space(size, reason=reason)
        for segs in inputs:
            self.refuse(segs, reason)
            for s, _, _ in segs:
                sid = self.union(sid, s, note_size=False)  # the reason above already refuses it
        return [(sid, 0, size)]


def _meta(node: Any) -> Any:
    return node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None


def _channels(shape: torch.Size | tuple[int, ...]) -> int | None:
    return int(shape[1]) if len(shape) >= 2 else None


def _slice(segs: Segments, begin: int, end: int) -> Segments:
    out: Segments = []
    pos = 0
    for sid, start, length in segs:
        lo, hi = max(begin, pos), min(end, pos + length)
        if lo < hi:
            out.append((sid, start + lo - pos, hi - lo))
        pos += length
    return out


def _dim(node: fx.Node, pos: int, default: int) -> int:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get("dim", default)


def _is_channel_dim(dim: Any, ndim: int) -> bool:
    return isinstance(dim, int) and ndim >= 2 and dim % ndim == 1


def build_groups(model: nn.Module, input_shape: tuple[int, int, int]) -> list[ChannelGroup]:
    """Dependency groups of `model` for one input of shape `input_shape` (C, H, W), in graph order.

    Raises UserError if the model does not trace with torch.fx.
    """
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise UserError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot trace {type(model).__name__} with torch.fx ({first}); "
                        "channel groups need a traceable model (no data-dependent control flow)") from exc
    modes = {m: m.training for m in gm.modules()}  # restored one by one: frozen BNs stay frozen
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise UserError(f"{type(model).__name__} fails on a zero input of shape {tuple(input_shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "pass the (C, H, W) the model expects") from exc
    finally:
        for m, training in modes.items():
            m.training = training
    modules = dict(gm.named_modules())
    b = _Builder()
    env: dict[fx.Node, Any] = {}

    def segs_of(arg: Any) -> Segments | None:
        return env.get(arg) if isinstance(arg, fx.Node) else None

    for node in gm.graph.nodes:
        meta = _meta(node)
        out_shape = tuple(meta.shape) if hasattr(meta, "shape") else None
        out_c = _channels(out_shape) if out_shape else None
        inputs = [s for s in (segs_of(a) for a in node.all_input_nodes) if s]
        label = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))

        if node.op == "placeholder":
            env[node] = [(b.new_space(out_c, reason=INPUT_REASON), 0, out_c)] if out_c else None
            continue
        if node.op == "output":
            b.refuse([s for segs in inputs for s in segs], OUTPUT_REASON)
            continue
        if node.op == "get_attr" and out_shape and len(out_shape) >= 1 and meta.shape.numel() > 1:
            # A parameter used in forward (layer scale, extra bias) may be per-channel; its
            # slicing is not tracked, so whatever it meets is refused.
            size = out_shape[1] if len(out_shape) >= 2 else out_shape[0]
            env[node] = b.opaque([], size, f"tensor attribute {node.target} used in forward is not tracked")
            continue
        if node.op == "get_attr" or not inputs:
            env[node] = None
            continue
        x = segs_of(node.args[0]) if node.args else None

        in_meta = _meta(node.args[0]) if node.args else None
        in_ndim = len(in_meta.shape) if hasattr(in_meta, "shape") else None

        if node.op == "call_module":
            mod = modules[node.target]
            name = node.target
            # Channels are dim 1 of a 4-D map or of a 2-D feature matrix; a Linear or norm on
            # (N, L, D) tokens works on the last dim, which this walk does not track: refused.
            if x is None or not _known_layout(mod, in_ndim):
                env[node] = _unknown(b, inputs, out_c, f"unsupported module {type(mod).__name__} ({name})")
            elif isinstance(mod, nn.Conv2d):
                cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
                if g == 1:
                    b.record(x, "consumers", name)
                    env[node] = [(b.new_space(cout, name), 0, cout)]
                elif g == cin == cout:  # depthwise: channel k in is channel k out
                    b.record(x, "depthwise", name)
                    env[node] = x
                else:
                    why = f"grouped conv {name} (groups={g}) ties channels to groups; pruning per group not supported"
                    b.record(x, "consumers", name)
                    b.refuse(x, why)
                    env[node] = [(b.new_space(cout, name, reason=why), 0, cout)]
            elif isinstance(mod, nn.Linear):
                b.record(x, "consumers", name)
                env[node] = [(b.new_space(mod.out_features, name), 0, mod.out_features)]
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                b.record(x, "norms", name)
                env[node] = x
            elif isinstance(mod, _PASS_MODULES):
                env[node] = x
            elif isinstance(mod, nn.Flatten):
                env[node] = _reshape(b, node, x, out_shape, f"nn.Flatten {name}")
            else:
                env[node] = _unknown(b, inputs, out_c, f"unsupported module {type(mod).__name__} ({name})")
            continue

        fn = node.target
        is_method = node.op == "call_method"
        if (is_method and fn in _PASS_METHODS) or (not is_method and (fn in _PASS_FUNCS or label in _PASS_NAMES)):
            env[node] = x
        elif (is_method and fn in _ELEMENTWISE_METHODS) or (not is_method and fn in _ELEMENTWISE):
            env[node] = _elementwise(b, node, inputs, out_c, label)
        elif (is_method and fn in _RESHAPE_METHODS) or (not is_method and fn in _RESHAPES_F):
            env[node] = _reshape(b, node, x, out_shape, f"{label} ({node.name})") if x else None
        elif (is_method and fn == "mean") or (not is_method and fn is torch.mean):
            env[node] = _mean(b, node, x, out_c, label)
        elif not is_method and fn is torch.cat:
            env[node] = _cat(b, node, env, out_shape, out_c)
        elif (is_method and fn in _SPLIT_METHODS) or (not is_method and fn in _SPLITS_F):
            env[node] = _split(b, node, x, label)
        elif not is_method and fn is operator.getitem and isinstance(env.get(node.args[0]), tuple):
            env[node] = env[node.args[0]][node.args[1]]
        elif out_shape is None and not isinstance(meta, (tuple, list)):
            env[node] = None  # a non-tensor result (size(), dim()): carries no channels
        else:
            env[node] = _unknown(b, inputs, out_c, f"unsupported op {label} ({node.name})")

    return _collect(b)


def _known_layout(mod: nn.Module, in_ndim: int | None) -> bool:
    """True when `mod`'s channel dim is dim 1 of its input, the layout the walk tracks."""
    if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d)):
        return in_ndim == 4
    if isinstance(mod, (nn.Linear, nn.BatchNorm1d, nn.LayerNorm)):
        return in_ndim == 2
    return in_ndim is not None


def _unknown(b: _Builder, inputs: list[Segments], out_c: int | None, reason: str) -> Segments | None:
    flat = [s for segs in inputs for s in segs]
    if out_c is None:
        b.refuse(flat, reason)
        return None
    return b.opaque(inputs, out_c, reason)


def _mean(b: _Builder, node: fx.Node, x: Segments | None, out_c: int | None, label: str) -> Segments | None:
    """A mean over spatial dims (global pooling written as x.mean((2, 3))) keeps channels."""
    in_meta = _meta(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    if x is None or in_meta is None or dims is None:
        return _unknown(b, [x] if x else [], out_c, f"unsupported op {label} ({node.name})")
    ndim = len(in_meta.shape)
    if any(_is_channel_dim(d, ndim) or d % ndim == 0 for d in dims):
        return _unknown(b, [x], out_c, f"{label} ({node.name}) reduces over channels or batch")
    return x


def _elementwise(b: _Builder, node: fx.Node, inputs: list[Segments], out_c: int | None, label: str) -> Segments | None:
    tensors = [s for s in inputs if s]
    if len(tensors) == 1:  # tensor op scalar (or op a channel-less tensor): channels stay in place
        return tensors[0]
    first = tensors[0]
    for other in tensors[1:]:
        if [seg[2] for seg in other] == [seg[2] for seg in first] and all(
            s1 == s2 == 0 for (_, s1, _), (_, s2, _) in zip(first, other)
        ):
            for (a, _, _), (c, _, _) in zip(first, other):
                b.union(a, c)
        else:
            return _unknown(b, tensors, out_c, f"{label} ({node.name}) adds tensors whose channel layouts differ")
    return first


def _reshape(b: _Builder, node: fx.Node, x: Segments, out_shape: tuple | None, what: str) -> Segments | None:
    in_meta = _meta(node.args[0])
    in_shape = tuple(in_meta.shape) if in_meta is not None else None
    if out_shape is None or in_shape is None:
        return _unknown(b, [x], None, f"{what} has no shape")
    if in_shape == out_shape:
        return x
    # (N, C, 1, 1) -> (N, C): flatten after global pooling keeps channels 1:1.
    if len(in_shape) == 4 and len(out_shape) == 2 and in_shape[2] * in_shape[3] == 1 and out_shape[1] == in_shape[1]:
        return x
    if len(in_shape) == 4 and len(out_shape) == 2 and out_shape[1] == in_shape[1] * in_shape[2] * in_shape[3]:
        why = f"{what} flattens a {in_shape[2]}x{in_shape[3]} map into features (pruning would need spatial strides)"
        return b.opaque([x], out_shape[1], why)
    return b.opaque([x], _channels(out_shape) or 1, f"{SHUFFLE_REASON} ({what})")


def _cat(b: _Builder, node: fx.Node, env: dict, out_shape: tuple | None, out_c: int | None) -> Segments | None:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    parts = [env.get(t) if isinstance(t, fx.Node) else None for t in tensors]
    dim = _dim(node, 1, 0)
    segs = [p for p in parts if p is not None]
    if out_shape is None or len(segs) != len(parts):
        return _unknown(b, segs, out_c, f"cat ({node.name}) of tensors without tracked channels")
    if _is_channel_dim(dim, len(out_shape)):
        return [s for p in segs for s in p]
    return _elementwise(b, node, segs, out_c, "cat on a non-channel dim")


def _split(b: _Builder, node: fx.Node, x: Segments | None, label: str) -> tuple | None:
    meta = node.meta.get("tensor_meta")
    if x is None or not isinstance(meta, (tuple, list)):
        return None
    ndim = len(meta[0].shape)
    dim = _dim(node, 2, 0)
    if not _is_channel_dim(dim, ndim):
        return tuple(x for _ in meta)
    pieces, pos = [], 0
    for m in meta:
        width = int(m.shape[1])
        piece = _slice(x, pos, pos + width)
        for sid, start, length in piece:
            if start != 0 or length != b.space(sid).size:
                b.space(sid).reasons.append(f"{label} ({node.name}) splits this group's channels")
        pieces.append(piece)
        pos += width
    return tuple(pieces)


def _collect(b: _Builder) -> list[ChannelGroup]:
    roots = sorted({b.find(i) for i in range(len(b.spaces))}, key=lambda r: b.spaces[r].order)
    groups = []
    for r in roots:
        s = b.spaces[r]
        reasons = list(dict.fromkeys(s.reasons))  # unique, first-seen order
        groups.append(ChannelGroup(
            producers=tuple(s.producers), consumers=tuple(s.consumers), norms=tuple(s.norms),
            depthwise=tuple(s.depthwise), channels=s.size, prunable=not reasons, reason="; ".join(reasons),
        ))
    return groups


def describe_groups(groups: list[ChannelGroup]) -> list[dict]:
    """JSON-ready rows, one per group (offsets as {"name", "offset"} objects)."""
    def members(pairs: tuple[tuple[str, int], ...]) -> list[dict]:
        return [{"name": n, "offset": o} for n, o in pairs]

    return [
        {
            "id": i, "channels": g.channels, "prunable": g.prunable, "reason": g.reason,
            "producers": list(g.producers), "consumers": members(g.consumers), "norms": members(g.norms),
            "depthwise": members(g.depthwise),
        }
        for i, g in enumerate(groups)
    ]
