"""SNAS: stochastic block search over a MobileNet/ShuffleNet supernet, with a resource penalty.

    strategy = build({"space": "mobile", "penalty_weight": 1.0}, reference=model, input_shape=(1, 28, 28),
                     num_classes=10, latency_source=source, seed=0)
    result = run_gradient_search(strategy, data, evaluate, reference=model, input_shape=(1, 28, 28),
                                 budget="latency=0.6", latency_source=source, epochs=10)

The method (Xie, Zheng, Liu, Lin: "SNAS: Stochastic Neural Architecture Search", ICLR 2019)
----------------------------------------------------------------------------------------
The architecture is a set of one-hot variables Z (here: one per block, over the block's
candidates), drawn from a factorised distribution p_alpha(Z) = prod_b softmax(alpha_b).
SNAS trains the distribution and the network weights together on one objective,
E_{Z ~ p_alpha}[L(Z)], by relaxing Z to the concrete (Gumbel-softmax) distribution: each
step draws one sample z_b = softmax((alpha_b + g) / tau) per block, the block's output is
the z-weighted sum of its candidates' outputs, and one backward pass gives the gradients
of both the weights and alpha (the paper shows this search gradient is a policy gradient
whose credit is assigned per decision). Unlike DARTS there is no bilevel problem and no
held-out split for alpha: both are updated on the same training batches (here the
`weights` half of SearchData; its `arch` half is unused). As tau is annealed towards 0
the samples become one-hot, so the network trained at the end is the child that is
derived (argmax of alpha per block), with its weights inherited: no retraining is needed
to read its accuracy. The authors' released search ran 150 epochs with tau from 1 to
0.03, one sample per step, a resource penalty on the log of the cost (weight 1e-2 there).

Resources. SNAS penalises a cost C(Z) that is linear in Z: per decision, the parameters,
FLOPs or memory access cost of the operation chosen. Its expectation is therefore exact
and cheap, E[C] = fixed + sum_b sum_c p_bc cost_bc with p = softmax(alpha), and is
differentiated directly: computed, not estimated from samples, so its gradient has no
variance. The table cost[block][choice] holds, per candidate built standalone at its
input shape (graph/cost.py `analyze`):
- "macs": multiply-accumulates; "params": parameters;
- "memory": bytes of activations read and written plus weight bytes (the memory access
  cost of ShuffleNetV2, what bounds depthwise convs on phones);
- "latency": ms. With `lut` (a per-op table of the device), the sum of the block's
  kernels' lookups (latency/predictor.py `decompose`); without, each candidate timed
  standalone through the latency source (measured on the device, cached by the latency
  cache). Single-block times do not add up to a network's (each pays one invocation; the
  runtime fuses across blocks), so the table sums are calibrated on whole children
  timed by the latency source (all-fastest, all-slowest, one random): ms = a * sum + b,
  least squares with a > 0. The calibrated expectation is what the budget (ms measured
  on the device) is compared with; the fit is kept in the state and the arch.
The stem and head are in `fixed`; `skip` costs 0.

Loss = cross-entropy + lambda * cost_loss(E[C] / reference, budget fraction, tolerance)
with a budget (gumbel.py: log E above the band, -log E below, 0 inside; the budget's
metric is the penalty's), or lambda * E[C] / reference without one (reference: the model
being replaced). Weights: SGD with momentum, cosine-annealed learning rate, gradients
clipped at norm 5 (as DARTS and SNAS); alpha: Adam (betas 0.5, 0.999, as DARTS), from 0
(uniform). tau follows `Temperature` per step over the whole search.

Choices made
- `hard=False` (default) is the paper's soft relaxation: every candidate runs every step.
  `hard=True` uses the straight-through one-hot sample and runs only the sampled
  candidate per block (about as fast as training one child); alpha then learns only
  through the sampled candidate's weight (as GDAS), a biased but much cheaper gradient.
  Measured on the bundled space (1 torch thread, batch 128, this 2-core host while
  shared): soft 7.8-8.7 s per step (300-340 s per 5000 images), hard 0.4-0.64 s (16-25 s).
- The supernet trains in channels-last layout: depthwise convs, most of the time, ran
  3-4x faster so on this CPU (a 7x7 depthwise conv over 480 channels at 4x4 px, batch
  128, forward and backward: 123 ms NCHW, 35 ms NHWC); a whole soft step about 15%.
- Defaults for searches of a few hundred steps, not the paper's 150 epochs (measured on
  Fashion-MNIST, 6-choice space, soft, 3 epochs of 39 steps, budget macs=0.3): tau starts
  at 5, not 1. Near tau = 1 the samples are so far from each other that the shared
  weights barely learn (cross-entropy still 2.0 after 25 steps at tau 1, 2.34 at tau 0.1;
  1.04 at tau 5, where a sample is close to the uniform mixture); annealing to 0.03 still
  ends on one-hot samples. arch_lr 0.05 (Adam) lets the distribution converge within the
  search: with 0.01 the derived child scored 30% (inherited weights, BN re-estimated)
  and used a third of the MACs the expectation said, with 0.05 59% and two thirds.
- One decision per block, not per cell edge: the space (search/spaces) is a chain of
  mobile blocks, which is what phones run well; `skip` makes depth a decision.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError, check_keys
from edgecompress.search.gradient import Budget, Derived, GradientStrategy, SearchData, check_finite
from edgecompress.search.gumbel import SCHEDULES, Temperature, cost_loss, gumbel_softmax
from edgecompress.search.spaces import MobileSpace, load_space

PENALTIES = ("macs", "params", "memory", "latency")
#: gradient norm clip of the weights (DARTS and SNAS use 5)
GRAD_CLIP = 5.0
#: digits kept of the probabilities written to the arch
_DIGITS = 4


@dataclass(frozen=True)
class SNASConfig:
    """SNAS settings (see the module docstring).

    space: a bundled space name or a YAML path. lr / momentum / weight_decay: SGD of the
    weights (lr cosine-annealed to 0 over the search). arch_lr: Adam of the architecture
    logits; Adam moves a logit by about arch_lr per step at most, so the default is sized
    for searches of a few hundred steps (DARTS' 3e-4 is for some 20,000). tau_start /
    tau_end / tau_schedule: the Gumbel-softmax temperature over all steps. penalty: the
    resource ("macs", "params", "memory" bytes, "latency" ms); None follows the budget
    (macs without one). penalty_weight: lambda. tolerance: the band around the budget
    with no penalty (fraction). hard: straight-through one-hot samples, only the sampled
    candidates run. lut: path of a lut.json for the latency table.
    """

    space: str = "mobile"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 0.05
    tau_start: float = 5.0
    tau_end: float = 0.03
    tau_schedule: str = "exp"
    penalty: str | None = None
    penalty_weight: float = 1.0
    tolerance: float = 0.05
    hard: bool = False
    lut: str | None = None

    def __post_init__(self) -> None:
        for names, low, strict in ((("lr", "arch_lr", "tau_start", "tau_end"), "> 0", True),
                                   (("momentum", "weight_decay", "penalty_weight"), ">= 0", False)):
            for name in names:
                value = getattr(self, name)
                number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if not number or value < 0 or (strict and value == 0):
                    raise ValueError(f"SNASConfig.{name} = {value!r} must be a finite number {low}")
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise ValueError(f"SNASConfig.tolerance = {self.tolerance!r} must be in [0, 1)")
        if self.tau_schedule not in SCHEDULES:
            raise ValueError(f"SNASConfig.tau_schedule = {self.tau_schedule!r} must be one of {', '.join(SCHEDULES)}")
        if self.penalty is not None and self.penalty not in PENALTIES:
            raise ValueError(f"SNASConfig.penalty = {self.penalty!r} must be one of {', '.join(PENALTIES)}")
        if not isinstance(self.hard, bool):
            raise ValueError(f"SNASConfig.hard = {self.hard!r} must be true or false")
        if not isinstance(self.space, str) or (self.lut is not None and not isinstance(self.lut, str)):
            raise ValueError("SNASConfig.space and SNASConfig.lut must be text (a name or a path)")

    @property
    def temperature(self) -> Temperature:
        return Temperature(float(self.tau_start), float(self.tau_end), self.tau_schedule)


def build(options: Mapping[str, Any], *, reference: nn.Module, input_shape: Sequence[int], num_classes: int,
          latency_source: Any = None, seed: int = 0) -> SNASStrategy:
    """An SNASStrategy from `options` (SNASConfig fields; UserError for unknown ones, with a
    did-you-mean). The child's input shape (C, H, W with H = W) and classes are those of
    `reference`, the model the search replaces and its budget is a fraction of."""
    values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    try:
        check_keys("SNAS option", values, [f.name for f in fields(SNASConfig)])
        config = SNASConfig(**values)
    except ValueError as exc:
        raise UserError(f"snas: {exc}") from None
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[1] != shape[2] or min(shape) < 1:
        raise UserError(f"snas: input shape {list(input_shape)} must be C,H,W with square images (H = W)")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise UserError(f"snas: num_classes = {num_classes!r} must be an integer >= 1")
    lut = None
    if config.lut is not None:
        from edgecompress.latency.lut import LatencyLUT

        lut = LatencyLUT.load(config.lut)
    return SNASStrategy(config, load_space(config.space), reference=reference, input_shape=shape,
                        num_classes=num_classes, latency_source=latency_source, lut=lut, seed=seed)


# -- the supernet -------------------------------------------------------------------------


class MixedBlock(nn.Module):
    """A block's candidates; the output is the weight-summed candidates' outputs."""

    def __init__(self, ops: Mapping[str, nn.Module], index: Sequence[int]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)
        self.index = list(index)  # position of each op in the space's choice list

    def forward(self, x: torch.Tensor, weights: torch.Tensor, only_nonzero: bool = False) -> torch.Tensor:
        out = None
        for i, op in zip(self.index, self.ops.values()):
            if only_nonzero and not bool(weights[i] != 0):
                continue
            term = weights[i] * op(x)
            out = term if out is None else out + term
        return out


class SuperNet(nn.Module):
    """Stem, one MixedBlock per block of the space, head and classifier (the child's layers,
    built by the same functions, so weights copy over by module)."""

    def __init__(self, space: MobileSpace, in_channels: int, num_classes: int) -> None:
        super().__init__()
        from edgecompress.models.blocks import init_weights
        from edgecompress.models.searched import build_choice, head_layer, stem_layer

        self.stem = stem_layer(space, in_channels)
        blocks = []
        for slot in space.blocks():
            names = space.allowed(slot)
            ops = {n: build_choice(n, slot.cin, slot.cout, slot.stride) for n in names}
            blocks.append(MixedBlock(ops, [space.choices.index(n) for n in names]))
        self.blocks = nn.ModuleList(blocks)
        self.head = head_layer(space)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(space.head_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, only_nonzero: bool = False) -> torch.Tensor:
        """`weights` (blocks, choices): the candidates' weights per block (rows of a sample)."""
        x = self.stem(x)
        for b, block in enumerate(self.blocks):
            x = block(x, weights[b], only_nonzero)
        return self.classifier(self.flatten(self.pool(self.head(x))))


# -- the strategy -------------------------------------------------------------------------


class SNASStrategy(GradientStrategy):
    """SNAS over a MobileSpace (see the module docstring); built by `build`."""

    name = "snas"

    def __init__(self, config: SNASConfig, space: MobileSpace, *, reference: nn.Module,
                 input_shape: tuple[int, int, int], num_classes: int, latency_source: Any, lut: Any,
                 seed: int) -> None:
        self.cfg, self.space = config, space
        self.reference, self.input_shape, self.num_classes = reference, input_shape, num_classes
        self.latency_source, self.lut, self.seed = latency_source, lut, seed
        self.slots = space.blocks()
        # Built from the seed alone, so a fresh start and a resume start from the same net.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = SuperNet(space, input_shape[0], num_classes)
        self.net.to(memory_format=torch.channels_last)  # faster depthwise convs (module docstring)
        self.allowed = torch.zeros(len(self.slots), len(space.choices), dtype=torch.bool)
        for slot in self.slots:
            for name in space.allowed(slot):
                self.allowed[slot.index, space.choices.index(name)] = True
        self.logits = nn.Parameter(torch.zeros(len(self.slots), len(space.choices)))
        self.w_opt = torch.optim.SGD(self.net.parameters(), lr=config.lr, momentum=config.momentum,
                                     weight_decay=config.weight_decay)
        self.a_opt = torch.optim.Adam([self.logits], lr=config.arch_lr, betas=(0.5, 0.999))
        self.step = 0
        self.data: SearchData | None = None
        self.metric = "macs"
        self.table = torch.zeros(len(self.slots), len(space.choices), dtype=torch.float64)
        self.fixed = 0.0
        self.reference_cost = 1.0
        self.target: float | None = None
        self.calibration: dict[str, Any] | None = None

    # -- GradientStrategy ---------------------------------------------------------------
    def setup(self, data: SearchData, budget: Budget | None) -> None:
        self._check_data(data)
        metric = self.cfg.penalty or (budget.metric if budget is not None else "macs")
        if budget is not None and metric != budget.metric:
            raise UserError(f"snas: penalty {metric!r} is not the budget's metric ({budget.metric}); drop the "
                            f"penalty option (it follows the budget) or set it to {budget.metric!r}")
        if metric == "latency" and self.latency_source is None and self.lut is None:
            raise UserError("snas: a latency penalty needs a latency source (a device or a predictor) or a "
                            "latency table (option lut)")
        self.metric = metric
        self.table, self.fixed = self._cost_table(metric)
        if metric == "latency":
            self.calibration = self._calibrate()
        if budget is not None:
            self.reference_cost, self.target = float(budget.reference), float(budget.fraction)
            floor = self.cheapest_cost()
            if budget.limit < floor:
                unit = {"macs": " MACs", "params": " params", "memory": " bytes", "latency": " ms"}[metric]
                raise UserError(f"snas: the budget ({budget.limit:,.4g}{unit}) is below the cheapest child of the "
                                f"space ({floor:,.4g}{unit}, every block at its cheapest choice); raise the target "
                                "or search a smaller space")
        else:
            self.reference_cost, self.target = self._reference_cost(metric), None

    def steps_per_epoch(self) -> int:
        assert self.data is not None, "setup() or load_state_dict() first"
        return len(self.data.weights) // self.data.batch_size  # type: ignore[arg-type]

    def train_epoch(self, epoch: int, epochs: int, tick: Callable[[int, str], None]) -> dict[str, float]:
        assert self.data is not None, "setup() or load_state_dict() first"
        steps = self.steps_per_epoch()
        total = epochs * steps
        temperature = self.cfg.temperature
        sums = {"loss": 0.0, "ce": 0.0, "penalty": 0.0}
        tau = temperature.start
        self.net.train()
        for i, (x, y) in enumerate(self.data.loader("weights", epoch)):
            done = epoch * steps + i
            tau = temperature.at(done, total)
            for group in self.w_opt.param_groups:
                group["lr"] = self.cfg.lr * 0.5 * (1 + math.cos(math.pi * done / total))
            sample = gumbel_softmax(self._masked(), tau, hard=self.cfg.hard)
            logits = self.net(x.to(memory_format=torch.channels_last), sample, only_nonzero=self.cfg.hard)
            ce = F.cross_entropy(logits, y)
            penalty = self._penalty()
            loss = ce + self.cfg.penalty_weight * penalty
            check_finite("training", loss, epoch, i)
            self.w_opt.zero_grad(set_to_none=True)
            self.a_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), GRAD_CLIP)
            self.w_opt.step()
            self.a_opt.step()
            self.step += 1
            for key, value in (("loss", loss), ("ce", ce), ("penalty", penalty)):
                sums[key] += float(value.detach())
            tick(i + 1, f"loss {float(loss.detach()):.3f} tau {tau:.3g}")
        with torch.no_grad():
            expected = float(self.expected_cost())
        stats = {k: v / max(steps, 1) for k, v in sums.items()}
        stats.update(tau=tau, expected_cost=expected, expected_fraction=expected / self.reference_cost)
        return stats

    def derive(self) -> Derived:
        from edgecompress.models.searched import mobile_space_net

        choices = self.choices()
        kwargs = {"space": self.space.to_dict(), "choices": choices, "num_classes": self.num_classes,
                  "in_channels": self.input_shape[0], "input_size": self.input_shape[1]}
        with torch.random.fork_rng():  # building the child must not move the search's random stream
            child = mobile_space_net(**kwargs)
        self._inherit(child, choices)
        removed = [f"features.{b + 1}" for b, name in enumerate(choices) if name == "skip"]
        with torch.no_grad():
            probs, expected = self.probabilities(), float(self.expected_cost())
        arch: dict[str, Any] = {
            "space": self.space.name, "choices": choices, "metric": self.metric,
            "expected_cost": round(expected, 6), "expected_fraction": round(expected / self.reference_cost, 6),
            "probabilities": [{n: round(float(probs[s.index, self.space.choices.index(n)]), _DIGITS)
                               for n in self.space.allowed(s)} for s in self.slots],
            "removed": removed,
        }
        if self.calibration is not None:
            arch["calibration"] = {"a": self.calibration["a"], "b": self.calibration["b"]}
        return Derived(child.eval(), arch, spec="zoo:mobile_space_net", kwargs=kwargs, removed=removed)

    def config(self) -> dict[str, Any]:
        return {**asdict(self.cfg), "space": self.space.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "logits": self.logits.detach().clone(),
                "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(), "step": self.step,
                "metric": self.metric, "table": self.table.clone(), "fixed": self.fixed,
                "reference_cost": self.reference_cost, "target": self.target, "calibration": self.calibration}

    def load_state_dict(self, state: dict[str, Any], data: SearchData) -> None:
        self._check_data(data)
        self.net.load_state_dict(state["net"])
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.step, self.metric = int(state["step"]), state["metric"]
        self.table, self.fixed = state["table"].clone(), float(state["fixed"])
        self.reference_cost, self.target = float(state["reference_cost"]), state["target"]
        self.calibration = state["calibration"]

    # -- the distribution ---------------------------------------------------------------
    def _masked(self) -> torch.Tensor:
        """Logits with -inf where a block may not take a choice (its probability is exactly 0)."""
        return self.logits.masked_fill(~self.allowed, float("-inf"))

    def probabilities(self) -> torch.Tensor:
        """p (blocks, choices) = softmax of the logits over each block's allowed choices."""
        return F.softmax(self._masked(), dim=-1)

    def choices(self) -> list[str]:
        """The most likely choice of every block (the child)."""
        return [self.space.choices[int(i)] for i in self._masked().argmax(-1)]

    def expected_cost(self) -> torch.Tensor:
        """E[C] in the penalty's units (MACs, params, bytes or calibrated ms), differentiable in the logits."""
        raw = self.fixed + (self.probabilities() * self.table).sum()
        if self.calibration is not None:
            return self.calibration["a"] * raw + self.calibration["b"]
        return raw

    def cheapest_cost(self) -> float:
        """The cost of the cheapest child (every block at its cheapest allowed choice), in the penalty's units."""
        raw = self.fixed + float(self.table.masked_fill(~self.allowed, float("inf")).min(dim=-1).values.sum())
        if self.calibration is not None:
            return float(self.calibration["a"] * raw + self.calibration["b"])
        return float(raw)

    def _penalty(self) -> torch.Tensor:
        fraction = self.expected_cost() / self.reference_cost
        if self.target is None:
            return fraction
        return cost_loss(fraction, self.target, self.cfg.tolerance)

    # -- weights ------------------------------------------------------------------------
    def _inherit(self, child: nn.Module, choices: list[str]) -> None:
        """Copy the supernet's stem, chosen candidates, head and classifier into `child`."""
        features = child.features  # type: ignore[union-attr]
        features[0].load_state_dict(self.net.stem.state_dict())
        for b, name in enumerate(choices):
            if name != "skip":
                features[b + 1].load_state_dict(self.net.blocks[b].ops[name].state_dict())
        features[len(choices) + 1].load_state_dict(self.net.head.state_dict())
        child.classifier.load_state_dict(self.net.classifier.state_dict())  # type: ignore[union-attr]

    def _check_data(self, data: SearchData) -> None:
        if len(data.weights) < data.batch_size:  # type: ignore[arg-type]
            raise UserError(f"snas: the search needs at least one batch ({data.batch_size} images) to train on, "
                            f"got {len(data.weights)}")  # type: ignore[arg-type]
        self.data = data

    # -- costs --------------------------------------------------------------------------
    def _parts(self) -> tuple[list[tuple[int, int, int]], nn.Module, tuple[int, int, int], nn.Module,
                              tuple[int, int, int]]:
        """Input shapes of the blocks, and the stem and head (+ pool + classifier) with theirs."""
        from edgecompress.models.searched import head_layer, stem_layer

        c, h, _ = self.input_shape
        h = -(-h // self.space.stem_stride)
        shapes = []
        for slot in self.slots:
            shapes.append((slot.cin, h, h))
            h = -(-h // slot.stride)
        head = nn.Sequential(head_layer(self.space), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                             nn.Linear(self.space.head_channels, self.num_classes))
        return shapes, stem_layer(self.space, c), self.input_shape, head, (self.space.stages[-1].channels, h, h)

    def _cost_table(self, metric: str) -> tuple[torch.Tensor, float]:
        """cost[block][choice] of every allowed candidate (0 for skip and disallowed) and the stem + head cost."""
        from edgecompress.models.searched import build_choice

        shapes, stem, stem_shape, head, head_shape = self._parts()
        table = torch.zeros(len(self.slots), len(self.space.choices), dtype=torch.float64)
        seen: dict[tuple, float] = {}
        for slot, shape in zip(self.slots, shapes):
            for name in self.space.allowed(slot):
                if name == "skip":
                    continue
                key = (name, slot.cout, slot.stride, shape)
                if key not in seen:
                    seen[key] = self._module_cost(metric, build_choice(name, slot.cin, slot.cout, slot.stride),
                                                  shape, f"candidate {name} of block {slot.index}")
                table[slot.index, self.space.choices.index(name)] = seen[key]
        fixed = self._module_cost(metric, stem, stem_shape, "the stem") + \
            self._module_cost(metric, head, head_shape, "the head")
        return table, fixed

    def _module_cost(self, metric: str, module: nn.Module, shape: tuple[int, int, int], what: str) -> float:
        module.eval()
        if metric == "latency":
            if self.lut is not None:
                return self._lut_ms(module, shape, what)
            return float(self.latency_source.latency_ms(module, shape))
        return float(_static_costs(module, shape)[metric])

    def _lut_ms(self, module: nn.Module, shape: Sequence[int], what: str) -> float:
        from edgecompress.latency.predictor import decompose

        have = {e.sig.op for e in self.lut.entries.values()}
        total = 0.0
        for kernel in decompose(module, shape, self.lut.runtime, self.lut.threads).kernels:
            if kernel.sig.op not in have:
                raise UserError(f"snas: the latency table {self.cfg.lut!r} has no {kernel.sig.op!r} blocks, which "
                                f"{what} needs ({kernel.sig.key}); profile them with `edgecompress profile` on "
                                f"the device, with a grid that includes {kernel.sig.op}")
            total += self.lut.lookup(kernel.sig)
        return total

    def _reference_cost(self, metric: str) -> float:
        """The penalty's denominator without a budget: the reference model's cost."""
        if metric == "latency":
            if self.latency_source is not None:
                return float(self.latency_source.latency_ms(self.reference.eval(), self.input_shape))
            return self._lut_ms(self.reference.eval(), self.input_shape, "the reference model")
        return float(_static_costs(self.reference.eval(), self.input_shape)[metric])

    def _calibrate(self) -> dict[str, Any] | None:
        """Fit ms = a * table sum + b on whole children timed by the latency source; None without one."""
        from edgecompress.models.searched import mobile_space_net

        if self.latency_source is None:
            return None
        table = self.table.numpy()
        rng = np.random.default_rng(self.seed)
        picks = {"fastest": [], "slowest": [], "random": []}
        for slot in self.slots:
            names = list(self.space.allowed(slot))
            ms = [table[slot.index, self.space.choices.index(n)] for n in names]
            picks["fastest"].append(names[int(np.argmin(ms))])
            picks["slowest"].append(names[int(np.argmax(ms))])
            picks["random"].append(names[int(rng.integers(len(names)))])
        points = []
        for kind, choices in picks.items():
            total = self.fixed + sum(table[s.index, self.space.choices.index(n)] for s, n in zip(self.slots, choices))
            with torch.random.fork_rng():
                child = mobile_space_net(num_classes=self.num_classes, in_channels=self.input_shape[0],
                                         input_size=self.input_shape[1], space=self.space.to_dict(), choices=choices)
            ms = float(self.latency_source.latency_ms(child.eval(), self.input_shape))
            points.append({"child": kind, "table_ms": float(total), "ms": ms})
        a, b = fit_calibration([p["table_ms"] for p in points], [p["ms"] for p in points])
        return {"a": a, "b": b, "points": points}


def fit_calibration(table_ms: Sequence[float], measured_ms: Sequence[float]) -> tuple[float, float]:
    """(a, b) of measured ~= a * table + b by least squares; when that slope is not positive
    (children too alike, or noise), the proportional fit a = sum(measured) / sum(table), b = 0."""
    x, y = np.asarray(table_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    if len(x) >= 2 and np.ptp(x) > 1e-9 * max(abs(x).max(), 1e-12):
        a, b = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
        if a > 0:
            return float(a), float(b)
    return float(y.sum() / x.sum()), 0.0


def _static_costs(module: nn.Module, shape: Sequence[int]) -> dict[str, float]:
    """MACs, params and memory access (activation bytes read and written + weight bytes) of `module`."""
    from edgecompress.graph.cost import analyze

    report = analyze(module, tuple(shape))
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    return {"macs": float(report.total_macs), "params": float(report.total_params),
            "memory": float(report.total_act_bytes + weight_bytes)}


__all__ = ["PENALTIES", "MixedBlock", "SNASConfig", "SNASStrategy", "SuperNet", "build", "fit_calibration"]
