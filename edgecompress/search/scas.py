"""SCAS: sparse cell architecture search, i.e. DARTS's cell search with gradual magnitude pruning interleaved.

    strategy = build({"final_sparsity": 0.6}, reference=model, input_shape=(1, 28, 28), num_classes=10)
    result = run_gradient_search(strategy, SearchData.halves(train), evaluate, reference=model,
                                 input_shape=(1, 28, 28), epochs=10, out_dir="search")
    child = result.derived          # zoo:darts_net with sparse weights; save_checkpoint(child.model, ...)
    train(child.model, ..., hooks=sparse_finetune_hooks(child.model))   # fine-tune, zeros kept
    twin = dense_twin(child)        # the same genotype without sparsification, for comparison

Method. A DARTS supernet (Liu et al., ICLR 2019) stacks `cells` cells of `nodes`
intermediate nodes; every edge (an earlier state -> a node) is a mixed op, the
softmax(alpha)-weighted sum of all candidate ops, with one alpha matrix (edges x ops)
shared by the normal cells and one by the reduction cells. Each step is first-order
DARTS's alternation: an architecture step (Adam on alpha) on a batch of the
architecture half of the data, then a weight step (SGD with momentum, cosine lr) on a
batch of the weight half. Interleaved with it, the supernet's Conv2d/Linear weights are
pruned by magnitude on Zhu & Gupta's cubic schedule, so the candidate ops compete while
sparse and alpha learns which ops stay useful once most of their weights are gone, rather
than pruning a network searched dense. The derived child keeps, per node, the two incoming
edges whose strongest non-"none" op weighs most, each with that op (DARTS's rule); it is
a `zoo:darts_net` built from the genotype with the supernet's masked weights inherited.
SCAS reports 2-12x fewer parameters and 2-19x fewer MACs than the dense searched
networks at < 1 % accuracy drop.

Pruning schedule (exact). With T = epochs * steps_per_epoch weight steps,
begin = round(prune_begin * T) and end = round(prune_end * T), clamped so that
begin < end <= T - 1 (T >= 2; defaults: the middle half of the search). After weight step t
(0-based, counted over the whole search) the target sparsity is 0 before `begin`, then
`unstructured.sparsity_at(t, initial=initial_sparsity, final=F, begin_step=begin,
end_step=end, frequency=prune_frequency)`: s_f + (s_i - s_f)(1 - (t' - begin)/(end -
begin))^3 at the last pruning step t' <= t, and F from `end` on. Whenever the target
rises, `unstructured.magnitude_masks` recomputes per-tensor masks (masks only grow);
after every weight step the masks are re-applied and, before it, the gradients of pruned
weights are zeroed, so pruned weights stay exactly 0.

Choices, and why:
- Sized for 28x28 Fashion-MNIST on 2 CPU cores: 5 cells (reductions at cells//3 and
  2*cells//3, as DARTS: N R N R N), 3 nodes, C = 8, a stride-1 3x3 stem (DARTS's CIFAR
  stem), 7 candidate ops (DARTS's without dil_conv_5x5, to keep an epoch affordable on
  2 cores; `ops` adds it back). The supernet runs channels-last: PyTorch's CPU depthwise
  convs and pools are 1.6-1.9x faster in it (measured on this search).
- First order: in DARTS's paper second order costs 4 GPU days instead of 1.5 for 2.76 %
  instead of 3.00 % CIFAR-10 error. The architecture step differentiates only alpha
  (autograd.grad), so no weight gradients are computed there.
- "none" is never computed (it adds exactly zero); pools are followed by a non-affine BN
  in the search and all search BNs are non-affine (DARTS), so the child's affine BNs start
  at weight 1, bias 0 and compute what the supernet's did.
- Per-tensor ("layer") masks over every Conv2d/Linear of the supernet: the child inherits
  a subset of those tensors, so its sparsity is the supernet's target and the budget
  arithmetic is exact; a global threshold would make the child's sparsity depend on which
  ops it kept.
- Budgets. "params" / "macs": the final sparsity F is what the derived child needs so its
  nonzero params (or sparse MACs: each conv/linear's MACs times its fraction of nonzero
  weights) meet the limit, recomputed from the current child at every pruning step and at
  the end of every epoch (the genotype moves while alpha trains; masks only grow), with
  half an element per tensor of slack for the per-tensor rounding, capped at
  `max_sparsity`. A limit the first child cannot meet even at `max_sparsity` is a
  UserError naming the figures; later children that would need more are pruned to the cap
  and the log marks them infeasible. "latency" is refused: dense runtimes (LiteRT/XNNPACK,
  ONNX Runtime) do not get faster from unstructured zeros, so sparsity cannot buy latency.
- Costs: the log's params/MACs are the child's nonzero params and sparse MACs (through
  `Derived.params/macs`); its arch holds dense and sparse figures side by side.
- Resume: weights, alpha, masks, both optimizers and the sparsity state are saved after
  every epoch; the lr and the schedule are functions of the step, so a resumed search
  with the same `epochs` ends exactly as an uninterrupted one (another `epochs` re-times
  both schedules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError, check_keys
from edgecompress.models.darts import (OPS, PRIMITIVES, CellFeatures, DartsNet, darts_net, preprocess,
                                       reduction_layers, stem)
from edgecompress.prune.unstructured import (PRUNABLE_TYPES, GMPConfig, GradualMagnitudePruner, magnitude_masks,
                                             prunable_weights, sparsity_at, sparsity_report)
from edgecompress.search.gradient import Budget, Derived, GradientStrategy, SearchData, check_finite
from edgecompress.train.hooks import TrainHook

#: candidate ops by default: DARTS's without dil_conv_5x5
DEFAULT_OPS = tuple(op for op in PRIMITIVES if op != "dil_conv_5x5")
#: final sparsity of a search without a params/macs budget
DEFAULT_FINAL_SPARSITY = 0.6
CHILD_SPEC = "zoo:darts_net"


@dataclass(frozen=True)
class SCASConfig:
    """SCAS's settings (DARTS's where the paper states them).

    cells, nodes, C, stem_multiplier: the supernet (and child): cells, intermediate nodes
        per cell, channels of the first cells (doubled at each reduction), stem width / C.
    ops: candidate ops of every edge (names of `edgecompress.models.darts.OPS`).
    lr, lr_min, momentum, weight_decay, grad_clip: SGD on the weights, lr cosine from lr
        to lr_min over the search (per step), gradient norm clipped to grad_clip.
    arch_lr, arch_betas, arch_weight_decay, alpha_std: Adam on alpha (initialised
        N(0, alpha_std^2)).
    initial_sparsity, final_sparsity: the pruning schedule's ends (fractions of zeros per
        Conv2d/Linear weight tensor); final_sparsity None = 0.6 without a budget, set by
        the budget with one (giving both is an error).
    max_sparsity: the most a budget may ask for.
    prune_begin, prune_end: where the ramp starts and ends, as fractions of the search's
        weight steps; prune_frequency: weight steps between mask updates.
    """

    cells: int = 5
    nodes: int = 3
    C: int = 8
    stem_multiplier: int = 3
    ops: tuple[str, ...] = DEFAULT_OPS
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    alpha_std: float = 1e-3
    initial_sparsity: float = 0.0
    final_sparsity: float | None = None
    max_sparsity: float = 0.95
    prune_begin: float = 0.25
    prune_end: float = 0.75
    prune_frequency: int = 10

    def __post_init__(self) -> None:
        ops = (self.ops,) if isinstance(self.ops, str) else tuple(self.ops)
        object.__setattr__(self, "ops", ops)
        unknown = [op for op in ops if op not in OPS]
        if unknown or len(set(ops)) != len(ops) or not [op for op in ops if op != "none"]:
            raise ValueError(f"ops = {list(ops)} must be distinct names from {', '.join(PRIMITIVES)}, "
                             "at least one of them not 'none'")
        for name in ("cells", "nodes", "C", "stem_multiplier", "prune_frequency"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name} = {v!r} must be an integer >= 1")
        for name in ("lr", "arch_lr", "grad_clip"):
            if not (_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} = {getattr(self, name)!r} must be a finite number > 0")
        for name in ("weight_decay", "arch_weight_decay", "alpha_std"):
            if not (_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} = {getattr(self, name)!r} must be a finite number >= 0")
        if not (_number(self.lr_min) and 0 <= self.lr_min <= self.lr):
            raise ValueError(f"lr_min = {self.lr_min!r} must be a number in [0, lr = {self.lr}]")
        if not (_number(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum = {self.momentum!r} must be a number in [0, 1)")
        betas = tuple(self.arch_betas) if isinstance(self.arch_betas, Sequence) else ()
        if len(betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"arch_betas = {self.arch_betas!r} must be two numbers in [0, 1)")
        object.__setattr__(self, "arch_betas", tuple(float(b) for b in betas))
        if not (_number(self.max_sparsity) and 0 < self.max_sparsity < 1):
            raise ValueError(f"max_sparsity = {self.max_sparsity!r} must be a number in (0, 1)")
        if not (_number(self.initial_sparsity) and 0 <= self.initial_sparsity <= self.max_sparsity):
            raise ValueError(f"initial_sparsity = {self.initial_sparsity!r} must be a number in "
                             f"[0, max_sparsity = {self.max_sparsity}]")
        final = self.final_sparsity
        if final is not None and not (_number(final) and self.initial_sparsity <= final <= self.max_sparsity):
            raise ValueError(f"final_sparsity = {final!r} must be a number in [initial_sparsity = "
                             f"{self.initial_sparsity}, max_sparsity = {self.max_sparsity}] (or None)")
        if not (_number(self.prune_begin) and _number(self.prune_end) and 0 <= self.prune_begin < self.prune_end <= 1):
            raise ValueError(f"prune_begin = {self.prune_begin!r}, prune_end = {self.prune_end!r} must be "
                             "fractions of the search with 0 <= prune_begin < prune_end <= 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"], d["arch_betas"] = list(self.ops), list(self.arch_betas)
        return d


def build(options: Mapping[str, Any], *, reference: nn.Module, input_shape: tuple[int, int, int],
          num_classes: int | None = None, latency_source: Any = None, seed: int = 0) -> SCASStrategy:
    """An SCAS search with `options` (SCASConfig fields); UserError for bad ones.

    The searched network replaces `reference`: it takes `input_shape` (C, H, W) and has
    `num_classes` outputs (default: the reference's). `latency_source` is not used (a
    latency budget is refused at setup), `seed` neither (the loop seeds torch)."""
    try:
        check_keys("SCAS option", options, [f.name for f in fields(SCASConfig)])
        config = SCASConfig(**dict(options))
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc) if str(exc).startswith("unknown") else f"SCAS option: {exc}") from None
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(reference.eval()(torch.zeros(1, *input_shape)).shape[-1])
    return SCASStrategy(config, input_shape=tuple(input_shape), num_classes=num_classes)


# --- the supernet ---------------------------------------------------------------------


class MixedOp(nn.Module):
    """One edge of the search: sum_k w_k * op_k(x) over the candidate ops ("none" adds 0 and is skipped)."""

    def __init__(self, c: int, stride: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(_search_op(op, c, stride) for op in ops)
        self.live = [k for k, op in enumerate(ops) if op != "none"]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(weights[k] * self.ops[k](x) for k in self.live)  # type: ignore[return-value]


def _search_op(op: str, c: int, stride: int) -> nn.Module:
    module = OPS[op](c, stride, False)
    if "pool" in op:  # DARTS: pools get a BN in the search, so their scale matches the convs'
        return nn.Sequential(module, nn.BatchNorm2d(c, affine=False))
    return module


def edge_offsets(nodes: int) -> list[int]:
    """Index of the first incoming edge of each node: node n has n + 2 inputs."""
    return [2 * n + n * (n - 1) // 2 for n in range(nodes)]


class SearchCell(nn.Module):
    """A cell whose every edge is a MixedOp; output = concat of its intermediate nodes."""

    def __init__(self, nodes: int, ops: Sequence[str], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0, self.preprocess1 = preprocess(c_pp, c_p, c, reduction_prev, affine=False)
        self.edges = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1, ops)
                                   for n in range(nodes) for j in range(n + 2))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for first in edge_offsets(self.nodes):
            states.append(sum(self.edges[first + j](h, weights[first + j]) for j, h in enumerate(states)))
        return torch.cat(states[2:], dim=1)


class SearchFeatures(CellFeatures):
    """stem -> search cells, each given the edge weights of its kind (normal or reduction)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, w_normal: torch.Tensor, w_reduce: torch.Tensor
    ) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return s1


class SuperNet(nn.Module):
    """The DARTS search network. Module names match `DartsNet`'s except the edges
    (features.cells.i.edges.e.ops.k here, features.cells.i.ops.q in the child), so weights
    are inherited by name. `alphas_normal`/`alphas_reduce` (edges x ops) are parameters too;
    `weight_parameters()` are the others."""

    def __init__(self, cfg: SCASConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        c_stem = cfg.stem_multiplier * cfg.C
        c_pp, c_p, c = c_stem, c_stem, cfg.C
        cells, reduction_prev = [], False
        for i in range(cfg.cells):
            reduction = i in reduction_layers(cfg.cells)
            c = c * 2 if reduction else c
            cells.append(SearchCell(cfg.nodes, cfg.ops, c_pp, c_p, c, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, cfg.nodes * c, reduction
        self.features = SearchFeatures(stem(in_channels, c_stem), nn.ModuleList(cells))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(c_p, num_classes)
        edges = sum(n + 2 for n in range(cfg.nodes))
        self.alphas_normal = nn.Parameter(cfg.alpha_std * torch.randn(edges, len(cfg.ops)))
        self.alphas_reduce = nn.Parameter(cfg.alpha_std * torch.randn(edges, len(cfg.ops)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal, w_reduce = F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)
        return self.classifier(self.flatten(self.pool(self.features(x, w_normal, w_reduce))))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("alphas_")]


# --- genotype and child ----------------------------------------------------------------


def derive_cell(weights: torch.Tensor, ops: Sequence[str], nodes: int) -> list[list[list[Any]]]:
    """DARTS's discretisation of one cell: for each node the two incoming edges whose
    strongest non-"none" op weighs most (ties: the lower input), strongest first, each
    as [op, input] with that op (ties: the earlier op). `weights`: softmax(alpha), edges x ops."""
    live = [k for k, op in enumerate(ops) if op != "none"]
    cell = []
    for n, first in enumerate(edge_offsets(nodes)):
        w = weights[first: first + n + 2].detach()
        strength = [max(float(w[j, k]) for k in live) for j in range(n + 2)]
        edges = sorted(range(n + 2), key=lambda j: -strength[j])[:2]
        cell.append([[ops[max(live, key=lambda k: float(w[j, k]))], j] for j in edges])
    return cell


def sparse_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Dense and sparse figures of `model`: dense_params (all parameters), nonzero_params
    (minus the exact zeros of Conv2d/Linear weights), dense_macs, sparse_macs (each
    conv/linear's MACs times its fraction of nonzero weights, other MACs as they are),
    sparsity (zeros / elements over the Conv2d/Linear weights)."""
    from edgecompress.graph.cost import analyze

    report = analyze(model, tuple(input_shape))
    modules = dict(model.named_modules())
    sparse_macs = 0.0
    for layer in report.layers:
        module = modules.get(layer.name)
        if isinstance(module, PRUNABLE_TYPES):
            weight = module.weight.detach()
            sparse_macs += layer.macs * int(torch.count_nonzero(weight)) / weight.numel()
        else:
            sparse_macs += layer.macs
    zeros = sparsity_report(model)
    return {"dense_params": int(report.total_params), "nonzero_params": int(report.total_params - zeros.zeros),
            "dense_macs": int(report.total_macs), "sparse_macs": int(round(sparse_macs)),
            "sparsity": round(zeros.sparsity, 6)}


def _inherit(child: DartsNet, net: SuperNet, genotype: Mapping[str, Any], ops: Sequence[str], nodes: int) -> None:
    """Copy the supernet's weights and BN statistics into the child, by name (see SuperNet)."""
    source = net.state_dict()
    offsets = edge_offsets(nodes)
    batchnorms = {name for name, m in child.named_modules() if isinstance(m, nn.BatchNorm2d)}
    state = child.state_dict()
    for key in state:
        parts = key.split(".")
        src = key
        if parts[:2] == ["features", "cells"] and parts[3] == "ops":
            cell, q = int(parts[2]), int(parts[4])
            kind = "reduce" if child.features.cells[cell].reduction else "normal"
            op, j = genotype[kind][q // 2][q % 2]
            src = ".".join(["features", "cells", parts[2], "edges", str(offsets[q // 2] + j), "ops",
                            str(ops.index(op)), *parts[5:]])
        if src in source:
            state[key] = source[src]
        elif not (key.rsplit(".", 1)[0] in batchnorms and parts[-1] in ("weight", "bias")):
            raise RuntimeError(f"child weight {key!r} has no supernet counterpart {src!r}")  # a bug here
        # else: an affine BN parameter whose supernet BN is non-affine: it stays 1 / 0
    child.load_state_dict(state)


# --- the strategy ---------------------------------------------------------------------


class SCASStrategy(GradientStrategy):
    """DARTS first-order cell search with interleaved gradual magnitude pruning (module docstring)."""

    name = "scas"

    def __init__(self, config: SCASConfig | None = None, *, input_shape: tuple[int, int, int],
                 num_classes: int) -> None:
        self.cfg = config or SCASConfig()
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.budget: Budget | None = None
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0  # the target the current masks were computed for
        self.final = DEFAULT_FINAL_SPARSITY
        self.capped = False  # a budget asked for more than max_sparsity

    # -- GradientStrategy ------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.cfg.to_dict(), "num_classes": self.num_classes}

    def setup(self, data: SearchData, budget: Budget | None) -> None:
        cfg = self.cfg
        if budget is not None and budget.metric == "latency":
            raise UserError(f"SCAS cannot search for a latency budget ({budget.limit:.4g} ms): its pruning is "
                            "unstructured and dense runtimes (LiteRT/XNNPACK, ONNX Runtime) do not get faster "
                            "from zeros; use a params or macs budget, or a structured search (amc, tas)")
        if budget is not None and cfg.final_sparsity is not None:
            raise UserError(f"final_sparsity = {cfg.final_sparsity} and the budget {budget.metric} <= "
                            f"{budget.limit:,.0f} both fix the final sparsity; drop one of them")
        self._build(data)
        self.budget = budget
        if budget is None:
            self.final = DEFAULT_FINAL_SPARSITY if cfg.final_sparsity is None else float(cfg.final_sparsity)
        else:
            self.final = self._budget_sparsity(strict=True)

    def steps_per_epoch(self) -> int:
        return self._steps

    def train_epoch(self, epoch: int, epochs: int, tick: Callable[[int, str], None]) -> dict[str, float]:
        steps = self._steps
        total = epochs * steps
        self.net.train()
        arch_batches, weight_batches = iter(self.data.loader("arch", epoch)), iter(self.data.loader("weights", epoch))
        sums = {"loss": 0.0, "arch_loss": 0.0}
        lr = self.cfg.lr
        for i in range(steps):
            step = epoch * steps + i
            xa, ya = next(arch_batches)
            xw, yw = next(weight_batches)
            sums["arch_loss"] += self._arch_step(xa, ya, epoch, i)
            lr = self._lr(step, total)
            sums["loss"] += self._weight_step(xw, yw, lr, epoch, i)
            self._prune(step, total, end_of_epoch=i == steps - 1)
            tick(i + 1, f"loss {sums['loss'] / (i + 1):.3f} sparsity {self.sparsity:.2f}")
        return {"loss": sums["loss"] / steps, "arch_loss": sums["arch_loss"] / steps, "lr": lr,
                "sparsity": self.sparsity, "final_sparsity": self.final}

    def derive(self) -> Derived:
        genotype = self.genotype()
        child = self._child(genotype)
        costs = sparse_costs(child, self.input_shape)
        alphas = {kind: [[round(float(v), 4) for v in row] for row in F.softmax(a.detach(), dim=-1)]
                  for kind, a in (("normal", self.net.alphas_normal), ("reduce", self.net.alphas_reduce))}
        arch = {"genotype": genotype, "ops": list(self.cfg.ops), "alphas": alphas, **costs,
                "target_sparsity": round(self.sparsity, 6), "final_sparsity": round(self.final, 6)}
        if self.budget is not None:
            arch["sparsity_capped"] = self.capped
        return Derived(child.eval(), arch, spec=CHILD_SPEC, kwargs=self._child_kwargs(genotype),
                       macs=costs["sparse_macs"], params=costs["nonzero_params"])

    def state_dict(self) -> dict[str, Any]:
        budget = None if self.budget is None else [self.budget.metric, self.budget.limit, self.budget.reference]
        return {"net": self.net.state_dict(), "weight_opt": self.w_opt.state_dict(),
                "arch_opt": self.a_opt.state_dict(), "masks": {k: v.clone() for k, v in self.masks.items()},
                "sparsity": self.sparsity, "final": self.final, "capped": self.capped, "budget": budget}

    def load_state_dict(self, state: dict[str, Any], data: SearchData) -> None:
        self._build(data)
        self.net.load_state_dict(state["net"])
        self.w_opt.load_state_dict(state["weight_opt"])
        self.a_opt.load_state_dict(state["arch_opt"])
        self.masks = {k: v.to(torch.bool) for k, v in state["masks"].items()}
        self.sparsity, self.final, self.capped = float(state["sparsity"]), float(state["final"]), bool(state["capped"])
        self.budget = None if state["budget"] is None else Budget(*state["budget"])

    # -- the search ------------------------------------------------------------------------

    def genotype(self) -> dict[str, list[list[list[Any]]]]:
        """The current DARTS genotype (see derive_cell) of the normal and reduction cells."""
        cfg = self.cfg
        return {"normal": derive_cell(F.softmax(self.net.alphas_normal, dim=-1), cfg.ops, cfg.nodes),
                "reduce": derive_cell(F.softmax(self.net.alphas_reduce, dim=-1), cfg.ops, cfg.nodes)}

    def schedule(self, total: int) -> tuple[int, int]:
        """(begin, end) weight steps of the pruning ramp in a search of `total` weight steps."""
        end = max(1, min(math.floor(self.cfg.prune_end * total + 0.5), total - 1))
        return min(math.floor(self.cfg.prune_begin * total + 0.5), end - 1), end

    def _build(self, data: SearchData) -> None:
        cfg = self.cfg
        self.data = data
        n, m = len(data.loader("weights", 0)), len(data.loader("arch", 0))
        if n == 0 or m == 0:
            raise UserError(f"the search data gives {n} weight and {m} architecture batches: use more images "
                            "or a smaller batch size")
        self._steps = min(n, m)
        # channels-last: PyTorch's CPU depthwise convs and pools run 1.6-1.9x faster in it
        self.net = SuperNet(cfg, self.input_shape[0], self.num_classes).to(memory_format=torch.channels_last)
        self._prunable = prunable_weights(self.net)
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas,
                                      weight_decay=cfg.arch_weight_decay)

    def _lr(self, step: int, total: int) -> float:
        cfg = self.cfg
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / total))

    def _arch_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, i: int) -> float:
        loss = F.cross_entropy(self.net(x.contiguous(memory_format=torch.channels_last)), y)
        check_finite("architecture", loss, epoch, i)
        alphas = self.net.arch_parameters()
        # only alpha is differentiated: no weight gradients are computed for an arch step
        for alpha, grad in zip(alphas, torch.autograd.grad(loss, alphas, allow_unused=True)):
            alpha.grad = torch.zeros_like(alpha) if grad is None else grad  # no normal cell: alphas_normal unused
        self.a_opt.step()
        return float(loss.detach())

    def _weight_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, epoch: int, i: int) -> float:
        params = self.net.weight_parameters()
        self.w_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(x.contiguous(memory_format=torch.channels_last)), y)
        check_finite("weight", loss, epoch, i)
        loss.backward(inputs=params)
        for name, mask in self.masks.items():
            grad = self._prunable[name].grad
            if grad is not None:
                grad.mul_(mask)
        nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        for group in self.w_opt.param_groups:
            group["lr"] = lr
        self.w_opt.step()
        return float(loss.detach())

    def _prune(self, step: int, total: int, *, end_of_epoch: bool) -> None:
        """Raise the masks to the schedule's target after weight `step`, then re-apply them."""
        cfg = self.cfg
        begin, end = self.schedule(total)
        if step < begin:
            return
        if self.budget is not None and ((step - begin) % cfg.prune_frequency == 0 or end_of_epoch):
            self.final = self._budget_sparsity(strict=False)
        target = sparsity_at(step, initial=cfg.initial_sparsity, final=self.final, begin_step=begin, end_step=end,
                             frequency=cfg.prune_frequency)
        with torch.no_grad():
            if target > self.sparsity:
                self._apply_masks()  # rank what the forward pass saw
                self.masks = magnitude_masks(self._prunable, target, "layer", previous=self.masks)
                self.sparsity = target
            self._apply_masks()

    def _apply_masks(self) -> None:
        for name, mask in self.masks.items():
            self._prunable[name].mul_(mask)

    def _budget_sparsity(self, *, strict: bool) -> float:
        """The final sparsity the current child needs to meet the budget (module docstring)."""
        from edgecompress.graph.cost import analyze

        budget, cfg = self.budget, self.cfg
        assert budget is not None
        child = self._child(self.genotype())
        weights = prunable_weights(child)
        if budget.metric == "params":
            dense = sum(p.numel() for p in child.parameters())
            prunable = sum(w.numel() for w in weights.values())
            slack = 0.5 * len(weights)  # each tensor's zero count is rounded to the nearest element
        else:
            report = analyze(child, self.input_shape)
            modules = dict(child.named_modules())
            dense, prunable, slack = report.total_macs, 0.0, 0.0
            for layer in report.layers:
                module = modules.get(layer.name)
                if isinstance(module, PRUNABLE_TYPES):
                    prunable += layer.macs
                    slack += 0.5 * layer.macs / module.weight.numel()
        needed = max(0.0, (dense - budget.limit + slack) / prunable)
        self.capped = needed > cfg.max_sparsity
        if self.capped and strict:
            floor = dense - cfg.max_sparsity * prunable
            raise UserError(
                f"the budget {budget.metric} <= {budget.limit:,.0f} is out of reach: the derived network has "
                f"{dense:,.0f} {budget.metric} ({prunable:,.0f} of them in prunable Conv2d/Linear weights) and needs "
                f"sparsity {needed:.3f}, above max_sparsity = {cfg.max_sparsity} (which leaves {floor:,.0f}); "
                "raise the budget, or make the network smaller (options C, cells, nodes)")
        return max(cfg.initial_sparsity, min(needed, cfg.max_sparsity))

    def _child_kwargs(self, genotype: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {"genotype": dict(genotype), "C": cfg.C, "layers": cfg.cells, "num_classes": self.num_classes,
                "in_channels": self.input_shape[0], "input_size": self.input_shape[1],
                "stem_multiplier": cfg.stem_multiplier}

    def _child(self, genotype: Mapping[str, Any]) -> DartsNet:
        with torch.random.fork_rng(devices=[]):  # building the child must not move the search's RNG
            child = darts_net(**self._child_kwargs(genotype))
        _inherit(child, self.net, genotype, self.cfg.ops, self.cfg.nodes)
        return child


# --- after the search -------------------------------------------------------------------


def sparse_finetune_hooks(model: nn.Module) -> list[TrainHook]:
    """Hooks for `train(model, ..., hooks=...)` that keep `model`'s zeros: the engine's
    GradualMagnitudePruner with masks = the current nonzeros of every Conv2d/Linear weight
    and the sparsity fixed (initial = final), so it never re-ranks; it zeroes the gradients
    of pruned weights after backward and re-applies the masks after every step."""
    weights = prunable_weights(model)
    if not weights:
        raise UserError("the model has no Conv2d/Linear weights to keep sparse")
    sparsity = sparsity_report(model).sparsity
    config = GMPConfig(final_sparsity=sparsity, initial_sparsity=sparsity, begin_step=0, end_step=1, frequency=1)
    hook = GradualMagnitudePruner(model, config)
    hook.load_state_dict({"masks": {n: w.detach() != 0 for n, w in weights.items()}, "sparsity": sparsity,
                          "last_update_step": None, "config": config.to_dict()})
    return [hook]


def dense_twin(derived: Derived) -> Derived:
    """The searched architecture without sparsification: the same genotype (`zoo:darts_net`,
    same kwargs) with the sparse child's weights copied but no masks, so fine-tuning it
    without hooks lets its zeros grow back into a dense network.

    Why not the weights "before masking": gradual pruning keeps pruned weights at zero from
    the step they were masked, so their last values are snapshots the rest of the network
    stopped relying on; keeping them would double the pruned state in every checkpoint for
    a starting point no better than zero. For a dense network trained from scratch instead,
    build `create_model("darts_net", **derived.kwargs)`.
    """
    if derived.spec != CHILD_SPEC:
        raise UserError(f"dense_twin takes an SCAS child ({CHILD_SPEC}), got {derived.spec!r}")
    twin = darts_net(**derived.kwargs)
    twin.load_state_dict(derived.model.state_dict())
    arch = {"genotype": derived.arch["genotype"], "dense_params": derived.arch["dense_params"],
            "dense_macs": derived.arch["dense_macs"], "twin_of": "scas"}
    return Derived(twin.eval(), arch, spec=CHILD_SPEC, kwargs=dict(derived.kwargs),
                   macs=derived.arch["dense_macs"], params=derived.arch["dense_params"])


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
