"""`factorize_(model, LowRankConfig(...))`: replace a model's large layers by low-rank factors.

Which layers: every Conv2d / Linear the method can factorize (`decompose.unsupported`),
less the `ignore` patterns; the others are listed as skipped with the reason. How far:

- `rank`: one rule for every layer: a ratio of the full rank (0.5), `energy=0.9` (the
  smallest rank keeping 90% of the squared singular values), or `vbmf` (Tucker-2 ranks
  estimated by empirical variational Bayesian matrix factorisation);
- `target`: a budget on the whole model (`macs=0.5`, `params=0.4`, `latency=0.6` of the
  model given, or absolute), met greedily: every layer has a ladder of ranks (the
  `ratios` grid, rounded up to `round_to`); starting from nothing factorized, the step
  with the least sensitivity per unit of cost saved is taken until the budget is met.
  Sensitivity is the weight reconstruction error (`sensitivity: error`) or the drop in
  validation accuracy with that layer alone factorized (`accuracy`, needs `evaluate`),
  which is what AIMET's greedy ratio selection measures.

Per-layer `overrides` (regex on the module name -> {method, rank}) take precedence.
Ranks are rounded up to multiples of `round_to` (runtimes pick SIMD-blocked kernels for
aligned channel counts) and a layer whose factors would not save MACs (or params, for a
params target) is left alone. With a `timer` (a device), each layer chosen is timed as
a standalone block before and after, interleaved; a factorization that is not at least
`min_speedup` faster on that device is undone and the result says so, per layer.

Nothing in the model changes when an error is raised: plans are made on the original
weights, and modules are swapped only at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from edgecompress.errors import UserError, check_keys, suggest
from edgecompress.lowrank import decomposition as dec

SENSITIVITIES = ("error", "accuracy")
DEFAULT_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
EvaluateFn = Callable[[nn.Module], float]  # top-1 accuracy in [0, 1] of a candidate model


def parse_rank(value: Any, method: str, where: str = "rank") -> tuple[str, float | None]:
    """('ratio', r) | ('energy', e) | ('vbmf', None) from 0.5 / 'energy=0.9' / 'vbmf' (ValueError naming the value)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)):
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"{where} = {value!r} must be a ratio of the full rank in (0, 1], 'energy=F' or 'vbmf'")
        return "ratio", float(value)
    text = str(value).strip().lower()
    if text == "vbmf":
        if method != "tucker2":
            raise ValueError(f"{where} = 'vbmf' estimates Tucker-2 ranks; use method tucker2, or a ratio / energy=F "
                             f"for {method}")
        return "vbmf", None
    if text.startswith("energy="):
        try:
            keep = float(text.partition("=")[2])
        except ValueError:
            keep = float("nan")
        if not (math.isfinite(keep) and 0 < keep <= 1):
            raise ValueError(f"{where} = {value!r}: the energy kept must be in (0, 1], e.g. energy=0.9")
        return "energy", keep
    raise ValueError(f"{where} = {value!r} must be a ratio of the full rank in (0, 1] (e.g. 0.5), 'energy=0.9' "
                     "or 'vbmf' (Tucker-2)")


@dataclass(frozen=True)
class LowRankConfig:
    """What `factorize_` does (see the module docstring).

    method: svd | spatial-svd | tucker2 | cp. rank: a rule for every layer; target: a
    whole-model budget (exactly one of the two). ratios: the rank ratios the budget search
    tries per layer. round_to: ranks are multiples of it. ignore: regexes of module names
    left alone. overrides: regex -> {"method": ..., "rank": ...} per layer (first match
    wins; a layer with an override is not part of the budget search). min_speedup: with a
    timer, a layer whose block is not this much faster (1.03 = 3%) stays unfactorized.
    """

    method: str = "spatial-svd"
    rank: float | str | None = None
    target: str | None = None
    sensitivity: str = "error"
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    round_to: int = 8
    ignore: tuple[str, ...] = ()
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    min_speedup: float = 1.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "overrides", dict(self.overrides))
        if self.method not in dec.METHODS:
            raise ValueError(f"LowRankConfig.method = {self.method!r} must be one of {', '.join(dec.METHODS)}"
                             f"{suggest(str(self.method), dec.METHODS)}")
        if (self.rank is None) == (self.target is None):
            raise ValueError("LowRankConfig needs exactly one of rank (e.g. 0.5, energy=0.9, vbmf) and target "
                             f"(e.g. macs=0.5); got rank={self.rank!r}, target={self.target!r}")
        if self.rank is not None:
            parse_rank(self.rank, self.method, "LowRankConfig.rank")
        if self.target is not None:
            from edgecompress.prune.structured import Target

            Target.parse(self.target)
        if self.sensitivity not in SENSITIVITIES:
            raise ValueError(f"LowRankConfig.sensitivity = {self.sensitivity!r} must be one of "
                             f"{', '.join(SENSITIVITIES)}")
        if not self.ratios or any(not (0 < r < 1) for r in self.ratios):
            raise ValueError(f"LowRankConfig.ratios = {list(self.ratios)} must be a non-empty list of rank ratios "
                             "in (0, 1)")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise ValueError(f"LowRankConfig.round_to = {self.round_to!r} must be an integer >= 1")
        if not (math.isfinite(self.min_speedup) and self.min_speedup >= 1):
            raise ValueError(f"LowRankConfig.min_speedup = {self.min_speedup!r} must be >= 1 (1.03: 3% faster)")
        for pattern in self.ignore:
            _compile(pattern, "LowRankConfig.ignore")
        for pattern, over in self.overrides.items():
            _compile(pattern, "LowRankConfig.overrides")
            if not isinstance(over, Mapping):
                raise ValueError(f"LowRankConfig.overrides[{pattern!r}] must be a mapping with method and/or rank")
            check_keys(f"LowRankConfig.overrides[{pattern!r}] key", over, ("method", "rank"))
            method = over.get("method", self.method)
            if method not in dec.METHODS:
                raise ValueError(f"LowRankConfig.overrides[{pattern!r}].method = {method!r} must be one of "
                                 f"{', '.join(dec.METHODS)}")
            if "rank" not in over and self.rank is None:
                raise ValueError(f"LowRankConfig.overrides[{pattern!r}] needs a rank when the config has a target")
            if "rank" in over:
                parse_rank(over["rank"], method, f"LowRankConfig.overrides[{pattern!r}].rank")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"], d["ignore"] = list(self.ratios), list(self.ignore)
        return d


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where} pattern {pattern!r} is not a regular expression ({exc})") from None


@dataclass
class LayerPlan:
    """One Conv2d/Linear: what factorize_ did with it (status 'factorized' or 'skipped', with the reason)."""

    name: str
    kind: str  # Conv2d k x k / Linear
    status: str
    method: str | None = None
    rank: Any = None  # int, or [rank_in, rank_out] for tucker2
    full_rank: Any = None
    rel_error: float | None = None  # ||W - W_hat||_F / ||W||_F
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    latency_before_ms: float | None = None  # the layer alone, timed on the device
    latency_after_ms: float | None = None
    reason: str = ""

    def line(self) -> str:
        if self.status != "factorized":
            return f"{self.name}: left alone ({self.reason})"
        rank = "x".join(str(r) for r in self.rank) if isinstance(self.rank, (list, tuple)) else str(self.rank)
        full = "x".join(str(r) for r in self.full_rank) if isinstance(self.full_rank, (list, tuple)) else str(self.full_rank)
        text = (f"{self.name}: {self.method} rank {rank}/{full}, error {self.rel_error:.3f}, MACs "
                f"x{self.macs_after / max(self.macs_before, 1):.2f}")
        if self.latency_before_ms is not None and self.latency_after_ms:
            text += f", {self.latency_before_ms / self.latency_after_ms:.2f}x faster alone"
        return text


@dataclass
class FactorizeResult:
    """What factorize_ did to the model; MACs/params counted before and after."""

    layers: list[LayerPlan]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    target: str | None
    achieved: float | None = None  # the target's metric after (fraction or absolute, as the target)
    latency_before_ms: float | None = None  # of the factorized layers, summed, timed alone (with a timer)
    latency_after_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def factorized(self) -> list[LayerPlan]:
        return [p for p in self.layers if p.status == "factorized"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs_ratio"], d["params_ratio"] = self.macs_ratio, self.params_ratio
        return d

    def summary(self) -> str:
        slow = sum("not faster" in p.reason for p in self.layers)
        text = (f"factorized {len(self.factorized)} of {len(self.layers)} layers: MACs x{self.macs_ratio:.3f}, "
                f"params x{self.params_ratio:.3f}")
        return text + (f"; {slow} left alone because they were not faster on the device" if slow else "")


@dataclass
class _Candidate:
    name: str
    layer: nn.Module
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int
    params: int
    method: str
    rule: Any = None  # an override's rank, or None (the config's rule / the budget search)
    options: list[Any] = field(default_factory=list)  # ranks the budget search may take, by descending cost
    factors: dict[Any, Any] = field(default_factory=dict, repr=False)  # rank -> Factorized, decomposed once

    def factorized(self, rank: Any):
        """The layer decomposed at `rank` (CP's ALS is slow: sensitivity, timing and the swap share one result)."""
        if rank not in self.factors:
            self.factors[rank] = dec.decompose(self.layer, self.method, rank)
        return self.factors[rank]


def _kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size
        return f"Conv2d {k[0]}x{k[1]}" + (f" groups={layer.groups}" if layer.groups > 1 else "")
    return type(layer).__name__


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    return (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, 1)


def _rank_by_rule(layer: nn.Module, method: str, rule: Any, round_to: int) -> Any:
    mode, value = parse_rank(rule, method)
    if mode == "ratio":
        return dec.rank_for_ratio(layer, method, value, round_to)
    full = dec.full_rank(layer, method)
    if mode == "vbmf":
        ranks = dec.vbmf_ranks(layer)
    else:
        spectrum = dec.spectrum(layer, method)
        ranks = tuple(dec.energy_rank(s, value) for s in spectrum) if isinstance(spectrum, tuple) \
            else dec.energy_rank(spectrum, value)
    if isinstance(full, tuple):
        return tuple(min(f, _round_up(r, round_to)) for r, f in zip(ranks, full))
    return min(full, _round_up(ranks, round_to))


def _round_up(r: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(r / multiple)) * multiple)


def _macs(c: _Candidate, rank: Any) -> int:
    return dec.factorized_macs(c.layer, c.method, rank, c.in_hw, c.out_hw)


def _saves(c: _Candidate, rank: Any, metric: str) -> bool:
    if metric == "params":
        return dec.factorized_params(c.layer, c.method, rank) < c.params
    return _macs(c, rank) < c.macs


def factorize_(
    model: nn.Module,
    config: LowRankConfig,
    *,
    input_shape: tuple[int, int, int],
    evaluate: EvaluateFn | None = None,
    timer: Any = None,
) -> FactorizeResult:
    """Factorize `model`'s layers in place as `config` says; return what was done, per layer.

    `input_shape` is (C, H, W). `evaluate(model) -> top-1` is needed for
    `sensitivity: accuracy` with a target; `timer` (a `LayerTimer`) for latency targets
    and for leaving layers that are not faster on the device alone. UserError for a
    target factorization alone cannot reach (naming the smallest reachable value) and
    for a model with nothing to factorize; ValueError for a bad config.
    """
    from edgecompress.graph.cost import analyze
    from edgecompress.prune.structured import Target

    target = Target.parse(config.target) if config.target else None
    if target is not None and target.metric == "latency" and timer is None:
        raise UserError(f"target {config.target} needs latency measured on a device: pass a timer (the CLI: --device)")
    if config.sensitivity == "accuracy" and target is not None and evaluate is None:
        raise UserError("sensitivity accuracy measures each layer's accuracy drop: pass evaluate (the CLI and the "
                        "recipe step use the validation split), or use sensitivity error")
    was_training = model.training
    model.eval()
    analysis = analyze(model, tuple(input_shape))
    plans, candidates = _candidates(model, config, analysis)
    chosen: dict[str, Any] = {}
    searched: list[_Candidate] = []
    saving = "params" if target is not None and target.metric == "params" else "macs"
    for c in candidates:
        rule = c.rule if c.rule is not None else config.rank
        if rule is None:
            searched.append(c)
            continue
        rank = _rank_by_rule(c.layer, c.method, rule, config.round_to)
        if _saves(c, rank, saving):
            chosen[c.name] = rank
        else:
            plans[c.name].reason = _no_saving(c, rank, saving)
    measured: dict[tuple[str, Any], float] = {}  # (layer, rank or None) -> ms of the block alone
    notes: list[str] = []
    model_ms = timer.model_ms(model, input_shape) if target is not None and target.metric == "latency" else None
    if searched:
        _budget_search(model, candidates, searched, chosen, plans, config, target, analysis, evaluate, timer, measured, model_ms)
    elif timer is not None:
        for name in _undo_slower(candidates, chosen, plans, config, timer, measured):
            chosen.pop(name)
    # Modules are swapped only now: every error above left the model as it was.
    byname = {c.name: c for c in candidates}
    for name, rank in chosen.items():
        c, plan = byname[name], plans[name]
        fac = c.factorized(rank)
        fac.module.train(was_training)
        model.set_submodule(name, fac.module)
        plan.status, plan.method, plan.reason = "factorized", c.method, ""
        plan.rank, plan.full_rank = _plain(rank), _plain(fac.full_rank)
        plan.rel_error = float(fac.rel_error)
        plan.macs_after = _macs(c, rank)
        plan.params_after = dec.factorized_params(c.layer, c.method, rank)
        if (name, rank) in measured:
            plan.latency_before_ms, plan.latency_after_ms = measured[(name, None)], measured[(name, rank)]
    model.train(was_training)
    after = analyze(model, tuple(input_shape))
    result = FactorizeResult(list(plans.values()), analysis.total_macs, after.total_macs, analysis.total_params,
                             after.total_params, config.target, notes=notes)
    timed = [p for p in result.factorized if p.latency_before_ms is not None]
    if timed:
        result.latency_before_ms = sum(p.latency_before_ms for p in timed)
        result.latency_after_ms = sum(p.latency_after_ms for p in timed)
    if target is not None:
        if target.metric == "latency":
            after_ms = timer.model_ms(model, input_shape)
            notes.append(f"whole model on {timer.name}: {model_ms:.4f} ms before, {after_ms:.4f} ms after "
                         f"({model_ms / after_ms:.2f}x)")
            result.achieved = after_ms / model_ms if target.fraction else after_ms
        else:
            value, base = ((result.macs_after, result.macs_before) if target.metric == "macs"
                           else (result.params_after, result.params_before))
            result.achieved = value / base if target.fraction else float(value)
    return result


def _plain(rank: Any) -> Any:
    return [int(r) for r in rank] if isinstance(rank, tuple) else int(rank)


def _no_saving(c: _Candidate, rank: Any, saving: str) -> str:
    before, after = (c.params, dec.factorized_params(c.layer, c.method, rank)) if saving == "params" \
        else (c.macs, _macs(c, rank))
    return f"{c.method} at rank {_plain(rank)} would not save {saving} ({after:,} vs {before:,})"


def _candidates(model: nn.Module, config: LowRankConfig, analysis) -> tuple[dict[str, LayerPlan], list[_Candidate]]:
    """A plan (skipped, with the reason, until chosen) for every Conv2d/Linear, and the layers the method can take."""
    shapes = {layer.name: layer for layer in analysis.layers}
    ignore = [_compile(p, "ignore") for p in config.ignore]
    overrides = [(_compile(p, "overrides"), o) for p, o in config.overrides.items()]
    plans: dict[str, LayerPlan] = {}
    candidates: list[_Candidate] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or name not in shapes:
            continue
        cost = shapes[name]
        plan = LayerPlan(name, _kind(layer), "skipped", macs_before=cost.macs, macs_after=cost.macs,
                         params_before=cost.params, params_after=cost.params)
        plans[name] = plan
        override = next((o for rx, o in overrides if rx.search(name)), {})
        method = override.get("method", config.method)
        if any(rx.search(name) for rx in ignore):
            plan.reason = "ignored by the config"
            continue
        why = dec.unsupported(layer, method)
        if why:
            plan.reason = f"{method} cannot factorize it: {why}"
            continue
        candidates.append(_Candidate(name, layer, _hw(cost.input_shape), _hw(cost.output_shape), cost.macs,
                                     cost.params, method, override.get("rank")))
    if not candidates:
        reasons = sorted({p.reason for p in plans.values()})
        raise UserError(f"{config.method} finds no layer to factorize among this model's {len(plans)} Conv2d/Linear "
                        f"layers ({'; '.join(reasons[:3]) or 'it has none'}); try another method")
    return plans, candidates


# --- the budget search ----------------------------------------------------------------


def _budget_search(model, candidates, searched, chosen, plans, config, target, analysis, evaluate, timer, measured,
                   model_ms) -> None:
    """Fill `chosen` for the `searched` layers greedily until `target` is met (UserError if it cannot be)."""
    saving = "params" if target.metric == "params" else "macs"
    for c in searched:
        for ratio in config.ratios:
            rank = dec.rank_for_ratio(c.layer, c.method, ratio, config.round_to)
            if rank not in c.options and _saves(c, rank, saving):
                c.options.append(rank)
        c.options.sort(key=lambda r: -_macs(c, r))  # descending cost: the greedy walks down
        if not c.options:
            plans[c.name].reason = f"no rank in the ratios grid saves {saving} with {c.method}"
    pool = [c for c in searched if c.options]
    fixed = [c for c in candidates if c.name in chosen]  # an override's rule fixed their rank
    if target.metric == "latency":
        _time_options(pool, fixed, chosen, timer, measured)
    fixed_saving = sum(_cost(c, None, target.metric, measured) - _cost(c, chosen[c.name], target.metric, measured)
                       for c in fixed)
    sens = _sensitivities(model, pool, config, evaluate)
    excluded: set[str] = set()
    while True:
        picks = _greedy([c for c in pool if c.name not in excluded], fixed_saving, target, analysis, measured, sens,
                        model_ms, excluded)
        slower = _undo_slower(pool, picks, plans, config, timer, measured) if timer is not None else set()
        if not slower:
            break
        excluded |= slower  # re-plan the budget without the layers the device does not speed up
    chosen.update(picks)
    for c in pool:
        if c.name not in chosen and not plans[c.name].reason:
            plans[c.name].reason = f"not needed: the budget {target} was met without it"


def _cost(c: _Candidate, rank: Any, metric: str, measured) -> float:
    if metric == "latency":
        return measured[(c.name, rank)]
    if rank is None:
        return c.macs if metric == "macs" else c.params
    return _macs(c, rank) if metric == "macs" else dec.factorized_params(c.layer, c.method, rank)


def _greedy(pool, fixed_saving, target, analysis, measured, sens, model_ms, excluded) -> dict[str, Any]:
    """Per layer, the rank the greedy descent stops at: the least sensitivity per unit of cost saved first."""
    metric = target.metric
    whole = {"macs": analysis.total_macs, "params": analysis.total_params, "latency": model_ms}[metric]
    budget = target.value * whole if target.fraction else target.value
    total = float(whole) - fixed_saving
    state: dict[str, int] = {c.name: -1 for c in pool}  # -1: whole; i: c.options[i]
    cost = {c.name: _cost(c, None, metric, measured) for c in pool}
    while total > budget:
        best = None
        for c in pool:
            i = state[c.name]
            here = 0.0 if i < 0 else sens[(c.name, c.options[i])]
            for j in range(i + 1, len(c.options)):
                saved = cost[c.name] - _cost(c, c.options[j], metric, measured)
                if saved > 0:
                    score = (sens[(c.name, c.options[j])] - here) / saved
                    if best is None or score < best[0]:
                        best = (score, c, j, saved)
        if best is None:
            left = f"; {len(excluded)} layers are left whole because they were not faster on the device" \
                if excluded else ""
            raise UserError(f"target {target} cannot be reached by factorization alone: with every layer at its "
                            f"smallest rank in the ratios grid the model keeps {total / whole:.3f} of its {metric}"
                            f"{left}; add smaller ratios, prune first (a prune step before factorize), or raise "
                            "the target")
        _, c, j, saved = best
        state[c.name] = j
        cost[c.name] -= saved
        total -= saved
    return {c.name: c.options[state[c.name]] for c in pool if state[c.name] >= 0}


def _sensitivities(model, pool, config, evaluate) -> dict[tuple[str, Any], float]:
    """(layer, rank) -> cost of the approximation: weight error, or the top-1 drop with that layer alone factorized."""
    from rich.progress import track

    out: dict[tuple[str, Any], float] = {}
    jobs = [(c, rank) for c in pool for rank in c.options]
    base = evaluate(model) if config.sensitivity == "accuracy" else None
    for c, rank in track(jobs, description="low-rank sensitivity", transient=True, disable=len(jobs) < 20):
        fac = c.factorized(rank)
        if base is None:
            out[(c.name, rank)] = float(fac.rel_error) ** 2  # the fraction of the weight's energy lost
            continue
        fac.module.eval()
        model.set_submodule(c.name, fac.module)
        try:
            out[(c.name, rank)] = base - float(evaluate(model))
        finally:
            model.set_submodule(c.name, c.layer)
    return out


# --- on the device ----------------------------------------------------------------------


def _block_input(c: _Candidate) -> tuple[int, ...]:
    if isinstance(c.layer, nn.Linear):
        return (c.layer.in_features,)
    return (c.layer.in_channels, *c.in_hw)


def _time(pairs: list[tuple[_Candidate, Any]], timer, measured) -> None:
    """Time every (layer, rank) not yet timed (rank None: the original layer), interleaved in one batch."""
    unique = {(c.name, r): (c, r) for c, r in pairs if (c.name, r) not in measured}
    todo = list(unique.values())
    if not todo:
        return
    blocks = [(c.layer if r is None else c.factorized(r).module, _block_input(c)) for c, r in todo]
    for (c, r), ms in zip(todo, timer.time_blocks(blocks)):
        measured[(c.name, r)] = ms


def _time_options(pool, fixed, chosen, timer, measured) -> None:
    pairs = [(c, None) for c in [*pool, *fixed]] + [(c, r) for c in pool for r in c.options]
    _time(pairs + [(c, chosen[c.name]) for c in fixed], timer, measured)


def _undo_slower(cands, picks, plans, config, timer, measured) -> set[str]:
    """Names of the picked layers whose factors, timed alone on the device, are not `min_speedup` faster."""
    byname = {c.name: c for c in cands}
    pairs = [(byname[n], r) for n, r in picks.items() if n in byname]
    _time([(c, None) for c, _ in pairs] + pairs, timer, measured)
    slower = set()
    for c, r in pairs:
        before, after = measured[(c.name, None)], measured[(c.name, r)]
        if after * config.min_speedup > before:
            slower.add(c.name)
            plans[c.name].latency_before_ms, plans[c.name].latency_after_ms = before, after
            plans[c.name].reason = (f"not faster on {timer.name}: {c.method} rank {_plain(r)} took {after:.4f} ms "
                                    f"alone vs {before:.4f} ms whole ({before / after:.2f}x, needs "
                                    f"{config.min_speedup:.2f}x)")
    return slower
