"""Per-layer cost of a model: parameters, MACs and activation bytes.

What is counted
---------------
`analyze` runs one forward pass (batch of seeded random inputs, eval mode, no grad) under a
`TorchDispatchMode` that sees every aten op, and charges each op to the innermost leaf
module running it (a stack kept by forward pre/post hooks).

* MACs (multiply-accumulates; FLOPs ~= 2 x MACs) of convolutions (grouped, depthwise and
  transposed included), matrix products (mm, addmm, bmm, baddbmm, and everything
  `matmul`/`linear`/`einsum` decompose into) and attention (QK^T and AV of
  scaled_dot_product_attention and of the fused multi-head-attention kernels, plus the
  latter's projections). Elementwise ops, bias adds, BatchNorm, pooling and softmax are
  0 MACs: this is the convention of torchvision's published `_ops` figures, which these
  counts reproduce for every torchvision classification model (tests/graph).
* act_bytes: bytes of a layer's input tensors read plus output tensors written, at the
  tensors' real element size. MACs alone mislead on phones: a depthwise 3x3 conv does
  9 MACs per output element where a dense 3x3 conv with C inputs does 9*C, so it moves
  about as many bytes as it does MACs and is bound by memory traffic, not arithmetic; its
  time is far above its MAC share. act_bytes is the other half of that roofline.
* params: a layer's own parameters (not its children's); `total_params` is every unique
  parameter of the model, including those of modules that did not run.

Ops run by a non-leaf module itself (a residual add in a block's forward, a functional
attention using its own weights) are charged to that module under the type
"(functional)", with the bytes of each non-view op read and written.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edgecompress.errors import UserError
from edgecompress.graph.macs import op_macs

SCHEMA = "edgecompress.analysis/1"
FUNCTIONAL = "(functional)"


@dataclass(frozen=True)
class LayerCost:
    """Cost of one module over the forward pass (summed over calls if it ran twice).

    Shapes are those of its first tensor input and first tensor output, batch included, at
    its first call; `params` is a count of elements, `macs` multiply-accumulates and
    `act_bytes` bytes.
    """

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    act_bytes: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["output_shape"] = list(self.output_shape)
        return d


@dataclass(frozen=True)
class ModelAnalysis:
    """Result of `analyze`: layers in execution order and model totals.

    `input_shape` is the shape fed to the model, batch included.
    """

    layers: list[LayerCost]
    input_shape: tuple[int, ...]
    total_params: int
    total_macs: int
    total_act_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, schema 'edgecompress.analysis/1'."""
        return {
            "schema": SCHEMA,
            "input_shape": list(self.input_shape),
            "layers": [layer.to_dict() for layer in self.layers],
            "total": {
                "params": self.total_params,
                "macs": self.total_macs,
                "act_bytes": self.total_act_bytes,
            },
        }

    def render_table(self, console: Any = None, max_rows: int | None = None) -> Any:
        """Print a per-layer table (rich) to `console` (default: a new stdout Console).

        At most `max_rows` layer rows are shown (all if None); the totals row always covers
        every layer. Returns the rich Table.
        """
        from rich import box
        from rich.console import Console
        from rich.table import Table

        shown = self.layers if max_rows is None else self.layers[: max(max_rows, 0)]
        rows = [
            [layer.name or "(root)", layer.type, _fmt_shape(layer.input_shape),
             _fmt_shape(layer.output_shape), _human(layer.params), _human(layer.macs),
             _kib(layer.act_bytes)]
            for layer in shown
        ]
        hidden = len(self.layers) - len(shown)
        if hidden > 0:
            rows.append([f"... {hidden} more layers", "", "", "", "", "", ""])
        total = ["total", "", _fmt_shape(self.input_shape), "", _human(self.total_params),
                 _human(self.total_macs), _kib(self.total_act_bytes)]

        table = Table(title=f"input {_fmt_shape(self.input_shape)}: "
                      f"{_human(self.total_params)} params, {_human(self.total_macs)} MACs",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        # On a narrow terminal names, types and shapes wrap; numbers keep their full width.
        table.add_column("name", overflow="fold", min_width=12)
        for header in ("type", "in shape", "out shape"):
            table.add_column(header, overflow="fold")
        for i, header in enumerate(("params", "MACs", "act KiB"), start=4):
            width = max(len(header), *(len(row[i]) for row in [*rows, total]))
            table.add_column(header, justify="right", no_wrap=True, min_width=width)
        for row in rows:
            table.add_row(*row)
        table.add_section()
        table.add_row(*total, style="bold")
        (console or Console()).print(table)
        return table


def _human(n: int) -> str:
    """3.50 M, 45.6 M, 300.8 M, 1.02 G; plain digits below 1000."""
    if abs(n) < 1000:
        return str(n)
    units = (("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))
    i = max(k for k, (_, scale) in enumerate(units) if abs(n) >= scale)
    if abs(round(n / units[i][1], 1)) >= 1000 and i + 1 < len(units):
        i += 1  # 999_990 shows as 1.00 M, not 1000.0 K
    unit, scale = units[i]
    v = n / scale
    return f"{v:.2f} {unit}" if abs(v) < 10 else f"{v:.1f} {unit}"


def _kib(nbytes: int) -> str:
    kib = nbytes / 1024
    return f"{kib:.1f}" if kib < 100 else f"{kib:.0f}"


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def _tensors(tree: Any) -> list[torch.Tensor]:
    """Distinct tensors in a pytree of args/outputs (a tensor passed twice is read once)."""
    seen: dict[int, torch.Tensor] = {}
    for leaf in tree_flatten(tree)[0]:
        if isinstance(leaf, torch.Tensor):
            seen.setdefault(id(leaf), leaf)
    return list(seen.values())


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _first_shape(tensors: list[torch.Tensor]) -> tuple[int, ...]:
    for t in tensors:
        if not t.is_nested:
            return tuple(int(d) for d in t.shape)
    return ()


def _is_view(func: Any) -> bool:
    """True for ops whose outputs alias an input without writing it (view, reshape, t)."""
    returns = func._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


class _CountError(RuntimeError):
    """A MAC rule failed on an op: a bug here, not in the user's model."""


class _Record:
    """Mutable accumulator behind one LayerCost."""

    __slots__ = ("name", "type", "input_shape", "output_shape", "params", "macs", "act_bytes")

    def __init__(self, name: str, type_: str, module: nn.Module) -> None:
        self.name = name
        self.type = type_
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.params = sum(p.numel() for p in module.parameters(recurse=False))
        self.macs = 0
        self.act_bytes = 0

    def freeze(self) -> LayerCost:
        return LayerCost(self.name, self.type, self.input_shape or (), self.output_shape or (),
                         self.params, self.macs, self.act_bytes)


class _CostCounter(TorchDispatchMode):
    """Charges each aten op to the innermost module on a stack kept by module hooks."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.root = root
        self.names: dict[int, str] = {}
        for name, module in root.named_modules():
            self.names.setdefault(id(module), name)
        self.stack: list[nn.Module] = []
        self.records: dict[int, _Record] = {}  # insertion order == execution order
        # First-call shapes of every module, for the "(functional)" records of non-leaves.
        self.shapes: dict[int, list[tuple[int, ...] | None]] = {}
        self.handles: list[Any] = []
        # Storages of weights and buffers: what an op reads from them is not activation
        # traffic (views such as a transposed weight share the storage).
        self.weight_storages = {
            t.untyped_storage().data_ptr()
            for t in (*root.parameters(), *root.buffers()) if not t.is_nested
        }

    # -- hooks ---------------------------------------------------------------------------
    def attach(self) -> None:
        if isinstance(self.root, torch.jit.ScriptModule):
            return  # TorchScript modules take no Python hooks: everything goes to the root.
        for module in self.root.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
            self.handles.append(
                module.register_forward_hook(self._exit, with_kwargs=True, always_call=True)
            )

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.stack.clear()

    def _enter(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.stack.append(module)
        inputs = _tensors((args, kwargs))
        shapes = self.shapes.setdefault(id(module), [None, None])
        if shapes[0] is None:
            shapes[0] = _first_shape(inputs)
        if _is_leaf(module):
            rec = self._record(module, leaf=True)
            rec.act_bytes += _nbytes(inputs)

    def _exit(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        # Pop down to this module, also past a child whose exit hook never ran.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is module:
                del self.stack[i:]
                break
        outputs = _tensors(output)
        shapes = self.shapes.setdefault(id(module), [None, None])
        if shapes[1] is None and outputs:
            shapes[1] = _first_shape(outputs)
        rec = self.records.get(id(module))
        if rec is not None:
            if _is_leaf(module):
                rec.act_bytes += _nbytes(outputs)
            rec.input_shape = rec.input_shape or shapes[0]
            rec.output_shape = rec.output_shape or shapes[1]

    def _record(self, module: nn.Module, leaf: bool) -> _Record:
        rec = self.records.get(id(module))
        if rec is None:
            type_ = type(module).__name__ if leaf else FUNCTIONAL
            rec = _Record(self.names.get(id(module), type(module).__name__), type_, module)
            self.records[id(module)] = rec
        return rec

    def _activations(self, tree: Any) -> list[torch.Tensor]:
        return [t for t in _tensors(tree) if t.is_nested
                or t.untyped_storage().data_ptr() not in self.weight_storages]

    # -- ops -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            macs = op_macs(func, args, out)
        except Exception as exc:  # noqa: BLE001 - re-raised with the op named
            raise _CountError(f"cannot count MACs of {func}: {exc}") from exc
        module = self.stack[-1] if self.stack else self.root
        if _is_leaf(module) and not isinstance(module, torch.jit.ScriptModule):
            if macs:
                self._record(module, leaf=True).macs += macs
            return out
        # An op of a non-leaf module's own code: charge MACs and the bytes it moves.
        nbytes = 0 if _is_view(func) else (_nbytes(self._activations((args, kwargs)))
                                               + _nbytes(self._activations(out)))
        if macs or nbytes:
            rec = self._record(module, leaf=False)
            rec.macs += macs
            rec.act_bytes += nbytes
        return out


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _positive_int(value: Any) -> int | None:
    """`value` as an int if it is an integer (numpy ints too, not bool) > 0, else None."""
    if isinstance(value, bool):
        return None
    try:
        n = operator.index(value)
    except TypeError:
        return None
    return n if n > 0 else None


def _validate(input_shape: Any, batch_size: Any) -> tuple[int, ...]:
    dims = [_positive_int(d) for d in input_shape] if isinstance(input_shape, (tuple, list)) \
        else []
    if not dims or None in dims:
        raise UserError(
            f"input shape {input_shape!r} must be positive integers without the batch, "
            "e.g. 3,224,224: pass --input-size C,H,W"
        )
    if _positive_int(batch_size) is None:
        raise UserError(f"batch size {batch_size!r} must be an integer >= 1")
    return tuple(dims)  # type: ignore[arg-type]


def _input_like(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Seeded N(0, 1) input with the dtype and device of the model's first float tensor."""
    dtype, device = torch.float32, torch.device("cpu")
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            dtype, device = t.dtype, t.device
            break
    if device.type == "meta":  # a model built without storage (counting only): shapes, no values
        return torch.empty(shape, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=dtype, device=device)


def analyze(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1
            ) -> ModelAnalysis:
    """Params, MACs and activation bytes per layer of `model` on one forward pass.

    `input_shape` excludes the batch (e.g. (3, 224, 224)); the model sees a tensor of shape
    (batch_size, *input_shape). The model runs in eval mode under no_grad; its train/eval
    flags are restored and every hook removed afterwards, also on error. Raises UserError
    if the forward pass fails at that shape.
    """
    dims = _validate(input_shape, batch_size)
    shape = (operator.index(batch_size), *dims)
    x = _input_like(model, shape)
    modes = [(m, m.training) for m in model.modules()]
    counter = _CostCounter(model)
    try:
        counter.attach()
        model.eval()
        with torch.no_grad(), counter:
            out = model(x)
    except _CountError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model failure becomes a user-facing line
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise UserError(
            f"forward pass on input shape {list(shape)} failed ({text}); "
            "pass --input-size C,H,W with the size the model expects"
        ) from exc
    finally:
        counter.detach()
        for module, training in modes:
            module.training = training

    root = counter.records.get(id(model))
    if root is not None:  # a TorchScript root has no hooks to record its shapes
        root.input_shape = root.input_shape or shape
        root.output_shape = root.output_shape or _first_shape(_tensors(out))
    layers = [rec.freeze() for rec in counter.records.values()]
    return ModelAnalysis(
        layers=layers,
        input_shape=shape,
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(layer.macs for layer in layers),
        total_act_bytes=sum(layer.act_bytes for layer in layers),
    )


__all__ = ["FUNCTIONAL", "SCHEMA", "LayerCost", "ModelAnalysis", "analyze"]
