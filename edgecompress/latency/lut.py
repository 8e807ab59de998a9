"""Per-op latency lookup tables (LUT): single blocks timed on the device, keyed by signature.

`profile_lut(device, "default")` builds every block of a grid (conv k in {1,3,5} x stride
{1,2} x channels x resolution, depthwise, grouped, linear, avg/max/global pooling, add,
mul, concat, split, channel shuffle, standalone activations) as its own tiny PyTorch
module, exports it like any model (ONNX: the project's legacy exporter settings; TFLite:
litert-torch), and times the file through `device.measure()`, so the same code profiles
the host and a phone. Blocks are what the runtimes execute as one fused kernel: a conv
block is conv + BatchNorm + activation, because BN folds into the conv at export and
ReLU/ReLU6 fuse into it in both runtimes (an activation a runtime does not fuse, e.g.
hardswish in ONNX Runtime, is timed as part of the same block, so the entry is still
what that pair costs).

What an entry holds (ms): the block's p50 minus the p50 of an "empty" model with the
same inputs (the first input copied to the one output), clipped at 0. The empty model costs one
invocation of the runtime (session/interpreter call, input binding), which a whole
model pays once, not once per layer; the predictor adds it back as its intercept.

Lookup of a signature not in the table (`LatencyLUT.lookup`) interpolates. Chosen
method: among the entries of the same op, kernel, stride and activation (relaxed in
that order when there are too few), take the `NEIGHBOURS` nearest in log-space over
(input channels, output channels, output pixels, groups) plus a penalty when the
channel counts' alignments (largest power of two dividing them, up to 16) differ
(per log2 step), and fit `ms ~= a + b * MACs + c * bytes` (a, b, c >= 0, non-negative
least squares, relative error, weights 1 / (1 + distance)^2) on them. Kernel time is close to affine in
arithmetic and memory traffic for one kernel shape family, which is what makes this
local fit extrapolate sensibly beyond the grid too; alignment matters because
runtimes pick SIMD-blocked kernels only for aligned channel counts (ONNX Runtime's
NCHWc convs need multiples of 8 on AVX2).

Stored as JSON (`lut.json`): schema, fingerprint of the device, runtime and its
version, threads, the grid, the measurement settings, the per-input-shape overheads
and the entries. Loading a table for another device (fingerprint id) is a UserError
naming both. Profiling writes the file atomically every `save_every` entries, so an
interrupted run continues with `resume=True` (CLI `--resume`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError, suggest
from edgecompress.fsutil import atomic_write_json

SCHEMA = "edgecompress.lut/1"

#: op kinds a table can hold (see BlockSig for what the fields mean per kind)
OPS = ("conv", "dwconv", "gconv", "linear", "maxpool", "avgpool", "gap", "add", "mul", "concat", "split",
       "shuffle", "act")
#: activations a block may end in; "affine" is a standalone BatchNorm / scale-shift
ACTS = ("none", "relu", "relu6", "hardswish", "silu", "sigmoid", "hardsigmoid", "gelu", "tanh", "leaky_relu",
        "affine")
RUNTIMES = ("onnxruntime", "litert")
_SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite"}
#: entries used by one interpolation
NEIGHBOURS = 8
#: distance added per log2 step between two channel counts' alignments (1, 2, 4, 8, 16)
ALIGN_PENALTY = 1.0
_BYTES_PER_ELEMENT = 4  # fp32 tables


def _align(c: int) -> int:
    """Largest power of two dividing c, capped at 16 (SIMD block sizes that matter)."""
    a = 1
    while a < 16 and c % (a * 2) == 0:
        a *= 2
    return a


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"BlockSig.{name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True, order=True)
class BlockSig:
    """What identifies one timed block (all sizes in elements; h, w are the INPUT map).

    conv/dwconv/gconv: cin -> cout channels, k x k kernel, stride, groups, padding
        (k-1)//2, with BatchNorm folded and `act` fused. dwconv has groups = cin = cout.
    linear: cin -> cout features (h = w = 1; the block flattens a (cin, 1, 1) map first).
    maxpool/avgpool: k x k window, stride, padding (k-1)//2 over cin = cout channels.
    gap: global average pool of (cin, h, w) to (cin, 1, 1).
    add/mul: two (cin, h, w) tensors, then `act`.  act: one standalone activation.
    concat: `groups` inputs along channels, the first with cin channels, cout in total.
    split: (cin, h, w) into `groups` equal chunks along channels.
    shuffle: channel shuffle of (cin, h, w) with `groups` groups (reshape-transpose-reshape).
    runtime / threads: what the entry was measured with.
    """

    op: str
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    groups: int = 1
    h: int = 1
    w: int = 1
    act: str = "none"
    runtime: str = "onnxruntime"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"BlockSig.op = {self.op!r} must be one of {', '.join(OPS)}{suggest(str(self.op), OPS)}")
        if self.act not in ACTS:
            raise ValueError(f"BlockSig.act = {self.act!r} must be one of {', '.join(ACTS)}{suggest(str(self.act), ACTS)}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"BlockSig.runtime = {self.runtime!r} must be one of {', '.join(RUNTIMES)}")
        for name in ("cin", "cout", "k", "stride", "groups", "h", "w", "threads"):
            object.__setattr__(self, name, _positive_int(getattr(self, name), name))
        if self.op == "dwconv" and not (self.groups == self.cin == self.cout):
            raise ValueError(f"BlockSig dwconv needs groups = cin = cout, got {self.groups}, {self.cin}, {self.cout}")
        if self.op in ("conv", "gconv") and (self.cin % self.groups or self.cout % self.groups):
            raise ValueError(f"BlockSig {self.op}: cin {self.cin} and cout {self.cout} must divide by groups {self.groups}")
        if self.op in ("split", "shuffle") and self.cin % self.groups:
            raise ValueError(f"BlockSig {self.op}: cin {self.cin} must divide by groups {self.groups}")
        if self.op == "concat" and not (self.groups >= 2 and self.cout > self.cin):
            raise ValueError(f"BlockSig concat needs groups >= 2 inputs and cout > cin, got {self.groups}, {self.cin}, {self.cout}")
        if self.op == "linear" and (self.h, self.w) != (1, 1):
            raise ValueError(f"BlockSig linear has h = w = 1, got {self.h}x{self.w}")

    @property
    def key(self) -> str:
        """Stable text key: 'conv|cin=32|cout=64|k=3|s=1|g=1|h=16|w=16|act=relu|onnxruntime|t1'."""
        return (f"{self.op}|cin={self.cin}|cout={self.cout}|k={self.k}|s={self.stride}|g={self.groups}"
                f"|h={self.h}|w={self.w}|act={self.act}|{self.runtime}|t{self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockSig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def out_hw(self) -> tuple[int, int]:
        """Output map size (pixels) of the block."""
        if self.op in ("conv", "dwconv", "gconv", "maxpool", "avgpool"):
            pad = (self.k - 1) // 2
            return ((self.h + 2 * pad - self.k) // self.stride + 1, (self.w + 2 * pad - self.k) // self.stride + 1)
        if self.op in ("gap", "linear"):
            return (1, 1)
        return (self.h, self.w)

    def input_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (batch 1) of the block's inputs."""
        one = (1, self.cin, self.h, self.w)
        if self.op in ("add", "mul"):
            return [one, one]
        if self.op == "concat":
            rest = self.cout - self.cin
            sizes = [self.cin] + [rest // (self.groups - 1) + (1 if i < rest % (self.groups - 1) else 0)
                                  for i in range(self.groups - 1)]
            return [(1, c, self.h, self.w) for c in sizes]
        return [one]

    def macs(self) -> int:
        """Multiply-accumulates (conv and linear; 0 for the rest, as in graph/cost.py)."""
        ho, wo = self.out_hw()
        if self.op in ("conv", "dwconv", "gconv"):
            return self.cout * (self.cin // self.groups) * self.k * self.k * ho * wo
        if self.op == "linear":
            return self.cin * self.cout
        return 0

    def work(self) -> tuple[float, float]:
        """(arithmetic ops, bytes moved) for interpolation: MACs, or one op per element
        visited for pooling/elementwise kinds; bytes = inputs + output + weights (fp32)."""
        ho, wo = self.out_hw()
        ins = sum(math.prod(s) for s in self.input_shapes())
        out = self.cout * ho * wo if self.op not in ("split", "shuffle") else ins
        weights = 0
        if self.op in ("conv", "dwconv", "gconv"):
            weights = self.cout * (self.cin // self.groups) * self.k * self.k
        elif self.op == "linear":
            weights = self.cin * self.cout
        ops = self.macs()
        if ops == 0:
            ops = self.cout * ho * wo * (self.k * self.k if self.op in ("maxpool", "avgpool") else 1)
            if self.op == "gap":
                ops = ins
        return float(ops), float(_BYTES_PER_ELEMENT * (ins + out + weights))

    def build(self):
        """The block as an eval-mode nn.Module taking `input_shapes()` tensors."""
        return _block_class()(self).eval()


def _act_module(act: str):
    from torch import nn

    return {
        "none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU,
        "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "gelu": nn.GELU, "tanh": nn.Tanh,
        "leaky_relu": nn.LeakyReLU,
    }[act]()


def _block_class():
    import torch
    from torch import nn

    class Block(nn.Module):
        """One LUT block; the layer set depends on the signature's op."""

        def __init__(self, sig: BlockSig) -> None:
            super().__init__()
            self.sig = sig
            op, pad = sig.op, (sig.k - 1) // 2
            if op in ("conv", "dwconv", "gconv"):
                self.body = nn.Sequential(
                    nn.Conv2d(sig.cin, sig.cout, sig.k, sig.stride, pad, groups=sig.groups, bias=False),
                    nn.BatchNorm2d(sig.cout),
                )
            elif op == "linear":
                self.body = nn.Sequential(nn.Flatten(1), nn.Linear(sig.cin, sig.cout))
            elif op == "maxpool":
                self.body = nn.MaxPool2d(sig.k, sig.stride, pad)
            elif op == "avgpool":
                self.body = nn.AvgPool2d(sig.k, sig.stride, pad)
            elif op == "gap":
                self.body = nn.AdaptiveAvgPool2d(1)
            elif op == "act" and sig.act == "affine":
                self.body = nn.BatchNorm2d(sig.cin)
            else:
                self.body = nn.Identity()
            self.act = _act_module(sig.act) if sig.act != "affine" else nn.Identity()

        def forward(self, *xs):
            op = self.sig.op
            if op == "add":
                return self.act(xs[0] + xs[1])
            if op == "mul":
                return self.act(xs[0] * xs[1])
            if op == "concat":
                return torch.cat(xs, dim=1)
            if op == "split":
                return xs[0].chunk(self.sig.groups, dim=1)
            if op == "shuffle":
                return xs[0].unflatten(1, (self.sig.groups, -1)).transpose(1, 2).flatten(1, 2)
            return self.act(self.body(xs[0]))

    return Block


def _empty_model():
    """The same inputs, the first one copied to the only output: what one invocation of
    the runtime costs (call, binding inputs and an output) with no work in it."""
    from torch import nn

    class Empty(nn.Module):
        def forward(self, *xs):
            return xs[0].clone()

    return Empty().eval()


# --------------------------------------------------------------------------------------
# grids


_FAMILY_KEYS = ("op", "k", "stride", "channels", "cout", "cout_ratio", "groups", "res", "act", "max_elements")


@dataclass(frozen=True)
class LutGrid:
    """A profiling grid: `families`, each a mapping with `op` and lists of values.

    Family keys: op; k, stride, groups, act (lists); channels (cin list); cout (list of
    absolute output channels) or cout_ratio (cout = round(cin * r)); res (square input
    maps, px); max_elements (skip blocks whose input or output map holds more elements).
    Missing keys take per-op defaults (k 3, stride 1, groups 1, act none, res [1]).
    """

    name: str
    families: tuple[Mapping[str, Any], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(dict(f) for f in self.families))
        for i, fam in enumerate(self.families):
            unknown = sorted(set(fam) - set(_FAMILY_KEYS))
            if unknown:
                raise ValueError(f"LutGrid.families[{i}] has unknown key {unknown[0]!r}"
                                 f"{suggest(unknown[0], _FAMILY_KEYS)}; valid: {', '.join(_FAMILY_KEYS)}")
            if fam.get("op") not in OPS:
                raise ValueError(f"LutGrid.families[{i}].op = {fam.get('op')!r} must be one of {', '.join(OPS)}")
            if "channels" not in fam:
                raise ValueError(f"LutGrid.families[{i}] ({fam['op']}) needs a 'channels' list")

    def signatures(self, runtime: str, threads: int) -> list[BlockSig]:
        """Every block of the grid, de-duplicated, in a stable order (cheap blocks first)."""
        out: dict[str, BlockSig] = {}
        for fam in self.families:
            for sig in _expand(fam, runtime, threads):
                out.setdefault(sig.key, sig)
        return sorted(out.values(), key=lambda s: (OPS.index(s.op), s.work()[0], s.key))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "families": [dict(f) for f in self.families]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LutGrid:
        return cls(str(data.get("name", "custom")), tuple(data["families"]))


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _expand(fam: Mapping[str, Any], runtime: str, threads: int) -> Iterable[BlockSig]:
    op = fam["op"]
    ks = _as_list(fam.get("k", 3 if op in ("conv", "dwconv", "gconv", "maxpool", "avgpool") else 1))
    strides = _as_list(fam.get("stride", 1))
    groups_list = _as_list(fam.get("groups", 2 if op in ("concat", "split", "shuffle", "gconv") else 1))
    acts = _as_list(fam.get("act", "none"))
    res_list = _as_list(fam.get("res", 1))
    limit = fam.get("max_elements")
    for cin in _as_list(fam["channels"]):
        if "cout" in fam:
            couts = _as_list(fam["cout"])
        elif "cout_ratio" in fam:
            couts = [max(1, int(round(cin * r))) for r in _as_list(fam["cout_ratio"])]
        else:
            couts = [cin]
        for cout in couts:
            for k in ks:
                for stride in strides:
                    for g in groups_list:
                        for act in acts:
                            for res in res_list:
                                sig = _family_sig(op, int(cin), int(cout), int(k), int(stride), int(g), str(act),
                                                  int(res), runtime, threads)
                                if sig is None:
                                    continue
                                if limit is not None:
                                    ho, wo = sig.out_hw()
                                    if max(sig.cin * sig.h * sig.w, sig.cout * ho * wo) > limit:
                                        continue
                                yield sig


def _family_sig(op: str, cin: int, cout: int, k: int, stride: int, g: int, act: str, res: int,
                runtime: str, threads: int) -> BlockSig | None:
    """The signature a grid point stands for, or None when the combination is not a valid block."""
    base = dict(runtime=runtime, threads=threads)
    if op == "conv":
        return BlockSig("conv", cin, cout, k, stride, 1, res, res, act, **base)
    if op == "dwconv":
        return BlockSig("dwconv", cin, cin, k, stride, cin, res, res, act, **base)
    if op == "gconv":
        if g < 2 or cin % g or cout % g or g >= cin:
            return None
        return BlockSig("gconv", cin, cout, k, stride, g, res, res, act, **base)
    if op == "linear":
        return BlockSig("linear", cin, cout, 1, 1, 1, 1, 1, act, **base)
    if op in ("maxpool", "avgpool"):
        return BlockSig(op, cin, cin, k, stride, 1, res, res, "none", **base)
    if op == "gap":
        return BlockSig("gap", cin, cin, 1, 1, 1, res, res, "none", **base)
    if op in ("add", "mul", "act"):
        return BlockSig(op, cin, cin, 1, 1, 1, res, res, act, **base)
    if op == "concat":
        return BlockSig("concat", cin, cin * g, 1, 1, g, res, res, "none", **base)
    if op in ("split", "shuffle"):
        if cin % g:
            return None
        return BlockSig(op, cin, cin, 1, 1, g, res, res, "none", **base)
    return None


def _preset(name: str, res: list[int], channels: list[int], max_elements: int, wide: list[int], dense: bool
            ) -> LutGrid:
    """A grid over `res` x `channels`; `wide` are extra channel counts of depthwise convs,
    global pools and linears (e.g. MobileNetV2's 1280). `dense` adds more output/input
    channel ratios, activations and odd widths (about 1.4x the blocks)."""
    ch = channels
    odd = [c + c // 2 for c in ch[1:-1]]  # 24, 48, 96, ...: widths between the powers of two
    lim = {"res": res, "max_elements": max_elements}
    families = [
        {"op": "conv", "k": [1], "stride": [1], "channels": ch,
         "cout_ratio": [0.25, 0.5, 1, 2, 4, 6] if dense else [0.5, 1, 2, 4], "act": ["relu"], **lim},
        {"op": "conv", "k": [1], "stride": [1], "channels": odd, "cout_ratio": [1], "act": ["relu"], **lim},
        {"op": "conv", "k": [1], "stride": [2], "channels": ch, "cout_ratio": [2], "act": ["none"], **lim},
        {"op": "conv", "k": [3], "stride": [1, 2], "channels": ch, "cout_ratio": [0.5, 1, 2] if dense else [1, 2],
         "act": ["relu"], **lim},
        # stems: 1 or 3 input channels, also at twice the largest map (a 224 px input)
        {"op": "conv", "k": [3], "stride": [1, 2], "channels": [1, 3] if dense else [3], "cout": ch[:4] if dense else ch[:3],
         "act": ["relu"], "res": [*res, 2 * res[-1]], "max_elements": max_elements},
        {"op": "conv", "k": [5], "stride": [1, 2], "channels": ch[::2], "cout_ratio": [1], "act": ["relu"], **lim},
        {"op": "dwconv", "k": [3], "stride": [1, 2], "channels": sorted(ch + odd + wide),
         "act": ["relu", "none"] if dense else ["relu"], **lim},
        {"op": "dwconv", "k": [5], "stride": [1, 2], "channels": ch if dense else ch[::2], "act": ["relu"], **lim},
        {"op": "gconv", "k": [1], "stride": [1], "channels": ch[2:], "cout_ratio": [0.25, 1, 4] if dense else [1],
         "groups": [2, 4, 8] if dense else [2, 4], "act": ["relu"], **lim},
        {"op": "linear", "channels": sorted(ch[2:] + wide), "cout": [10, 100, 1000] if dense else [10, 1000]},
        {"op": "maxpool", "k": [3], "stride": [2], "channels": ch, **lim},
        {"op": "avgpool", "k": [3], "stride": [2], "channels": ch, **lim},
        {"op": "gap", "channels": sorted(ch + wide), **lim},
        {"op": "add", "channels": ch, "act": ["none", "relu"], **lim},
        {"op": "mul", "channels": ch, **lim},
        {"op": "act", "channels": ch, "act": ["relu", "hardswish", "sigmoid"] if dense else ["hardswish", "sigmoid"],
         **lim},
        {"op": "concat", "channels": ch, "groups": [2], **lim},
        {"op": "split", "channels": ch[1:], "groups": [2], **lim},
        {"op": "shuffle", "channels": ch[1:], "groups": [2], **lim},
    ]
    if dense:
        families += [
            {"op": "conv", "k": [1], "stride": [1], "channels": ch, "cout_ratio": [1], "act": ["none"], **lim},
            {"op": "conv", "k": [3], "stride": [1], "channels": odd, "cout_ratio": [1], "act": ["relu"], **lim},
        ]
    return LutGrid(name, tuple(families))


def _small_grid() -> LutGrid:
    """40 blocks around 8-16 px and 16-32 channels: a quick check that profiling works."""
    res, ch = [8, 16], [16, 32]
    return LutGrid("small", (
        {"op": "conv", "k": [1, 3], "stride": [1], "channels": ch, "cout_ratio": [1, 2], "res": res, "act": ["relu"]},
        {"op": "conv", "k": [3], "stride": [1], "channels": [3], "cout": [16], "res": res, "act": ["relu"]},
        {"op": "dwconv", "k": [3], "stride": [1, 2], "channels": ch, "res": res, "act": ["relu"]},
        {"op": "linear", "channels": [32, 64], "cout": [10]},
        {"op": "maxpool", "k": [3], "stride": [2], "channels": [16], "res": res},
        {"op": "gap", "channels": ch, "res": [4, 8]},
        {"op": "add", "channels": ch, "res": res},
        {"op": "concat", "channels": [16], "groups": [2], "res": res},
    ))


#: grid presets: "small" (a quick check), "default" (phone-sized inputs, 7-112 px) and
#: "cifar" (28-32 px inputs: 2-32 px maps, as the zoo models see them)
GRID_PRESETS: dict[str, Callable[[], LutGrid]] = {
    "small": _small_grid,
    "default": lambda: _preset("default", [7, 14, 28, 56, 112], [16, 32, 64, 128, 256, 512], 112 * 112 * 96,
                               [960, 1280], dense=False),
    "cifar": lambda: _preset("cifar", [2, 4, 8, 16, 32], [8, 16, 32, 64, 128, 256, 512, 1024], 32 * 32 * 192,
                             [1280], dense=True),
}


def load_grid(spec: str | os.PathLike | LutGrid) -> LutGrid:
    """A preset name (small, default, cifar), a .json/.yaml file with `families`, or a LutGrid."""
    if isinstance(spec, LutGrid):
        return spec
    text = str(spec)
    if text in GRID_PRESETS:
        return GRID_PRESETS[text]()
    path = Path(text)
    if not path.is_file():
        raise UserError(f"grid {text!r} is neither a preset{suggest(text, GRID_PRESETS)} ({', '.join(GRID_PRESETS)}) "
                        "nor an existing .json/.yaml file with a 'families' list")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text())
        else:
            data = json.loads(path.read_text())
        if isinstance(data, list):
            data = {"name": path.stem, "families": data}
        data.setdefault("name", path.stem)
        return LutGrid.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"grid file {text!r} is not a valid grid ({exc}); it needs 'families': a list of "
                        f"mappings with keys {', '.join(_FAMILY_KEYS)}") from None
    except Exception as exc:  # yaml.YAMLError and friends: a file that does not parse
        raise UserError(f"grid file {text!r} does not parse ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------
# non-negative least squares (shared with the predictor)


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """x >= 0 minimising ||a x - b||_2 (Lawson-Hanson active set; small dense problems)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    max_iter = max_iter or 3 * n + 10
    tol = 1e-10 * max(1.0, float(np.abs(a).max(initial=0.0))) * max(m, n)
    for _ in range(max_iter):
        grad = a.T @ (b - a @ x)
        free = ~passive & (grad > tol)
        if not free.any():
            break
        passive[np.argmax(np.where(free, grad, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            step = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + step * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


# --------------------------------------------------------------------------------------
# the table


def describe_fingerprint(fp: Mapping[str, Any]) -> str:
    """'id 3f2a... (AMD EPYC 7B13)' or 'id 9c1d... (Google Pixel 7, gs201)'."""
    if fp.get("kind") == "android" or fp.get("model"):
        what = ", ".join(str(v) for v in (" ".join(str(fp.get(k, "")) for k in ("manufacturer", "model")).strip(),
                                           fp.get("soc", "")) if v)
    else:
        what = str(fp.get("cpu_model") or fp.get("name") or "unknown CPU")
    return f"id {fp.get('id', '?')} ({what or 'unknown device'})"


@dataclass(frozen=True)
class LutEntry:
    """One measured block: `ms` = max(0, raw_ms - overhead_ms), all p50 in ms."""

    sig: BlockSig
    ms: float
    raw_ms: float
    overhead_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.sig.to_dict(), "ms": self.ms, "raw_ms": self.raw_ms, "overhead_ms": self.overhead_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LutEntry:
        return cls(BlockSig.from_dict(data), float(data["ms"]), float(data.get("raw_ms", data["ms"])),
                   float(data.get("overhead_ms", 0.0)))


class LatencyLUT:
    """Per-block latencies (ms) of one device, runtime and thread count; see the module docstring."""

    def __init__(self, fingerprint: Mapping[str, Any], runtime: str, threads: int, *, runtime_version: str = "unknown",
                 device: str = "", grid: LutGrid | None = None, measure: Mapping[str, int] | None = None,
                 entries: Iterable[LutEntry] = (), overheads: Mapping[str, float] | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"LatencyLUT.runtime = {runtime!r} must be one of {', '.join(RUNTIMES)}")
        self.fingerprint = dict(fingerprint)
        self.runtime = runtime
        self.threads = _positive_int(threads, "threads")
        self.runtime_version = str(runtime_version)
        self.device = device
        self.grid = grid
        self.measure = dict(measure or {})
        self.overheads = dict(overheads or {})
        self.entries: dict[str, LutEntry] = {}
        self._memo: dict[str, float] = {}
        for entry in entries:
            self.add(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, sig: BlockSig) -> bool:
        return sig.key in self.entries

    def __repr__(self) -> str:
        return (f"LatencyLUT({len(self)} entries, {self.runtime} {self.runtime_version}, threads={self.threads}, "
                f"{describe_fingerprint(self.fingerprint)})")

    def add(self, entry: LutEntry) -> None:
        self._check_sig(entry.sig)
        self.entries[entry.sig.key] = entry
        self._memo.clear()

    def sig(self, op: str, cin: int, cout: int, **kw: Any) -> BlockSig:
        """A signature for this table's runtime and threads."""
        return BlockSig(op, cin, cout, runtime=self.runtime, threads=self.threads, **kw)

    def _check_sig(self, sig: BlockSig) -> None:
        if sig.runtime != self.runtime or sig.threads != self.threads:
            raise UserError(f"block {sig.key} is for {sig.runtime} at {sig.threads} thread(s), but this table holds "
                            f"{self.runtime} at {self.threads}; profile a table for that runtime and thread count")

    # -- lookup ------------------------------------------------------------------------
    def lookup(self, sig: BlockSig) -> float:
        """Latency (ms) of `sig`: the measured entry, else interpolated (module docstring)."""
        self._check_sig(sig)
        entry = self.entries.get(sig.key)
        if entry is not None:
            return entry.ms
        if sig.key not in self._memo:
            self._memo[sig.key] = self._interpolate(sig)
        return self._memo[sig.key]

    def _pool(self, sig: BlockSig) -> list[LutEntry]:
        same_op = [e for e in self.entries.values() if e.sig.op == sig.op]
        if not same_op:
            have = sorted({e.sig.op for e in self.entries.values()})
            raise UserError(f"the latency table has no {sig.op!r} blocks (it has {', '.join(have) or 'none'}); "
                            f"profile it with a grid that includes {sig.op} (edgecompress profile --grid ...)")
        for keep in (("k", "stride", "act"), ("k", "stride"), ("k",), ()):
            pool = [e for e in same_op if all(getattr(e.sig, f) == getattr(sig, f) for f in keep)]
            if len(pool) >= 3 or (keep == () and pool):
                return pool
        return same_op

    @staticmethod
    def _position(sig: BlockSig) -> np.ndarray:
        ho, wo = sig.out_hw()
        return np.array([math.log2(sig.cin), math.log2(sig.cout), math.log2(max(ho * wo, 1)), math.log2(sig.groups),
                         math.log2(sig.k)])

    def _interpolate(self, sig: BlockSig) -> float:
        pool = self._pool(sig)
        here = self._position(sig)
        align = (_align(sig.cin), _align(sig.cout))
        dist = []
        for e in pool:
            d = float(np.linalg.norm(self._position(e.sig) - here))
            d += ALIGN_PENALTY * (abs(math.log2(_align(e.sig.cin) / align[0]))
                                  + abs(math.log2(_align(e.sig.cout) / align[1])))
            dist.append(d)
        order = np.argsort(dist, kind="stable")[:NEIGHBOURS]
        near = [pool[i] for i in order]
        ops, nbytes = sig.work()
        if len(near) == 1:
            e = near[0]
            e_ops, e_bytes = e.sig.work()
            return max(0.0, e.ms * (ops + nbytes) / max(e_ops + e_bytes, 1.0))
        rows, target = [], []
        for i, e in zip(order, near):
            e_ops, e_bytes = e.sig.work()
            # Relative error (divide by the entry's time) and nearer entries count more.
            weight = 1.0 / (max(e.ms, 1e-4) * (1.0 + dist[i]) ** 2)
            rows.append(np.array([1.0, e_ops / ops, e_bytes / nbytes]) * weight)
            target.append(e.ms * weight)
        # Columns are scaled by the query's own work so the fit is well conditioned.
        coef = nnls(np.array(rows), np.array(target))
        return float(max(0.0, coef[0] + coef[1] + coef[2]))

    # -- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "grid": self.grid.to_dict() if self.grid else None,
            "measure": self.measure,
            "overheads": self.overheads,
            "entries": [e.to_dict() for e in sorted(self.entries.values(), key=lambda e: e.sig.key)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyLUT:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a latency table (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        grid = LutGrid.from_dict(data["grid"]) if data.get("grid") else None
        return cls(data["fingerprint"], data["runtime"], int(data["threads"]),
                   runtime_version=str(data.get("runtime_version", "unknown")), device=str(data.get("device", "")),
                   grid=grid, measure=data.get("measure"), overheads=data.get("overheads"),
                   entries=[LutEntry.from_dict(e) for e in data.get("entries", [])])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: Mapping[str, Any] | None = None) -> LatencyLUT:
        """Read a table; with `fingerprint`, refuse one profiled on another device (UserError)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            lut = cls.from_dict(data)
        except FileNotFoundError:
            raise UserError(f"latency table {str(path)!r} does not exist; build one with `edgecompress profile "
                            f"--device D --out {path}`") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{str(path)!r} is not a readable latency table ({exc}); rebuild it with "
                            "`edgecompress profile`") from None
        if fingerprint is not None:
            lut.check_fingerprint(fingerprint, str(path))
        return lut

    def check_fingerprint(self, fingerprint: Mapping[str, Any], where: str = "the latency table") -> None:
        """UserError when `fingerprint` (a device's) has another id than the table's, naming both."""
        check_fingerprint(self.fingerprint, fingerprint, where)


def check_fingerprint(built_on: Mapping[str, Any], fingerprint: Mapping[str, Any], where: str,
                      device: str = "this device") -> None:
    """UserError when a table or predictor (`where`) built on `built_on` is used with another
    device (`fingerprint`, named `device`); the message shows both fingerprints."""
    if fingerprint.get("id") != built_on.get("id"):
        raise UserError(f"{where} was built on {describe_fingerprint(built_on)}, not on {device} "
                        f"{describe_fingerprint(fingerprint)}; profile {device} with `edgecompress profile`")


# --------------------------------------------------------------------------------------
# profiling


def export_block(module, inputs: Sequence[Any], path: str | os.PathLike, runtime: str) -> Path:
    """Export a block with one or more NCHW inputs to `path` (.onnx or .tflite).

    ONNX: the legacy TorchScript exporter with the settings of `export/onnx_export.py`
    (opset 17, constant folding so BN folds into the conv, dynamic batch), so a block
    carries the same glue ops as it does inside an exported model. TFLite: litert-torch.
    """
    import torch

    from edgecompress.export.conversion import native_output_silenced

    path = Path(path)
    inputs = tuple(inputs)
    if runtime == "litert":
        if len(inputs) == 1:
            from edgecompress.export.tflite_export import export_tflite

            return export_tflite(module, inputs[0], path)
        from edgecompress.export.tflite_export import _litert_progress_hidden

        with _litert_progress_hidden(), native_output_silenced():
            import litert_torch

            data = litert_torch.convert(module.eval(), inputs).model_content()
        path.write_bytes(data)
        return path
    import warnings

    names = ["input"] + [f"input_{i}" for i in range(1, len(inputs))]
    with warnings.catch_warnings(), native_output_silenced(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, str(path), input_names=names, opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in names}, do_constant_folding=True)
    return path


def _shape_key(shapes: Sequence[tuple[int, ...]]) -> str:
    return "+".join("x".join(str(d) for d in s) for s in shapes)


def profile_lut(
    device,
    grid: str | os.PathLike | LutGrid = "default",
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    runs: int = 30,
    warmup: int = 5,
    trials: int = 1,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    save_every: int = 20,
    progress: bool = True,
    work_dir: str | os.PathLike | None = None,
) -> LatencyLUT:
    """Measure every block of `grid` on `device` and return the table (see the module docstring).

    Each block is exported to a scratch file and timed with `device.measure(runtime,
    threads, runs, warmup, trials)`; its entry is its p50 minus the p50 of an empty model
    with the same inputs (one per distinct input shape), clipped at 0 ms. With `out`, the
    table is written there atomically every `save_every` entries and at the end; an
    existing `out` is continued with `resume=True` (same device, runtime and threads
    required) and refused otherwise.
    """
    import torch

    from edgecompress.devices.base import RUNTIME_ALIASES

    runtime = RUNTIME_ALIASES.get(str(runtime).lower(), str(runtime).lower())
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}{suggest(runtime, RUNTIMES)}; valid: {', '.join(RUNTIMES)}")
    if runtime not in device.runtimes():
        raise UserError(f"runtime {runtime!r} is not available on {device.name} (it has "
                        f"{', '.join(device.runtimes()) or 'none'}); pick another --runtime")
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a positive integer, got {threads!r}")
    if not isinstance(save_every, int) or save_every < 1:
        raise ValueError(f"save_every must be an integer >= 1, got {save_every!r}")
    grid = load_grid(grid)
    fp = device.fingerprint()
    settings = {"runs": runs, "warmup": warmup, "trials": trials}
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists():
        if not resume:
            raise UserError(f"latency table {str(out_path)!r} already exists; pass --resume to continue it "
                            "or choose another --out")
        lut = LatencyLUT.load(out_path, fingerprint=fp)
        if (lut.runtime, lut.threads) != (runtime, threads):
            raise UserError(f"{str(out_path)!r} holds {lut.runtime} at {lut.threads} thread(s), not {runtime} at "
                            f"{threads}; choose another --out for this setting")
        lut.grid = grid
    else:
        version = (fp.get("runtimes") or {}).get(runtime) or "unknown"
        lut = LatencyLUT(fp, runtime, threads, runtime_version=str(version), device=device.name, grid=grid,
                         measure=settings)
    todo = [s for s in grid.signatures(runtime, threads) if s not in lut]
    torch.set_num_threads(1)  # exporting tiny blocks; keep the other core for the measurement

    def measure(path: Path) -> Any:
        return device.measure(path, runtime=runtime, threads=threads, runs=runs, warmup=warmup, trials=trials)

    with tempfile.TemporaryDirectory(prefix="edgecompress-lut-", dir=work_dir) as tmp:
        suffix = _SUFFIX[runtime]

        def overhead(shapes: list[tuple[int, ...]]) -> float:
            key = _shape_key(shapes)
            if key not in lut.overheads:
                path = export_block(_empty_model(), [torch.zeros(s) for s in shapes],
                                    Path(tmp) / f"empty{suffix}", runtime)
                result = measure(path)
                lut.overheads[key] = result.p50_ms
                if lut.runtime_version == "unknown":
                    lut.runtime_version = result.runtime_version
            return lut.overheads[key]

        done_since_save = 0
        with _Progress(progress, len(todo), f"profiling {device.name} ({runtime}, {threads} thread(s))") as bar:
            for sig in todo:
                bar.show(sig)
                shapes = sig.input_shapes()
                base = overhead(shapes)
                torch.manual_seed(0)
                path = export_block(sig.build(), [torch.randn(s) for s in shapes], Path(tmp) / f"block{suffix}",
                                    runtime)
                raw = measure(path).p50_ms
                lut.add(LutEntry(sig, max(0.0, raw - base), raw, base))
                bar.advance()
                done_since_save += 1
                if out_path is not None and done_since_save >= save_every:
                    lut.save(out_path)
                    done_since_save = 0
    if out_path is not None and (todo or not out_path.exists()):
        lut.save(out_path)
    return lut


class _Progress:
    """A rich progress bar over the blocks (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        self.enabled, self.total, self.title = enabled and total > 0, total, title
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[block]}"))
            self.bar.start()
            self.task = self.bar.add_task(self.title, total=self.total, block="")
        return self

    def show(self, sig: BlockSig) -> None:
        if self.bar is not None:
            self.bar.update(self.task, block=sig.key.rsplit("|", 2)[0])

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = [
    "ACTS", "GRID_PRESETS", "OPS", "BlockSig", "LatencyLUT", "LutEntry", "LutGrid", "describe_fingerprint",
    "export_block", "load_grid", "nnls", "profile_lut",
]  # fmt: skip
