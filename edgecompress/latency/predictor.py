"""Predict a model's latency from a per-op table, corrected on measured whole models.

1. `decompose(model, input_shape, runtime, threads)` traces the model with torch.fx,
   propagates shapes and groups its nodes into the kernels a runtime executes, each a
   `BlockSig` of the table: conv + BatchNorm + activation as one conv/dwconv/gconv
   kernel (the exporters fold BN into the conv; the activation fuses, or is timed with
   the conv in the table when a runtime keeps it separate), Linear (+ activation), max /
   average / global-average pooling, add and mul (+ activation), concat, split/chunk,
   channel shuffle (reshape-transpose-reshape: the transpose is the kernel) and
   standalone activations or BatchNorms. Reshapes, flatten, dropout, identity and
   getitem cost nothing. Any other tensor op is listed in `Decomposition.unknown` and
   charged as a standalone activation of its output's size.
2. The table's latencies of those kernels are summed per kind group (`GROUPS`).
3. A per-device correction maps the sums to the measured p50 of whole models (fitted by
   non-negative least squares on relative error, the quantity the ±10% fidelity figure
   is about): `linear` (measured ~= alpha * sum + beta), `bytes` (+ gamma * MB the
   kernels move) or `per_kind` (a scale per group conv / dwconv / other, pulled weakly
   towards 1, + offsets per conv kernel, per MB of conv activations and per MB of
   weights, + beta); `auto` picks the one with the lowest leave-one-out error on the
   fitting models. The correction absorbs what single-block timings cannot see: ONNX
   Runtime fuses a residual add into the conv before it and keeps tensors in its
   blocked layout between convs, while a lone conv block pays the layout conversions in
   and out (measured here: 3.5-7 µs per block, growing with the tensor size); a block
   timed alone runs with its weights and input in cache, a whole model streams them;
   and one invocation's overhead (beta). On this host (ONNX Runtime, 1 thread, 32 px
   zoo models) the fit gave -3.6 µs per conv kernel, +47 µs per MB of conv activations
   and +11 µs per MB of weights: in a model, the layout conversions go and the caches
   are colder.

`LatencyPredictor.fit(models, measurements)` then `predict(model, input_shape) -> ms`;
`save`/`load` keep the table, the correction and the device fingerprint in one JSON.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.fsutil import atomic_write_json
from edgecompress.latency.lut import BlockSig, LatencyLUT, nnls

SCHEMA = "edgecompress.latency-predictor/1"
#: correction modes, simplest first (see fit_correction)
MODES = ("linear", "bytes", "per_kind")

#: correction groups: dense (and grouped) convs, depthwise convs, and everything else
#: (pooling, linear, elementwise, concat/split/shuffle), whose share of a CNN's time is
#: too small for a scale of its own to be fitted reliably
GROUP_OF = {
    "conv": "conv", "gconv": "conv", "dwconv": "dwconv",
    "linear": "other", "maxpool": "other", "avgpool": "other", "gap": "other", "add": "other", "mul": "other",
    "act": "other", "concat": "other", "split": "other", "shuffle": "other",
}  # fmt: skip
GROUPS = ("conv", "dwconv", "other")
#: weight of the pull of each per-kind scale towards 1 (relative-error units)
PRIOR_WEIGHT = 0.1


@dataclass(frozen=True)
class Kernel:
    """One kernel the runtime executes: its table signature and the fx nodes it covers."""

    sig: BlockSig
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Decomposition:
    """A model as kernels; `unknown` names nodes that no kernel kind describes."""

    kernels: tuple[Kernel, ...]
    unknown: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kernels:
            out[k.sig.op] = out.get(k.sig.op, 0) + 1
        return out


# -- decomposition ----------------------------------------------------------------------

_ACT_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.Hardswish, "hardswish"), (nn.SiLU, "silu"),
    (nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "hardsigmoid"), (nn.GELU, "gelu"), (nn.Tanh, "tanh"),
    (nn.LeakyReLU, "leaky_relu"),
)  # fmt: skip
_ACT_FUNCS = {
    torch.relu: "relu", torch.relu_: "relu", nn.functional.relu: "relu", nn.functional.relu6: "relu6",
    nn.functional.hardswish: "hardswish", nn.functional.silu: "silu", torch.sigmoid: "sigmoid",
    nn.functional.sigmoid: "sigmoid", nn.functional.hardsigmoid: "hardsigmoid", nn.functional.gelu: "gelu",
    torch.tanh: "tanh", nn.functional.leaky_relu: "leaky_relu",
}  # fmt: skip
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh"}
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_CAT = {torch.cat, torch.concat}
_SPLIT_FUNCS = {torch.chunk, torch.split, torch.tensor_split}
_FREE_METHODS = {"view", "reshape", "flatten", "unflatten", "contiguous", "size", "squeeze", "unsqueeze", "dim",
                 "view_as", "reshape_as", "clone", "detach", "float", "to", "type_as", "expand", "expand_as"}
_FREE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem, getattr,
               nn.functional.dropout, torch.clone}
_FREE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Unflatten)
#: functions outside torch that are the identity in eval mode (matched by name: torchvision
#: is not imported here)
_FREE_FUNC_NAMES = {"stochastic_depth"}


def _act_of_module(m: nn.Module) -> str | None:
    if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6):
        return "relu6" if (m.min_val, m.max_val) == (0.0, 6.0) else None
    for cls, name in _ACT_MODULES:
        if isinstance(m, cls):
            return name
    return None


def _meta_shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape)


def _map_dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, h, w) of an NCHW (or NC) tensor shape."""
    if len(shape) >= 4:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3:  # (N, L, C) sequences: C channels over L positions
        return shape[2], shape[1], 1
    if len(shape) == 2:
        return shape[1], 1, 1
    return max(1, math.prod(shape)), 1, 1


class _Decomposer:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], runtime: str, threads: int) -> None:
        from torch.fx import symbolic_trace
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            self.gm = symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
            raise UserError(f"cannot decompose {type(model).__name__} into kernels: torch.fx could not trace it "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "use measured latency (--latency measured) for this model") from None
        was_training = model.training
        self.gm.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(torch.zeros(1, *input_shape))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"forward pass of {type(model).__name__} on input shape {list(input_shape)} failed "
                            f"({type(exc).__name__}: {exc}); pass the C,H,W the model expects") from None
        finally:
            model.train(was_training)
        self.modules = dict(self.gm.named_modules())
        self.runtime, self.threads = runtime, threads
        self.used: set[Any] = set()

    def sig(self, op: str, cin: int, cout: int, **kw: Any) -> BlockSig:
        return BlockSig(op, cin, cout, runtime=self.runtime, threads=self.threads, **kw)

    def _single_user(self, node: Any) -> Any | None:
        users = list(node.users)
        return users[0] if len(users) == 1 and users[0] not in self.used else None

    def _act(self, node: Any) -> str | None:
        if node.op == "call_module":
            return _act_of_module(self.modules[node.target])
        if node.op == "call_function":
            if node.target is nn.functional.hardtanh:
                lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
                hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
                return "relu6" if (lo, hi) == (0.0, 6.0) else None
            return _ACT_FUNCS.get(node.target)
        if node.op == "call_method":
            if node.target in ("clamp", "clamp_", "clip"):
                lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
                hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
                return "relu6" if (lo, hi) == (0, 6) or (lo, hi) == (0.0, 6.0) else ("relu" if (lo, hi) in ((0, None), (0.0, None)) else None)
            return _ACT_METHODS.get(node.target)
        return None

    def _fuse(self, node: Any, allow_bn: bool) -> tuple[str, list[Any]]:
        """Follow a single-user chain of [BatchNorm] [activation]; returns (act, nodes taken)."""
        taken: list[Any] = []
        cur = node
        nxt = self._single_user(cur)
        if allow_bn and nxt is not None and nxt.op == "call_module" and isinstance(
                self.modules[nxt.target], (nn.BatchNorm2d, nn.BatchNorm1d)):
            taken.append(nxt)
            cur = nxt
            nxt = self._single_user(cur)
        act = "none"
        if nxt is not None and self._act(nxt) is not None:
            act = self._act(nxt)
            taken.append(nxt)
        return act, taken

    def run(self) -> Decomposition:
        kernels: list[Kernel] = []
        unknown: list[str] = []
        for node in self.gm.graph.nodes:
            if node in self.used or node.op in ("placeholder", "output", "get_attr"):
                continue
            self.used.add(node)
            made = self._kernel(node)
            if made is None:
                continue
            if made == "unknown":
                shape = _meta_shape(node)
                if shape is None:
                    continue  # a non-tensor result (shape arithmetic): no kernel
                unknown.append(node.name)
                c, h, w = _map_dims(shape)
                made = (self.sig("act", c, c, h=h, w=w, act="affine"), [])
            sig, extra = made
            self.used.update(extra)
            kernels.append(Kernel(sig, (node.name, *(n.name for n in extra))))
        return Decomposition(tuple(kernels), tuple(unknown))

    def _in_shape(self, node: Any, i: int = 0) -> tuple[int, ...]:
        arg = node.args[i] if i < len(node.args) else None
        shape = _meta_shape(arg) if arg is not None and hasattr(arg, "meta") else None
        if shape is None:
            raise UserError(f"cannot tell the input shape of {node.name} ({node.target}) while decomposing")
        return shape

    def _kernel(self, node: Any):
        """(sig, extra fused nodes), None for a free node, or "unknown"."""
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d):
                return self._conv(node, m)
            if isinstance(m, nn.Linear):
                act, extra = self._fuse(node, allow_bn=True)
                return self.sig("linear", m.in_features, m.out_features, act=act), extra
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                c, h, w = _map_dims(self._in_shape(node))
                k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
                s = m.stride if isinstance(m.stride, int) else (m.stride[0] if m.stride else k)
                op = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
                return self.sig(op, c, c, k=k, stride=s or k, h=h, w=w), []
            if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                c, h, w = _map_dims(self._in_shape(node))
                return self.sig("gap", c, c, h=h, w=w), []
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c, h, w = _map_dims(self._in_shape(node))
                return self.sig("act", c, c, h=h, w=w, act="affine"), []
            act = _act_of_module(m)
            if act is not None:
                c, h, w = _map_dims(self._in_shape(node))
                return self.sig("act", c, c, h=h, w=w, act=act), []
            if isinstance(m, _FREE_MODULES):
                return None
            return "unknown"
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        return None

    def _conv(self, node: Any, m: nn.Conv2d):
        c, h, w = _map_dims(self._in_shape(node))
        k = m.kernel_size[0]
        s = m.stride[0]
        act, extra = self._fuse(node, allow_bn=True)
        if m.groups == 1:
            op = "conv"
        elif m.groups == m.in_channels == m.out_channels:
            op = "dwconv"
        else:
            op = "gconv"
        return self.sig(op, m.in_channels, m.out_channels, k=k, stride=s, groups=m.groups, h=h, w=w, act=act), extra

    def _tensor_args(self, node: Any) -> list[Any]:
        return [a for a in node.args if hasattr(a, "meta") and _meta_shape(a) is not None]

    def _binary(self, node: Any, op: str):
        tensors = self._tensor_args(node)
        out = _meta_shape(node)
        if out is None:
            return None  # arithmetic on sizes
        c, h, w = _map_dims(out)
        if len(tensors) < 2:
            return self.sig("act", c, c, h=h, w=w, act="affine"), []
        act, extra = self._fuse(node, allow_bn=False)
        return self.sig(op, c, c, h=h, w=w, act=act), extra

    def _function(self, node: Any):
        target = node.target
        if target in _ADD:
            return self._binary(node, "add")
        if target in _MUL:
            return self._binary(node, "mul")
        if target in _CAT:
            parts = node.args[0] if node.args else node.kwargs.get("tensors", [])
            shapes = [_meta_shape(p) for p in parts]
            if not shapes or any(s is None for s in shapes):
                return "unknown"
            c0, h, w = _map_dims(shapes[0])
            total = sum(_map_dims(s)[0] for s in shapes)
            if len(shapes) < 2:
                return None
            return self.sig("concat", c0, total, groups=len(shapes), h=h, w=w), []
        if target in _SPLIT_FUNCS:
            return self._split(node)
        if target in _ACT_FUNCS or target is nn.functional.hardtanh:
            act = self._act(node)
            if act is None:
                return "unknown"
            c, h, w = _map_dims(self._in_shape(node))
            return self.sig("act", c, c, h=h, w=w, act=act), []
        if target in (nn.functional.adaptive_avg_pool2d, nn.functional.adaptive_max_pool2d):
            c, h, w = _map_dims(self._in_shape(node))
            return self.sig("gap", c, c, h=h, w=w), []
        if target in (nn.functional.max_pool2d, nn.functional.avg_pool2d):
            c, h, w = _map_dims(self._in_shape(node))
            k = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
            s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or k
            k = k if isinstance(k, int) else k[0]
            s = s if isinstance(s, int) else s[0]
            op = "maxpool" if target is nn.functional.max_pool2d else "avgpool"
            return self.sig(op, c, c, k=k, stride=s, h=h, w=w), []
        if target in (torch.transpose, torch.permute):
            return self._transpose(node)
        if target in _FREE_FUNCS or getattr(target, "__name__", "") in _FREE_FUNC_NAMES or _meta_shape(node) is None:
            return None
        return "unknown"

    def _method(self, node: Any):
        name = node.target
        if name in ("add", "add_"):
            return self._binary(node, "add")
        if name in ("mul", "mul_"):
            return self._binary(node, "mul")
        if name in ("chunk", "split", "tensor_split"):
            return self._split(node)
        if name in ("transpose", "permute"):
            return self._transpose(node)
        if name == "mean":
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dims is not None and sorted(int(d) % 4 for d in (dims if isinstance(dims, (list, tuple)) else [dims])) == [2, 3]:
                c, h, w = _map_dims(self._in_shape(node))
                return self.sig("gap", c, c, h=h, w=w), []
        act = self._act(node)
        if act is not None:
            c, h, w = _map_dims(self._in_shape(node))
            return self.sig("act", c, c, h=h, w=w, act=act), []
        if name in _FREE_METHODS or _meta_shape(node) is None:
            return None
        return "unknown"

    def _split(self, node: Any):
        shape = self._in_shape(node)
        c, h, w = _map_dims(shape)
        parts = node.meta.get("tensor_meta")
        n = len(parts) if isinstance(parts, (list, tuple)) else 2
        if n < 2:
            return None
        if c % n:
            return "unknown"
        return self.sig("split", c, c, groups=n, h=h, w=w), []

    def _transpose(self, node: Any):
        shape = self._in_shape(node)
        if len(shape) == 5:  # (N, g, C/g, H, W): the transpose of a channel shuffle
            c = shape[1] * shape[2]
            return self.sig("shuffle", c, c, groups=shape[1], h=shape[3], w=shape[4]), []
        c, h, w = _map_dims(shape)
        return self.sig("act", c, c, h=h, w=w, act="affine"), []


def decompose(model: nn.Module, input_shape: Sequence[int], runtime: str = "onnxruntime", threads: int = 1
              ) -> Decomposition:
    """The kernels `model` runs on a (1, *input_shape) input (see the module docstring)."""
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise UserError(f"input shape {list(input_shape)} must be positive C,H,W without the batch, e.g. 3,32,32")
    decomposition = _Decomposer(model, shape, runtime, threads).run()
    return Decomposition(decomposition.kernels, decomposition.unknown, shape)


# -- prediction -------------------------------------------------------------------------


#: model features besides the group sums (see group_sums)
FEATURES = ("kernels", "mb", "conv_kernels", "conv_act_mb", "weight_mb")
#: the offsets each correction mode fits (every mode also fits an intercept)
MODE_OFFSETS = {"linear": (), "bytes": ("mb",), "per_kind": ("conv_kernels", "conv_act_mb", "weight_mb")}
_CONVS = ("conv", "dwconv", "gconv")


def group_sums(lut: LatencyLUT, decomposition: Decomposition) -> dict[str, float]:
    """Table latency (ms) summed per correction group and in "total", plus the features
    the corrections use: "kernels" (count), "mb" (MB all kernels read and write, weights
    included), "conv_kernels" (count of conv/dwconv/gconv kernels), "conv_act_mb" (MB of
    activations entering and leaving those) and "weight_mb" (MB of conv and linear weights)."""
    sums = dict.fromkeys((*GROUPS, *FEATURES), 0.0)
    for k in decomposition.kernels:
        sig = k.sig
        sums[GROUP_OF[sig.op]] += lut.lookup(sig)
        sums["kernels"] += 1
        sums["mb"] += sig.work()[1] / 1e6
        if sig.op in _CONVS:
            ho, wo = sig.out_hw()
            sums["conv_kernels"] += 1
            sums["conv_act_mb"] += 4 * (sig.cin * sig.h * sig.w + sig.cout * ho * wo) / 1e6
            sums["weight_mb"] += 4 * sig.cout * (sig.cin // sig.groups) * sig.k * sig.k / 1e6
        elif sig.op == "linear":
            sums["weight_mb"] += 4 * sig.cin * sig.cout / 1e6
    sums["total"] = float(sum(sums[g] for g in GROUPS))
    return sums


@dataclass
class Correction:
    """measured ms ~= sum_g scales[g] * table_ms[g] + sum_f offsets[f] * feature[f] + intercept_ms.

    Offsets are in ms per unit of their feature (per kernel, per MB). `cv_mape` holds the
    leave-one-out MAPE (%) of each candidate mode when the mode was chosen by "auto".
    """

    mode: str = "linear"
    scales: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GROUPS, 1.0))
    offsets: dict[str, float] = field(default_factory=dict)
    intercept_ms: float = 0.0
    fitted_on: int = 0
    cv_mape: dict[str, float] = field(default_factory=dict)

    def apply(self, sums: Mapping[str, float]) -> float:
        ms = sum(self.scales.get(g, 1.0) * sums[g] for g in GROUPS)
        return ms + sum(v * sums[f] for f, v in self.offsets.items()) + self.intercept_ms

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scales": dict(self.scales), "offsets": dict(self.offsets),
                "intercept_ms": self.intercept_ms, "fitted_on": self.fitted_on, "cv_mape": dict(self.cv_mape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Correction:
        return cls(str(data["mode"]), {str(k): float(v) for k, v in data["scales"].items()},
                   {str(k): float(v) for k, v in data.get("offsets", {}).items()}, float(data["intercept_ms"]),
                   int(data.get("fitted_on", 0)), {str(k): float(v) for k, v in data.get("cv_mape", {}).items()})


def _fit_mode(sums: Sequence[Mapping[str, float]], y: np.ndarray, mode: str) -> Correction:
    """One least-squares fit of `mode` (relative error; scales >= 0, offsets of either sign)."""
    weight = 1.0 / y
    if mode == "per_kind":
        scaled = [g for g in GROUPS if any(s[g] > 0 for s in sums)]
        cols = [[s[g] for s in sums] for g in scaled]
    else:
        scaled, cols = ["total"], [[s["total"] for s in sums]]
    free = MODE_OFFSETS[mode]
    for name in free:  # a free coefficient is the difference of two non-negative ones
        col = [s[name] for s in sums]
        cols += [col, [-v for v in col]]
    cols += [[1.0] * len(y), [-1.0] * len(y)]
    a = np.array(cols, dtype=np.float64).T * weight[:, None]
    b = y * weight
    if mode == "per_kind" and scaled:
        # Each scale is pulled towards 1 (as strongly as ~PRIOR_WEIGHT^2 of one model's
        # squared relative error), so a group with little data cannot run to an extreme.
        prior = np.zeros((len(scaled), a.shape[1]))
        prior[np.arange(len(scaled)), np.arange(len(scaled))] = PRIOR_WEIGHT
        a = np.vstack([a, prior])
        b = np.concatenate([b, np.full(len(scaled), PRIOR_WEIGHT)])
    x = nnls(a, b)
    n = len(scaled)
    if mode == "per_kind":
        scales = dict.fromkeys(GROUPS, 1.0)
        scales.update({g: float(x[i]) for i, g in enumerate(scaled)})
    else:
        scales = dict.fromkeys(GROUPS, float(x[0]))
    offsets = {name: float(x[n + 2 * i] - x[n + 2 * i + 1]) for i, name in enumerate(free)}
    return Correction(mode, scales, offsets, float(x[-2] - x[-1]), len(y))


def fit_correction(sums: Sequence[Mapping[str, float]], measured_ms: Sequence[float], mode: str = "auto"
                   ) -> Correction:
    """Fit a `Correction` to table sums (`group_sums`) and measured p50s (ms), minimising relative error.

    linear: measured ~= alpha * total + beta.
    bytes: + gamma * MB moved by all kernels.
    per_kind: a scale per group (pulled towards 1) + offsets per conv kernel and per MB
        of conv activations (a lone conv block pays entering and leaving the runtime's
        blocked layout, which consecutive convs in a model do not, and finds its input in
        another cache state) + per MB of weights (a block timed alone keeps its weights
        in cache; a whole model streams them) + beta.
    auto: the mode with the lowest leave-one-out MAPE on these models (the simpler one on
        a tie within 0.1 points), so the choice uses the fitting data only.
    """
    if mode not in (*MODES, "auto"):
        raise ValueError(f"correction mode {mode!r} must be one of {', '.join((*MODES, 'auto'))}")
    y = np.asarray(measured_ms, dtype=np.float64)
    if len(sums) != len(y):
        raise ValueError(f"{len(sums)} models but {len(y)} measurements")
    if len(y) < 2:
        raise UserError(f"fitting the latency correction needs at least 2 measured models, got {len(y)}")
    if (y <= 0).any() or not np.isfinite(y).all():
        raise ValueError(f"measured latencies must be finite and > 0 ms, got {y.tolist()}")
    if mode != "auto":
        return _fit_mode(sums, y, mode)
    if len(y) < 4:
        return _fit_mode(sums, y, "linear")
    cv = {}
    for candidate in MODES:
        errors = []
        for i in range(len(y)):
            keep = [j for j in range(len(y)) if j != i]
            fitted = _fit_mode([sums[j] for j in keep], y[keep], candidate)
            errors.append(abs(fitted.apply(sums[i]) - y[i]) / y[i])
        cv[candidate] = 100.0 * float(np.mean(errors))
    lowest = min(cv.values())
    best = next(m for m in MODES if cv[m] <= lowest + 0.1)  # MODES run simplest first
    chosen = _fit_mode(sums, y, best)
    chosen.cv_mape = cv
    return chosen


class LatencyPredictor:
    """Table + decomposition + fitted correction: `predict(model, input_shape) -> ms`."""

    def __init__(self, lut: LatencyLUT, correction: Correction | None = None) -> None:
        self.lut = lut
        self.correction = correction or Correction()

    def __repr__(self) -> str:
        return f"LatencyPredictor({self.lut!r}, mode={self.correction.mode}, fitted_on={self.correction.fitted_on})"

    @property
    def fingerprint(self) -> dict:
        return self.lut.fingerprint

    def decompose(self, model: nn.Module, input_shape: Sequence[int]) -> Decomposition:
        return decompose(model, input_shape, self.lut.runtime, self.lut.threads)

    def table_sums(self, model: nn.Module | Decomposition, input_shape: Sequence[int] | None = None
                   ) -> dict[str, float]:
        """Per-group table latencies of `model` (ms), see `group_sums`."""
        if isinstance(model, Decomposition):
            return group_sums(self.lut, model)
        if input_shape is None:
            raise ValueError("input_shape (C, H, W) is needed to decompose a model")
        return group_sums(self.lut, self.decompose(model, input_shape))

    def fit(self, models: Sequence[nn.Module | Decomposition], measurements: Sequence[float],
            input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None, mode: str = "auto"
            ) -> LatencyPredictor:
        """Fit the correction on measured whole models (p50, ms); returns self.

        `input_shape`: one (C, H, W) for all models, or one per model; not needed for
        models given as `Decomposition`s.
        """
        shapes = _per_model_shapes(input_shape, len(models))
        sums = [self.table_sums(m, s) for m, s in zip(models, shapes)]
        self.correction = fit_correction(sums, measurements, mode)
        return self

    def predict(self, model: nn.Module | Decomposition, input_shape: Sequence[int] | None = None) -> float:
        """Predicted p50 latency (ms) of `model` on the table's device, runtime and threads."""
        return max(0.0, self.correction.apply(self.table_sums(model, input_shape)))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "fingerprint": self.lut.fingerprint, "correction": self.correction.to_dict(),
                "lut": self.lut.to_dict()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write predictor (table included) as one JSON file, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: Mapping[str, Any] | None = None) -> LatencyPredictor:
        """Read a saved predictor; with `fingerprint`, refuse one fitted on another device."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
            predictor = cls(LatencyLUT.from_dict(data["lut"]), Correction.from_dict(data["correction"]))
        except FileNotFoundError:
            raise UserError(f"latency predictor {str(path)!r} does not exist; fit one first "
                            "(tools/bench_latency_predictor.py writes predictor.json)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{str(path)!r} is not a readable latency predictor ({exc})") from None
        if fingerprint is not None:
            predictor.lut.check_fingerprint(fingerprint, f"latency predictor {str(path)!r}")
        return predictor


def _per_model_shapes(input_shape: Any, n: int) -> list[tuple[int, ...] | None]:
    if input_shape is None:
        return [None] * n
    shapes = list(input_shape)
    if shapes and all(isinstance(s, (list, tuple)) for s in shapes):
        if len(shapes) != n:
            raise ValueError(f"{len(shapes)} input shapes for {n} models")
        return [tuple(s) for s in shapes]
    return [tuple(int(d) for d in shapes)] * n


__all__ = [
    "FEATURES", "GROUPS", "GROUP_OF", "MODES", "MODE_OFFSETS", "Correction", "Decomposition", "Kernel", "LatencyPredictor", "decompose",
    "fit_correction", "group_sums",
]  # fmt: skip
