"""TAS: transformable architecture search of a pretrained network's widths and depths.

Dong & Yang, "Network Pruning via Transformable Architecture Search" (NeurIPS 2019).
Instead of choosing keep ratios by trial (AMC), TAS learns them by gradient in one
training run:

- Width: every searchable channel group (`SearchSpace`: coupled channels cut together)
  gets a learnable distribution over candidate widths, ratios of the original
  (`width_ratios`, 0.3 ... 1.0 by default, rounded as `prune_` rounds). Each step samples
  `candidates` (2) distinct widths by Gumbel-top-k and combines the group's feature maps
  at those widths by *channel-wise interpolation* (`gumbel.channel_interpolate`: the
  first c channels resized to the full width by adaptive average pooling over the
  channel dimension), weighted by their renormalised Gumbel-softmax probabilities.
  "The first c channels" are the c most important ones: channels are ranked once, on the
  pretrained weights, by the importance criterion `prune_` uses (l2 by default), so the
  channels a width keeps during the search are the ones the derived network keeps.
  The interpolation is applied where the group's channels are complete: at the output
  of every BatchNorm of the group (every producer when the group has no norms); a
  residual group is interpolated identically at every producer, so sums stay aligned.
- Depth: a "stage" is a run of consecutive shape-preserving residual blocks in an
  nn.Sequential (found by tracing each block for an add that reads the block's input),
  together with the shape-changing residual block before it if there is one. Its depth
  distribution is over how many of the run's blocks are kept (at least one block per
  stage); the stage output is the probability-weighted sum (Gumbel-softmax) of the
  outputs after each candidate depth.
- Cost: the expected cost is differentiable because it is a probability-weighted sum of
  per-layer terms: a layer's MACs (or params) times the expected kept fraction of the
  group it reads times that of the group it writes (depthwise: written only), times the
  probability that its block survives the depth choice; for latency, a layer's entry in
  the device's per-op table (`LatencyLUT`) for every pair of candidate widths, weighted
  by the two groups' probabilities. The loss is TAS's band loss (`gumbel.cost_loss`,
  tolerance t = 5 %, weight lambda = 2) on the expected cost as a fraction of the
  unpruned model's, with the band's upper edge at the budget (the paper centres it on
  the target; a budget is a limit), taken under softmax(logits / tau): as tau anneals, what the loss
  constrains becomes the cost of the most likely architecture, the one derived (under
  the plain softmax a spread distribution can meet the budget in expectation while its
  mode, the derived network, is far over it).
- Updates alternate, as in the paper: a weight step (cross-entropy, SGD) on a batch of
  one half of the training images, an architecture step (cross-entropy + lambda * cost,
  Adam) on a batch of the other half. The temperature anneals from 10 to 0.1.
- Derivation: the most likely width per group and depth per stage (when that is over
  the budget, the groups or stages that give up the least log-probability per unit of
  cost saved step down one candidate until it fits: the band loss acts on the
  tempered expectation, whose mode can still be a few percent over); the network is
  built by pruning the *pretrained* model to those widths (`SearchSpace.apply`, keeping
  the most important channels) and replacing the dropped blocks by nn.Identity. The
  paper then trains it with knowledge distillation from the original (T = 4, alpha =
  0.9): the `finetune` step / `edgecompress compress` does that.

The paper searched ResNet-32 on CIFAR-10 in 3.8 GPU-hours at about 40 % fewer FLOPs;
here the search runs on a subset of the training images for a few epochs (CPU).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgecompress.errors import UserError, check_keys
from edgecompress.search.gradient import Budget, Derived, GradientStrategy, SearchData, check_finite
from edgecompress.search.gumbel import Temperature, channel_interpolate, cost_loss, gumbel_softmax, sample_candidates

COSTS = ("macs", "params", "latency")


@dataclass(frozen=True)
class TASConfig:
    """TAS's settings (defaults: the paper's where it states them).

    width_ratios: candidate widths as fractions of each group's channels.
    candidates: widths sampled per group and step (the paper's 2).
    search_depth: also search the depth of every stage of residual blocks.
    tau_start, tau_end: Gumbel-softmax temperature, annealed exponentially (10 -> 0.1).
    tolerance, cost_weight: the cost loss's band t and weight lambda (5 %, 2).
    cost: what the loss counts: macs, params or latency (from `lut`); default: the
        budget's metric.
    lut: path of a latency table (`edgecompress profile`) for cost = latency.
    lr, momentum, weight_decay: SGD on the weights (cosine over the search).
    arch_lr, arch_weight_decay: Adam (betas 0.5, 0.999) on the architecture logits.
    round_to, min_channels: width rounding (as prune_); importance: channel ranking.
    """

    width_ratios: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    candidates: int = 2
    search_depth: bool = True
    tau_start: float = 10.0
    tau_end: float = 0.1
    tolerance: float = 0.05
    cost_weight: float = 2.0
    cost: str | None = None
    lut: str | None = None
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 3e-3
    arch_weight_decay: float = 1e-3
    round_to: int = 4
    min_channels: int = 4
    importance: str = "l2"

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.width_ratios)
        object.__setattr__(self, "width_ratios", ratios)
        if len(ratios) < 2 or not all(0 < r <= 1 for r in ratios):
            raise ValueError(f"width_ratios = {list(ratios)} must be at least two fractions in (0, 1]")
        if not (isinstance(self.candidates, int) and self.candidates >= 1):
            raise ValueError(f"candidates = {self.candidates!r} must be an integer >= 1")
        for name in ("tau_start", "tau_end", "lr", "arch_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} = {v!r} must be a finite number > 0")
        for name in ("cost_weight", "weight_decay", "arch_weight_decay", "momentum"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} = {v!r} must be a finite number >= 0")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance = {self.tolerance!r} must be in [0, 1)")
        if self.cost is not None and self.cost not in COSTS:
            raise ValueError(f"cost = {self.cost!r} must be one of {', '.join(COSTS)}")
        for name in ("round_to", "min_channels"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} = {v!r} must be an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["width_ratios"] = list(self.width_ratios)
        return d


def build(options: Mapping[str, Any], *, reference: nn.Module, input_shape: tuple[int, int, int],
          num_classes: int | None = None, latency_source: Any = None, seed: int = 0) -> TASStrategy:
    """A TAS search of `reference` with `options` (TASConfig fields); UserError for bad ones."""
    try:
        check_keys("TAS option", options, [f.name for f in fields(TASConfig)])
        config = TASConfig(**dict(options))
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc) if str(exc).startswith("unknown") else f"TAS option: {exc}") from None
    return TASStrategy(reference, input_shape, config, seed=seed)


# --- structure: stages of residual blocks ---------------------------------------------------


def _is_residual(block: nn.Module) -> bool:
    """Whether `block`'s traced forward adds its own input to something (an identity shortcut)."""
    try:
        gm = fx.symbolic_trace(block)
    except Exception:  # noqa: BLE001 - untraceable blocks are simply not depth-searched
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    x = inputs[0]
    for n in gm.graph.nodes:
        if n.target in (torch.add, torch.Tensor.add, "add", "add_", __import__("operator").add):
            if x in n.args:
                return True
            # x may reach the add through a shortcut module (nn.Identity or a projection)
            for a in n.args:
                if isinstance(a, fx.Node) and a.op == "call_module" and x in a.args:
                    return True
    return False


@dataclass(frozen=True)
class Stage:
    """A depth-searchable run: `blocks` (qualified names) may be dropped from the end;
    `min_depth` of them are always kept (0 when a downsampling block leads the stage)."""

    name: str
    blocks: tuple[str, ...]
    min_depth: int

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(range(self.min_depth, len(self.blocks) + 1))


def find_stages(model: nn.Module, input_shape: tuple[int, int, int]) -> list[Stage]:
    """The depth-searchable stages of `model` (see the module docstring)."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    seqs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Sequential)]
    for seq_name, seq in seqs:
        for child_name, child in seq.named_children():
            full = f"{seq_name}.{child_name}" if seq_name else child_name

            def hook(mod, args, out, full=full):
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    shapes[full] = (tuple(args[0].shape), tuple(out.shape))
            handles.append(child.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    stages: list[Stage] = []
    for seq_name, seq in seqs:
        children = list(seq.named_children())
        run: list[str] = []
        lead = False
        prev_residual_changing = False

        def close() -> None:
            if run:
                min_depth = 0 if lead else 1
                if len(run) > min_depth:
                    stages.append(Stage(f"stage{len(stages)}", tuple(run), min_depth))

        for child_name, child in children:
            full = f"{seq_name}.{child_name}" if seq_name else child_name
            io = shapes.get(full)
            keeps = io is not None and io[0] == io[1] and any(True for _ in child.parameters())
            residual = _is_residual(child)
            if keeps and residual:
                if not run:
                    lead = prev_residual_changing
                run.append(full)
            else:
                close()
                run = []
                prev_residual_changing = io is not None and io[0] != io[1] and _has_add_shortcut(child)
        close()
    return stages


def _has_add_shortcut(block: nn.Module) -> bool:
    """A shape-changing residual block (projection shortcut): its forward adds two branches."""
    try:
        gm = fx.symbolic_trace(block)
    except Exception:  # noqa: BLE001
        return False
    return any(n.op == "call_function" and n.target in (torch.add, __import__("operator").add) for n in gm.graph.nodes)


# --- the strategy ---------------------------------------------------------------------------


@dataclass
class _Site:
    """Where one group's channels are interpolated: a module output with its ranked order."""

    module: str
    slot: int  # index into the searched groups
    order: torch.Tensor  # positions of the output channels, most important first
    inverse: torch.Tensor
    widths: tuple[int, ...]  # channels of this output kept by each candidate


class TASStrategy(GradientStrategy):
    name = "tas"

    def __init__(self, reference: nn.Module, input_shape: tuple[int, int, int], config: TASConfig | None = None, *,
                 seed: int = 0) -> None:
        from edgecompress.search.space import SearchSpace

        self.cfg = config or TASConfig()
        self.reference = reference.eval()
        self.input_shape = tuple(input_shape)
        self.seed = seed
        cfg = self.cfg
        self.space = SearchSpace.from_model(self.reference, self.input_shape, round_to=cfg.round_to,
                                            min_keep=min(cfg.width_ratios), min_channels=cfg.min_channels,
                                            importance=cfg.importance)
        # candidate unit counts per group: the ratios rounded as prune_ rounds them
        self.choices: list[tuple[int, ...]] = []
        for g in self.space.groups:
            units = sorted({g.round_units(r) for r in cfg.width_ratios} | {g.units})
            self.choices.append(tuple(units))
        self.stages = find_stages(self.reference, self.input_shape) if cfg.search_depth else []
        self.step = 0
        self.total_steps = 1
        self._built = False

    # -- GradientStrategy ------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.cfg.to_dict(), "space": self.space.signature(),
                "stages": [[s.name, list(s.blocks), s.min_depth] for s in self.stages]}

    def setup(self, data: SearchData, budget: Budget | None) -> None:
        cfg = self.cfg
        if budget is None:
            raise UserError("TAS needs a target to search towards, e.g. --target macs=0.5 or latency=0.6")
        self.cost_kind = cfg.cost or budget.metric
        if self.cost_kind == "latency" and not cfg.lut:
            raise UserError("TAS with a latency cost reads a per-op latency table: pass options lut=PATH "
                            "(`edgecompress profile --device ... --out lut.json`), or search a macs target")
        # The band sits just under the budget (its upper edge is the budget): a budget is a
        # limit, and a child inside a band centred on it could be up to t over.
        self.budget_fraction = float(budget.fraction)
        self.target = self.budget_fraction / (1 + cfg.tolerance)
        self._build(data)
        floor = self._cost.fraction_of([0] * len(self.choices), [0] * len(self.stages))
        if self.budget_fraction < floor:
            raise UserError(f"TAS: the budget ({self.budget_fraction:.3f} of the model's {self.cost_kind}) is below "
                            f"the smallest architecture the search can build ({floor:.3f}: every group at "
                            f"{min(cfg.width_ratios):g} of its width, every stage at its shallowest); raise the "
                            "target or lower width_ratios")
        self.width_logits = [torch.zeros(len(c), requires_grad=True) for c in self.choices]
        self.depth_logits = [torch.zeros(len(s.depths), requires_grad=True) for s in self.stages]
        self._make_optimizers()

    def _build(self, data: SearchData) -> None:
        cfg = self.cfg
        self.data = data
        self.net = copy.deepcopy(self.reference).train()
        self._sites = self._make_sites()
        self._install_hooks()
        self._cost = _CostModel(self, cfg.lut)
        n = len(data.loader("weights", 0))
        m = len(data.loader("arch", 0))
        if n == 0 or m == 0:
            raise UserError(f"the search data gives {n} weight and {m} architecture batches: use more images "
                            "or a smaller batch size")
        self._steps = min(n, m)
        self._built = True

    def _make_optimizers(self) -> None:
        cfg = self.cfg
        decay = [p for p in self.net.parameters() if p.dim() > 1]
        rest = [p for p in self.net.parameters() if p.dim() <= 1]
        self.w_opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, momentum=cfg.momentum,
                                     nesterov=True)
        self.a_opt = torch.optim.Adam([*self.width_logits, *self.depth_logits], lr=cfg.arch_lr, betas=(0.5, 0.999),
                                      weight_decay=cfg.arch_weight_decay)

    def steps_per_epoch(self) -> int:
        return self._steps

    def train_epoch(self, epoch: int, epochs: int, tick: Callable[[int, str], None]) -> dict[str, float]:
        cfg = self.cfg
        temperature = Temperature(cfg.tau_start, cfg.tau_end)
        self.total_steps = epochs * self._steps
        self.net.train()
        sums = {"loss": 0.0, "ce": 0.0, "arch_ce": 0.0, "cost_loss": 0.0}
        w_iter = iter(self.data.loader("weights", epoch))
        a_iter = iter(self.data.loader("arch", epoch))
        for i in range(self._steps):
            tau = temperature.at(self.step, self.total_steps)
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * self.step / self.total_steps))
            for group in self.w_opt.param_groups:
                group["lr"] = lr
            # weight step
            x, y = next(w_iter)
            self._sample(tau)
            ce = F.cross_entropy(self.net(x), y)
            check_finite("weight cross-entropy", ce, epoch, i)
            self.w_opt.zero_grad(set_to_none=True)
            self.a_opt.zero_grad(set_to_none=True)
            ce.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
            self.w_opt.step()
            # architecture step
            xa, ya = next(a_iter)
            self._sample(tau)
            arch_ce = F.cross_entropy(self.net(xa), ya)
            expected = self._cost.expected_fraction(tau)
            closs = cost_loss(expected, self.target, cfg.tolerance)
            loss = arch_ce + cfg.cost_weight * closs
            check_finite("architecture (cross-entropy + cost)", loss, epoch, i)
            self.w_opt.zero_grad(set_to_none=True)
            self.a_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.a_opt.step()
            self.step += 1
            sums["loss"] += float(loss.detach())
            sums["ce"] += float(ce.detach())
            sums["arch_ce"] += float(arch_ce.detach())
            sums["cost_loss"] += float(closs.detach())
            tick(i + 1, f"ce {float(ce.detach()):.3f} E[cost] {float(expected.detach()):.3f} tau {tau:.2f}")
        out = {k: v / self._steps for k, v in sums.items()}
        out.update(tau=tau, expected_cost=float(self._cost.expected_fraction(tau).detach()),
                   derived_cost=float(self._cost.argmax_fraction()))
        return out

    def _within_budget(self) -> tuple[list[int], list[int], int]:
        """Candidate indices (widths, depths) of the most likely architecture within the budget.

        Start from the argmax of every distribution; while its cost is over the budget,
        step one group (or stage) down to its next narrower (shallower) candidate, the one
        that gives up the least log-probability per unit of cost saved. Returns the
        indices and how many steps that took (0: the argmax itself fits)."""
        w = [int(lg.argmax()) for lg in self.width_logits]
        d = [int(lg.argmax()) for lg in self.depth_logits]
        logp_w = [F.log_softmax(lg.detach(), -1) for lg in self.width_logits]
        logp_d = [F.log_softmax(lg.detach(), -1) for lg in self.depth_logits]
        cost = self._cost.fraction_of(w, d)
        steps = 0
        while cost > self.budget_fraction * (1 + 1e-9):
            best: tuple[float, str, int, float] | None = None
            for kind, idx, logp in (("w", w, logp_w), ("d", d, logp_d)):
                for g, i in enumerate(idx):
                    if i == 0:
                        continue
                    trial = list(idx)
                    trial[g] -= 1
                    after = self._cost.fraction_of(trial, d) if kind == "w" else self._cost.fraction_of(w, trial)
                    saved = cost - after
                    if saved <= 0:
                        continue
                    score = float(logp[g][i] - logp[g][i - 1]) / saved
                    if best is None or score < best[0]:
                        best = (score, kind, g, after)
            if best is None:  # everything at its smallest candidate
                break
            _, kind, g, cost = best
            (w if kind == "w" else d)[g] -= 1
            steps += 1
        return w, d, steps

    def derive(self) -> Derived:
        w_idx, d_idx, projected = self._within_budget()
        units = [c[i] for c, i in zip(self.choices, w_idx)]
        policy = self.space.from_units(units)
        child = self.space.apply(policy, self.reference)
        removed: list[str] = []
        depths: dict[str, int] = {}
        for stage, i in zip(self.stages, d_idx):
            d = stage.depths[i]
            depths[stage.name] = d
            removed.extend(stage.blocks[d:])
        for name in removed:
            child.set_submodule(name, nn.Identity())
        arch = {
            "groups": list(self.space.names), "widths": self.space.widths(policy),
            "keep": [round(k, 6) for k in policy.keep], "units": units, "depths": depths, "removed": removed,
            "width_probs": [[round(float(p), 4) for p in F.softmax(lg.detach(), -1)] for lg in self.width_logits],
            "depth_probs": {s.name: [round(float(p), 4) for p in F.softmax(lg.detach(), -1)]
                            for s, lg in zip(self.stages, self.depth_logits)},
            "expected_cost": round(float(self._cost.expected_fraction().detach()), 6),
            "argmax_cost": round(float(self._cost.argmax_fraction()), 6),
            "derived_cost": round(self._cost.fraction_of(w_idx, d_idx), 6), "cost": self.cost_kind,
            "steps_to_budget": projected,
        }
        return Derived(child.eval(), arch, removed=removed)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "width_logits": [t.detach().clone() for t in self.width_logits],
                "depth_logits": [t.detach().clone() for t in self.depth_logits], "w_opt": self.w_opt.state_dict(),
                "a_opt": self.a_opt.state_dict(), "step": self.step, "target": self.target,
                "budget_fraction": self.budget_fraction,
                "cost_kind": self.cost_kind}

    def load_state_dict(self, state: dict[str, Any], data: SearchData) -> None:
        self.target, self.cost_kind = float(state["target"]), state["cost_kind"]
        self.budget_fraction = float(state["budget_fraction"])
        self._build(data)
        self.net.load_state_dict(state["net"])
        self.width_logits = [t.clone().requires_grad_(True) for t in state["width_logits"]]
        self.depth_logits = [t.clone().requires_grad_(True) for t in state["depth_logits"]]
        self._make_optimizers()
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.step = int(state["step"])

    # -- sampling and hooks ----------------------------------------------------------------

    def _sample(self, tau: float) -> None:
        cfg = self.cfg
        self._width_sample = [sample_candidates(lg, tau, cfg.candidates) for lg in self.width_logits]
        self._depth_sample = [gumbel_softmax(lg, tau) for lg in self.depth_logits]

    def _make_sites(self) -> list[_Site]:
        from edgecompress.graph.groups import build_groups
        from edgecompress.prune.importance import get_importance

        raw = build_groups(self.reference, self.input_shape)
        score = get_importance(self.cfg.importance)
        modules = dict(self.reference.named_modules())
        sites: list[_Site] = []
        for index, (spec, choices) in enumerate(zip(self.space.groups, self.choices)):
            g = raw[spec.slot]
            scores = score(self.reference, g)
            rank_of_unit = torch.empty(len(g.units), dtype=torch.long)
            rank_of_unit[torch.argsort(scores, descending=True, stable=True)] = torch.arange(len(g.units))
            unit_of = {a: u for u, atoms in enumerate(g.units) for a in atoms}
            norms = [m for m in g.members if m.kind == "norm"]
            producers = [m for m in g.members if m.kind in ("out", "group_out")]
            members = norms if norms and len(norms) >= len(producers) else producers
            for m in members:
                mod = modules[m.name]
                full = _out_width(mod)
                if full is None or len(m.positions) != full:
                    raise UserError(f"TAS cannot interpolate group {spec.name!r} at {m.name!r}: it carries "
                                    f"{len(m.positions)} of its {full} output channels; exclude the group "
                                    "(ignore=...) or use AMC for this model")
                ranks = torch.tensor([int(rank_of_unit[unit_of[a]]) for a in m.atoms])
                order_idx = torch.argsort(ranks * (full + 1) + torch.tensor(m.positions), stable=True)
                order = torch.tensor(m.positions)[order_idx]
                inverse = torch.empty_like(order)
                inverse[order] = torch.arange(full)
                widths = tuple(int((ranks < c).sum()) for c in choices)
                sites.append(_Site(m.name, index, order, inverse, widths))
        return sites

    def _install_hooks(self) -> None:
        modules = dict(self.net.named_modules())
        for site in self._sites:
            modules[site.module].register_forward_hook(self._width_hook(site))
        for si, stage in enumerate(self.stages):
            outs: list[torch.Tensor] = []

            def pre(mod, args, outs=outs):
                outs.clear()
                outs.append(args[0])

            def keep(mod, args, out, outs=outs):
                outs.append(out)

            def mix(mod, args, out, outs=outs, si=si, stage=stage):
                outs.append(out)
                weights = self._depth_sample[si] if hasattr(self, "_depth_sample") else None
                if weights is None:
                    return out
                # outs[k] is the output after k blocks of the run (outs[0] its input)
                return sum(w * outs[d] for w, d in zip(weights, stage.depths))

            blocks = [modules[b] for b in stage.blocks]
            blocks[0].register_forward_pre_hook(pre)
            for b in blocks[:-1]:
                b.register_forward_hook(keep)
            blocks[-1].register_forward_hook(mix)

    def _width_hook(self, site: _Site):
        def hook(mod, args, out):
            sample = getattr(self, "_width_sample", None)
            if sample is None:
                return out
            idx, weights = sample[site.slot]
            full = out.shape[1]
            ranked = out.index_select(1, site.order)
            mixed = sum(w * channel_interpolate(ranked[:, : site.widths[int(j)]], full) for j, w in zip(idx, weights))
            return mixed.index_select(1, site.inverse)
        return hook

    # -- description -----------------------------------------------------------------------

    def block_of(self, layer: str) -> tuple[int, int] | None:
        """(stage index, position in its run) of the block holding `layer`, None if in none."""
        for si, stage in enumerate(self.stages):
            for pos, b in enumerate(stage.blocks):
                if layer == b or layer.startswith(b + "."):
                    return si, pos
        return None


def _out_width(mod: nn.Module) -> int | None:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return mod.num_features
    return None


class _CostModel:
    """The expected cost of a TAS relaxation as a differentiable fraction of the full model's."""

    def __init__(self, tas: TASStrategy, lut_path: str | None) -> None:
        space = tas.space
        self.tas = tas
        self.kind = tas.cost_kind
        self._in = torch.tensor(space._in, dtype=torch.float32)
        self._out = torch.tensor(space._out, dtype=torch.float32)
        self._grouped = torch.tensor(space._grouped)
        self._base = torch.tensor(space._base_frac, dtype=torch.float32)
        self._slots = torch.tensor(space._slot_of)
        self._fracs = [torch.tensor(c, dtype=torch.float32) / g.units for c, g in zip(tas.choices, space.groups)]
        exist = []  # per term: (stage, position) or None
        for t in space.terms:
            exist.append(tas.block_of(t.name))
        self._exist = exist
        if self.kind == "latency":
            self._lat = _LatencyTerms(tas, lut_path)
        elif self.kind == "macs":
            self._w = torch.tensor(space._macs, dtype=torch.float32)
            self._const = float(space._const_macs)
            self._whole = float(space.total_macs)
        else:
            self._w = torch.tensor(space._pw, dtype=torch.float32)
            self._wb = torch.tensor(space._pb, dtype=torch.float32)
            self._const = float(space._const_params)
            self._whole = float(space.total_params)

    def _survival(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        rows = []
        for e in self._exist:
            if e is None:
                rows.append(torch.ones(()))
                continue
            si, pos = e
            depths = torch.tensor(self.tas.stages[si].depths)
            rows.append((probs[si] * (depths > pos).float()).sum())
        return torch.stack(rows) if rows else torch.ones(0)

    def _fraction(self, width_probs: Sequence[torch.Tensor], depth_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        alive = self._survival(depth_probs)
        if self.kind == "latency":
            return self._lat.fraction(width_probs, alive, depth_probs)
        frac = self._base.clone()
        expected = torch.stack([(p * f).sum() for p, f in zip(width_probs, self._fracs)])
        frac = frac.index_put((self._slots,), expected)
        f_in = 1.0 + self._in @ (frac - 1.0)
        f_out = 1.0 + self._out @ (frac - 1.0)
        dense = torch.where(self._grouped, torch.ones_like(f_in), f_in) * f_out
        if self.kind == "macs":
            total = self._const + (self._w * dense * alive).sum()
        else:
            total = self._const + (self._w * dense * alive).sum() + (self._wb * f_out * alive).sum()
        return total / self._whole

    def expected_fraction(self, tau: float = 1.0) -> torch.Tensor:
        """E[cost] / cost of the unpruned model under the distributions softmax(logits / tau).

        At tau = 1 this is the expectation under the learnt distribution; the search uses
        the current temperature, so as tau anneals towards 0.1 the expectation the loss
        constrains becomes the cost of the most likely architecture (the one derived)."""
        return self._fraction([F.softmax(lg / tau, -1) for lg in self.tas.width_logits],
                              [F.softmax(lg / tau, -1) for lg in self.tas.depth_logits])

    def argmax_fraction(self) -> float:
        """The cost fraction of the most likely architecture."""
        return self.fraction_of([int(lg.argmax()) for lg in self.tas.width_logits],
                                [int(lg.argmax()) for lg in self.tas.depth_logits])

    def fraction_of(self, widths: Sequence[int], depths: Sequence[int]) -> float:
        """The cost fraction of one architecture: candidate indices per group and per stage."""
        def one_hot(i: int, n: int) -> torch.Tensor:
            return F.one_hot(torch.tensor(i), n).float()
        with torch.no_grad():
            return float(self._fraction([one_hot(i, len(c)) for i, c in zip(widths, self.tas.choices)],
                                        [one_hot(i, len(s.depths)) for i, s in zip(depths, self.tas.stages)]))


class _LatencyTerms:
    """Per-layer latency tables over candidate widths, from a device's per-op table.

    For a conv/linear layer reading group a and writing group b, table[i, j] is the table's
    latency of that kernel with a at candidate i and b at candidate j; its expectation is
    p_a^T table p_b. Other kernels (pooling, residual adds...) are charged at their
    full-width entry, times the survival probability of the block they run in. Everything is the table's sum, as a fraction of the
    unpruned model's sum (the per-invocation overhead is left out on both sides).
    """

    def __init__(self, tas: TASStrategy, lut_path: str) -> None:
        from edgecompress.latency.lut import LatencyLUT
        from edgecompress.latency.predictor import decompose

        lut = LatencyLUT.load(lut_path)
        model = tas.reference
        dec = decompose(model, tas.input_shape, lut.runtime, lut.threads)
        gm = fx.symbolic_trace(model)
        target_of = {n.name: n.target for n in gm.graph.nodes if n.op == "call_module"}
        # the innermost module a node runs in (an add inside a block belongs to that block)
        scope_of = {n.name: next(reversed(n.meta["nn_module_stack"])) for n in gm.graph.nodes
                    if n.meta.get("nn_module_stack")}
        space = tas.space
        searched = {g.slot: i for i, g in enumerate(space.groups)}
        terms = {t.name: t for t in space.terms}
        self.tas = tas
        self.const = 0.0
        self.block_const: dict[tuple[int, int], float] = {}  # kernels inside a depth-searched block
        self.entries: list[tuple[int | None, int | None, torch.Tensor, int]] = []  # (in grp, out grp, table, term idx)
        term_index = {t.name: i for i, t in enumerate(space.terms)}
        full_sum = 0.0
        for k in dec.kernels:
            module = next((target_of[n] for n in k.nodes if n in target_of), None)
            term = terms.get(module) if module else None
            base = lut.lookup(k.sig)
            full_sum += base
            if term is None or k.sig.op not in ("conv", "dwconv", "gconv", "linear"):
                scope = next((target_of.get(n) or scope_of.get(n) for n in k.nodes
                              if target_of.get(n) or scope_of.get(n)), None)
                where = tas.block_of(scope) if scope else None
                if where is None:
                    self.const += base
                else:
                    self.block_const[where] = self.block_const.get(where, 0.0) + base
                continue
            gin = _single(term.ins, searched) if not term.grouped else None
            gout = _single(term.outs, searched)
            cin_opts = self._channels(gin, k.sig.cin, tas)
            cout_opts = self._channels(gout, k.sig.cout, tas)
            table = torch.zeros(len(cin_opts), len(cout_opts))
            for i, ci in enumerate(cin_opts):
                for j, co in enumerate(cout_opts):
                    if k.sig.op == "dwconv":
                        sig = _replace(k.sig, cin=co, cout=co, groups=co)
                    else:
                        sig = _replace(k.sig, cin=ci, cout=co)
                    table[i, j] = lut.lookup(sig)
            self.entries.append((gin, gout, table, term_index[term.name]))
        self.full = full_sum

    @staticmethod
    def _channels(group: int | None, full: int, tas: TASStrategy) -> list[int]:
        if group is None:
            return [full]
        g = tas.space.groups[group]
        return [max(1, round(full * c / g.units)) for c in tas.choices[group]]

    def fraction(self, width_probs: Sequence[torch.Tensor], alive: torch.Tensor,
                 depth_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.tensor(self.const)
        for (si, pos), ms in self.block_const.items():
            depths = torch.tensor(self.tas.stages[si].depths)
            total = total + ms * (depth_probs[si] * (depths > pos).float()).sum()
        one = torch.ones(1)
        for gin, gout, table, ti in self.entries:
            p_in = width_probs[gin] if gin is not None else one
            p_out = width_probs[gout] if gout is not None else one
            total = total + alive[ti] * (p_in @ table @ p_out)
        return total / self.full


def _single(sides: tuple[tuple[int, float], ...], searched: Mapping[int, int]) -> int | None:
    """The searched group a layer side reads whole (None: fixed, or spread over several groups)."""
    hits = [(searched[s], share) for s, share in sides if s in searched]
    if len(hits) == 1 and abs(hits[0][1] - 1.0) < 1e-6:
        return hits[0][0]
    return None


def _replace(sig: Any, **kw: Any) -> Any:
    import dataclasses

    return dataclasses.replace(sig, **kw)
