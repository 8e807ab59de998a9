"""Structured channel pruning with physical removal: `prune_(model, PruneConfig(...))`.

The unit of work is a `ChannelGroup` (edgecompress.graph.groups): its units are scored
by an importance criterion, the least important are removed from every member layer at
once (weights, biases, BatchNorm statistics, groups of a grouped conv), and what is left
is an ordinary `nn.Module` with smaller layers: it saves, reloads and exports like any
other model.

How many units each group keeps comes from one of:
- a uniform `ratio` (fraction of units removed from every prunable group);
- a `target` on MACs, params or latency (fraction of the original, or absolute), met by
  bisection over a uniform ratio or over a global importance threshold (`ranking`);
- per-group `overrides` (regex on a producer's name -> ratio), e.g. a search policy.

Kept widths are rounded to multiples of `round_to` channels, because runtimes pick their
fast kernels by channel count: ONNX Runtime's NCHWc convolutions on AVX2 need multiples
of 8 (measured: a MobileNetV2 at 50% MACs ran 0.87x the dense speed unrounded and 1.78x
rounded). The right value is a property of the device and runtime; device profiles
carry it.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from edgecompress.errors import UserError, check_keys, suggest
from edgecompress.graph.groups import ChannelGroup, build_groups

METRICS = ("macs", "params", "latency")
RANKINGS = ("uniform", "global")
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class Target:
    """A budget: `metric` at most `value` (a fraction of the original if `fraction`, else absolute: MACs, params or ms)."""

    metric: str
    value: float
    fraction: bool

    @classmethod
    def parse(cls, text: str) -> Target:
        """'macs=0.5' (half the MACs), 'params=1.2M', 'latency=0.6' or 'latency=3.5ms'."""
        if not isinstance(text, str) or "=" not in text:
            raise ValueError(f"target {text!r} must look like macs=0.5, params=1.2M or latency=3.5ms")
        metric, _, raw = text.partition("=")
        metric, raw = metric.strip().lower(), raw.strip().lower()
        if metric not in METRICS:
            raise ValueError(f"target metric {metric!r} must be one of {', '.join(METRICS)}" + suggest(metric, METRICS))
        scale, absolute = 1.0, False
        if metric == "latency" and raw.endswith("ms"):
            raw, absolute = raw[:-2], True
        elif raw and raw[-1] in _SUFFIX and metric != "latency":
            raw, scale, absolute = raw[:-1], _SUFFIX[raw[-1]], True
        try:
            value = float(raw) * scale
        except ValueError:
            raise ValueError(f"target value {text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"target {text!r} must be > 0")
        fraction = not absolute and value <= 1
        if fraction and value >= 1:
            raise ValueError(f"target {text!r} keeps everything; use a fraction below 1, e.g. {metric}=0.5")
        return cls(metric, value, fraction)

    def __str__(self) -> str:
        unit = "ms" if self.metric == "latency" and not self.fraction else ""
        return f"{self.metric}={self.value:g}{unit}"


@dataclass(frozen=True)
class PruneConfig:
    """What `prune_` removes.

    ratio: fraction of units removed from every prunable group, in [0, 1).
    target: a budget string ('macs=0.5', 'params=2M', 'latency=0.6', 'latency=3ms'); with
        it `ratio` must be None. Latency targets need a `latency_fn` passed to prune_.
    ranking: "uniform" (one ratio for all groups, found by bisection) or "global" (one
        threshold on per-group normalised importance across all groups).
    importance: criterion name (edgecompress.prune.importance: l1, l2, bn_scale, taylor, fpgm, random).
    overrides: regex on a producer's module name -> ratio for the groups it matches;
        these keep that ratio whatever the target.
    ignore: regexes on module names; groups with a matching member are left whole.
    round_to: kept channel counts are multiples of this (1: no rounding).
    min_channels: no group keeps fewer channels than this.
    """

    ratio: float | None = None
    target: str | None = None
    ranking: str = "uniform"
    importance: str = "l2"
    overrides: Mapping[str, float] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    round_to: int = 8
    min_channels: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "overrides", dict(self.overrides))
        if self.ratio is not None and not (_number(self.ratio) and 0 <= self.ratio < 1):
            raise ValueError(f"PruneConfig.ratio = {self.ratio!r} must be in [0, 1) (the fraction of channels removed)")
        if self.target is not None:
            Target.parse(self.target)
            if self.ratio is not None:
                raise ValueError("PruneConfig: give either ratio or target, not both")
        if self.ranking not in RANKINGS:
            raise ValueError(f"PruneConfig.ranking = {self.ranking!r} must be one of {', '.join(RANKINGS)}"
                             + suggest(str(self.ranking), RANKINGS))
        for pattern, r in self.overrides.items():
            _compile(pattern, "overrides")
            if not (_number(r) and 0 <= r < 1):
                raise ValueError(f"PruneConfig.overrides[{pattern!r}] = {r!r} must be in [0, 1)")
        for pattern in self.ignore:
            _compile(pattern, "ignore")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise ValueError(f"PruneConfig.round_to = {self.round_to!r} must be an integer >= 1")
        if not (isinstance(self.min_channels, int) and self.min_channels >= 1):
            raise ValueError(f"PruneConfig.min_channels = {self.min_channels!r} must be an integer >= 1")
        if self.ratio is None and self.target is None and not self.overrides:
            raise ValueError("PruneConfig needs a ratio, a target or overrides")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ignore"] = list(self.ignore)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneConfig:
        check_keys("PruneConfig key", data, (f.name for f in fields(cls)))
        return cls(**data)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"PruneConfig.{where}: {pattern!r} is not a valid regex ({exc})") from None


@dataclass(frozen=True)
class GroupPlan:
    """One group's outcome: widths are those of its widest producer, in channels."""

    producers: tuple[str, ...]
    width_before: int
    width_after: int
    units_before: int
    units_after: int
    why_whole: str = ""  # why it was left whole (ignored, not prunable, too small to round)


@dataclass
class PruneResult:
    """What `prune_` did; MACs and params measured on the model before and after."""

    groups: list[GroupPlan]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    target: str | None
    achieved: float | None  # the target metric after pruning, same units as the target
    setting: float | None  # the uniform ratio or global threshold that met the target
    warnings: list[str] = field(default_factory=list)
    latency_before_ms: float | None = None  # measured by latency_fn, for latency targets
    latency_after_ms: float | None = None
    # A joint search policy (SearchSpace.prune): what factorize_ did after pruning (its
    # to_dict, factorized layers only); macs_after / params_after are then of that model.
    factorized: dict[str, Any] | None = None

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["factorized"] is None:
            del d["factorized"]
        d["macs_ratio"], d["params_ratio"] = self.macs_ratio, self.params_ratio
        return d


LatencyFn = Callable[[nn.Module], float]  # ms of a candidate model on the target device


def prune_(
    model: nn.Module,
    config: PruneConfig,
    *,
    input_shape: tuple[int, int, int],
    latency_fn: LatencyFn | None = None,
    importance_fn: Callable[[nn.Module, ChannelGroup], torch.Tensor] | None = None,
) -> PruneResult:
    """Prune `model` in place as `config` says and return what was done.

    `input_shape` is (C, H, W). `latency_fn(model) -> ms` is needed for latency targets
    (e.g. export + measure on the device). `importance_fn` replaces the configured
    criterion (e.g. one holding data or gradients). Raises UserError for a target the
    model cannot reach (naming the reachable minimum) and ValueError for a bad config.
    Nothing in `model` changes when an error is raised.
    """
    from edgecompress.graph.cost import analyze

    target = Target.parse(config.target) if config.target else None
    if target and target.metric == "latency" and latency_fn is None:
        raise UserError(f"target {config.target} needs a latency measurement: pass latency_fn (the CLI: --device)")
    groups = build_groups(model, input_shape)
    notes: list[str] = []
    whole, fixed = _fixed_choices(model, groups, config, notes)
    if importance_fn is None:
        from edgecompress.prune.importance import get_importance

        importance_fn = get_importance(config.importance)
    score = importance_fn
    was_training = model.training
    model.eval()
    scores = {i: score(model, g).detach().double() for i, g in enumerate(groups) if i not in whole}
    model.train(was_training)
    base = analyze(model, input_shape)
    layer_cost = {layer.name: (layer.macs, layer.params) for layer in base.layers}
    modules = dict(model.named_modules())
    steps = {i: _rounding(g, config) for i, g in enumerate(groups)}
    for i, (step, lo) in list(steps.items()):
        if i not in whole and lo >= len(groups[i].units):
            whole[i] = (f"{groups[i].width} channels: cannot keep fewer at multiples of {config.round_to} "
                        f"and at least {config.min_channels}")

    def keep_counts(setting: float, mode: str) -> dict[int, int]:
        counts = {}
        for i, g in enumerate(groups):
            n = len(g.units)
            if i in whole:
                counts[i] = n
            elif i in fixed:
                counts[i] = _round_units(n * (1 - fixed[i]), *steps[i], n)
            elif mode == "ratio":
                counts[i] = _round_units(n * (1 - setting), *steps[i], n)
            else:  # global threshold on normalised scores
                s = scores[i] / scores[i].mean().clamp_min(1e-12)
                counts[i] = _round_units(float((s >= setting).sum()), *steps[i], n)
        return counts

    def estimate(counts: dict[int, int]) -> tuple[float, float]:
        masks = _masks(model, groups, _chosen(groups, scores, counts))
        macs = params = 0.0
        for name, (m, p) in layer_cost.items():
            f = _shrink(modules, name, masks)
            macs, params = macs + m * f, params + p * f
        return macs, params

    setting: float | None = None
    base_ms = latency_fn(model) if target is not None and target.metric == "latency" else None  # type: ignore[misc]
    if target is None:
        counts = keep_counts(config.ratio or 0.0, "ratio")
    else:
        counts, setting = _solve(model, groups, scores, target, config.ranking, keep_counts, estimate,
                                 base.total_macs, base.total_params, latency_fn, base_ms)
        if target.metric != "latency":
            counts = _fill(groups, scores, steps, set(whole) | set(fixed), counts, estimate, target,
                           base.total_macs if target.metric == "macs" else base.total_params)
    plan = _chosen(groups, scores, counts)
    masks = _masks(model, groups, plan)
    backup = copy.deepcopy(model.state_dict())
    attrs = _shape_attrs(model)
    try:
        _apply(model, masks)
        _check_forward(model, input_shape, base)
    except Exception:
        _restore(model, attrs, backup)
        raise
    after = analyze(model, input_shape)
    achieved = after_ms = None
    if target is not None:
        if target.metric == "latency":
            after_ms = latency_fn(model)  # type: ignore[misc]
            achieved = after_ms / base_ms if target.fraction else after_ms  # type: ignore[operator]
        else:
            achieved = after.total_macs if target.metric == "macs" else after.total_params
            if target.fraction:
                achieved /= base.total_macs if target.metric == "macs" else base.total_params
    return PruneResult(
        groups=[_plan_row(g, counts[i], whole.get(i, "")) for i, g in enumerate(groups)],
        macs_before=base.total_macs, macs_after=after.total_macs,
        params_before=base.total_params, params_after=after.total_params,
        target=str(target) if target else None, achieved=achieved, setting=setting, warnings=notes,
        latency_before_ms=base_ms, latency_after_ms=after_ms,
    )


def _fixed_choices(model: nn.Module, groups: list[ChannelGroup], config: PruneConfig, notes: list[str]
                   ) -> tuple[dict[int, str], dict[int, float]]:
    """Groups left whole (with why) and groups with an override ratio."""
    whole: dict[int, str] = {}
    fixed: dict[int, float] = {}
    names = [n for n, _ in model.named_modules()]
    for pattern in config.ignore:
        rx = re.compile(pattern)
        if not any(rx.search(n) for n in names):
            notes.append(f"ignore pattern {pattern!r} matches no module; nothing was ignored by it")
            warnings.warn(notes[-1], stacklevel=3)
    for pattern in config.overrides:
        rx = re.compile(pattern)
        if not any(rx.search(p) for g in groups if g.prunable for p in g.producers):
            notes.append(f"override pattern {pattern!r} matches no prunable layer")
            warnings.warn(notes[-1], stacklevel=3)
    for i, g in enumerate(groups):
        if not g.prunable:
            whole[i] = g.reason
            continue
        hit = next((p for p in config.ignore for m in g.members if re.search(p, m.name)), None)
        if hit is not None:
            whole[i] = f"ignored ({hit!r})"
            continue
        for pattern, r in config.overrides.items():
            if any(re.search(pattern, p) for p in g.producers):
                fixed[i] = r
    return whole, fixed


def _rounding(g: ChannelGroup, config: PruneConfig) -> tuple[int, int]:
    """(step, minimum) in units so kept widths are multiples of round_to and >= min_channels."""
    per_unit = max(1, g.width // max(1, len(g.units)))
    step = config.round_to // math.gcd(config.round_to, per_unit)
    lo = max(step, math.ceil(config.min_channels / per_unit / step) * step)
    return step, lo


def _round_units(want: float, step: int, lo: int, n: int) -> int:
    """Nearest multiple of `step` to `want`, at least `lo`; all `n` if that would not cut anything."""
    k = max(lo, int(round(want / step)) * step)
    return n if k >= n else k


def _solve(model, groups, scores, target: Target, ranking: str, keep_counts, estimate, macs0: int, params0: int,
           latency_fn: LatencyFn | None, base_ms: float | None) -> tuple[dict[int, int], float]:
    """Bisection on the uniform ratio (or the global threshold) for the loosest setting meeting the target."""
    if target.metric == "latency":
        goal = target.value * base_ms if target.fraction else target.value  # type: ignore[operator]

        def measure(counts: dict[int, int]) -> float:
            trial = copy.deepcopy(model)
            _apply(trial, _masks(trial, groups, _chosen(groups, scores, counts)))
            return latency_fn(trial)  # type: ignore[misc]
        iterations = 7  # each step is an export + measurement
    else:
        whole = macs0 if target.metric == "macs" else params0
        goal = target.value * whole if target.fraction else target.value
        pick = 0 if target.metric == "macs" else 1

        def measure(counts: dict[int, int]) -> float:
            return estimate(counts)[pick]
        iterations = 40

    mode = "ratio" if ranking == "uniform" else "threshold"
    hi = 0.999 if mode == "ratio" else max(float((s / s.mean().clamp_min(1e-12)).max()) for s in scores.values()) + 1e-9 \
        if scores else 1.0
    tightest = keep_counts(hi, mode)
    floor = measure(tightest)
    if floor > goal:
        reach = floor / (base_ms if target.metric == "latency" else whole) if target.fraction else floor  # type: ignore[operator]
        unit = "" if target.fraction else (" ms" if target.metric == "latency" else "")
        raise UserError(f"target {target} cannot be reached: pruning every prunable group to its minimum gives "
                        f"{target.metric} {reach:.4g}{unit}; raise the target, lower min_channels or round_to")
    lo_s, hi_s, best = 0.0, hi, (tightest, hi)
    seen: dict[tuple, float] = {}
    for _ in range(iterations):
        mid = (lo_s + hi_s) / 2
        counts = keep_counts(mid, mode)
        key = tuple(sorted(counts.items()))
        value = seen.get(key)
        if value is None:
            value = seen[key] = measure(counts)
        if value <= goal:
            hi_s, best = mid, (counts, mid)
        else:
            lo_s = mid
    return best


def _fill(groups, scores, steps, frozen: set[int], counts: dict[int, int], estimate, target: Target,
          whole_value: int) -> dict[int, int]:
    """Give back rounding steps while the budget holds: coarse rounding (16 channels) lands well under
    a target by bisection alone. Steps go back to the groups whose next units score highest."""
    pick = 0 if target.metric == "macs" else 1
    goal = target.value * whole_value if target.fraction else target.value
    counts = dict(counts)
    ranked = {i: torch.sort(scores[i] / scores[i].mean().clamp_min(1e-12), descending=True).values
              for i in scores if i not in frozen}
    changed = True
    while changed:
        changed = False
        order = sorted((i for i in ranked if counts[i] + steps[i][0] <= len(groups[i].units)),
                       key=lambda i: -float(ranked[i][counts[i]:counts[i] + steps[i][0]].mean()))
        for i in order:
            trial = {**counts, i: counts[i] + steps[i][0]}
            if estimate(trial)[pick] <= goal:
                counts, changed = trial, True
                break
    return counts


def _chosen(groups: list[ChannelGroup], scores: dict[int, torch.Tensor], counts: dict[int, int]) -> dict[int, list[int]]:
    """For every group to cut: the kept units (top-`count` by score, in their original order)."""
    plan = {}
    for i, g in enumerate(groups):
        if counts[i] >= len(g.units):
            continue
        order = torch.argsort(scores[i], descending=True, stable=True)[: counts[i]]
        plan[i] = sorted(order.tolist())
    return plan


Masks = dict[tuple[str, str], torch.Tensor]  # (module, "in"|"out") -> bool keep mask


def _masks(model: nn.Module, groups: list[ChannelGroup], plan: dict[int, list[int]]) -> Masks:
    modules = dict(model.named_modules())
    masks: Masks = {}
    for i, kept_units in plan.items():
        g = groups[i]
        kept = torch.zeros(g.channels, dtype=torch.bool)
        for u in kept_units:
            kept[list(g.units[u])] = True
        for m in g.members:
            drop = torch.tensor(m.positions, dtype=torch.long)[~kept[torch.tensor(m.atoms, dtype=torch.long)]]
            for side in _SIDES[m.kind]:
                key = (m.name, side)
                if key not in masks:
                    width = _param_dim(model, m.name)[1] if side == "param" else _width(modules[m.name], side)
                    masks[key] = torch.ones(width, dtype=torch.bool)
                masks[key][drop] = False
    return masks


_SIDES = {"out": ("out",), "group_out": ("out",), "in": ("in",), "group_in": ("in",), "norm": ("out",),
          "depthwise": ("in", "out"), "param": ("param",)}


def _param_dim(model: nn.Module, name: str) -> tuple[int, int]:
    """(dim, size) of a per-channel tensor's one dimension longer than 1."""
    t = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
    (d,) = [i for i, size in enumerate(t.shape) if size > 1]
    return d, t.shape[d]


def _width(mod: nn.Module, side: str) -> int:
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels if side == "out" else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if side == "out" else mod.in_features
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return mod.num_features
    if isinstance(mod, nn.LayerNorm):
        return mod.normalized_shape[0]
    raise TypeError(f"cannot prune {type(mod).__name__}")


def _shrink(modules: dict[str, nn.Module], name: str, masks: Masks) -> float:
    """Fraction of a layer's MACs/params left under `masks` (in x out for dense layers)."""
    fin, fout = masks.get((name, "in")), masks.get((name, "out"))
    if fin is None and fout is None:
        return 1.0
    f_in = float(fin.float().mean()) if fin is not None else 1.0
    f_out = float(fout.float().mean()) if fout is not None else 1.0
    mod = modules.get(name)
    if isinstance(mod, nn.Conv2d) and mod.groups > 1:
        return f_out  # depthwise/grouped: cost follows the conv groups kept
    return f_in * f_out


def _apply(model: nn.Module, masks: Masks) -> None:
    """Physically remove the masked-out channels from each layer."""
    modules = dict(model.named_modules())
    for (name, side), keep in masks.items():
        if side == "param":  # a per-channel tensor used in forward (e.g. a layer scale)
            owner, _, attr = name.rpartition(".")
            d, _ = _param_dim(model, name)
            with torch.no_grad():
                _set(modules[owner], attr, getattr(modules[owner], attr).index_select(d, keep.nonzero().flatten()))
    for name in dict.fromkeys(n for n, side in masks if side != "param"):
        mod = modules[name]
        keep_in, keep_out = masks.get((name, "in")), masks.get((name, "out"))
        with torch.no_grad():
            if isinstance(mod, nn.Conv2d):
                groups = mod.groups
                if groups > 1 and keep_in is not None:
                    per_group = mod.in_channels // groups
                    groups = int(keep_in.sum()) // per_group
                w = mod.weight
                if keep_out is not None:
                    w = w[keep_out]
                if keep_in is not None and mod.groups == 1:
                    w = w[:, keep_in]
                _set(mod, "weight", w)
                if mod.bias is not None and keep_out is not None:
                    _set(mod, "bias", mod.bias[keep_out])
                mod.out_channels = w.shape[0]
                mod.in_channels = int(keep_in.sum()) if keep_in is not None else mod.in_channels
                mod.groups = groups
            elif isinstance(mod, nn.Linear):
                w = mod.weight
                if keep_out is not None:
                    w = w[keep_out]
                    if mod.bias is not None:
                        _set(mod, "bias", mod.bias[keep_out])
                if keep_in is not None:
                    w = w[:, keep_in]
                _set(mod, "weight", w)
                mod.out_features, mod.in_features = w.shape
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, attr, None) is not None:
                        _set(mod, attr, getattr(mod, attr)[keep_out])
                mod.num_features = int(keep_out.sum())
            elif isinstance(mod, nn.LayerNorm):
                for attr in ("weight", "bias"):
                    if getattr(mod, attr, None) is not None:
                        _set(mod, attr, getattr(mod, attr)[keep_out])
                mod.normalized_shape = (int(keep_out.sum()),)


def _set(mod: nn.Module, attr: str, value: torch.Tensor) -> None:
    value = value.detach().clone().contiguous()
    if isinstance(getattr(mod, attr), nn.Parameter):
        setattr(mod, attr, nn.Parameter(value, requires_grad=getattr(mod, attr).requires_grad))
    else:
        setattr(mod, attr, value)


_SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                "normalized_shape")


def _shape_attrs(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {n: {a: getattr(m, a) for a in _SHAPE_ATTRS if hasattr(m, a)} for n, m in model.named_modules()}


def _restore(model: nn.Module, attrs: dict[str, dict[str, Any]], state: dict[str, torch.Tensor]) -> None:
    """Undo a failed `_apply`: original shapes and tensors back."""
    for name, m in model.named_modules():
        for a, v in attrs.get(name, {}).items():
            setattr(m, a, v)
        for pname, _ in list(m.named_parameters(recurse=False)):
            key = f"{name}.{pname}" if name else pname
            setattr(m, pname, nn.Parameter(state[key].clone(), requires_grad=getattr(m, pname).requires_grad))
        for bname, buf in list(m.named_buffers(recurse=False)):
            key = f"{name}.{bname}" if name else bname
            if buf is not None and key in state:
                setattr(m, bname, state[key].clone())


def _check_forward(model: nn.Module, input_shape: tuple[int, int, int], base: Any) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise UserError(f"the pruned {type(model).__name__} fails its forward pass ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was changed — "
                        "please report the model; `ignore` the layers named in the error to prune the rest") from exc
    finally:
        model.train(was)
    expected = tuple(base.layers[-1].output_shape) if base.layers else None
    if isinstance(out, torch.Tensor) and expected and out.shape[1:] != torch.Size(expected[1:]) and len(expected) == out.dim():
        raise UserError(f"the pruned model's output shape {tuple(out.shape)} differs from the original {expected}; "
                        "nothing was changed")


def _plan_row(g: ChannelGroup, kept_units: int, why: str) -> GroupPlan:
    n = len(g.units)
    per_unit = g.width / max(1, n)
    return GroupPlan(producers=g.producers, width_before=g.width, width_after=round(kept_units * per_unit),
                     units_before=n, units_after=kept_units, why_whole=why)


def describe_result(result: PruneResult) -> list[str]:
    """Lines for a console: totals, then one line per group that was cut or left whole for a reason."""
    lines = [f"MACs {result.macs_before:,} -> {result.macs_after:,} ({result.macs_ratio:.1%}); "
             f"params {result.params_before:,} -> {result.params_after:,} ({result.params_ratio:.1%})"
             + (f"; measured latency {result.latency_before_ms:.3f} -> {result.latency_after_ms:.3f} ms"
                if result.latency_before_ms is not None and result.latency_after_ms is not None else "")]
    for gp in result.groups:
        name = gp.producers[0] if gp.producers else "(input)"
        more = f" +{len(gp.producers) - 1}" if len(gp.producers) > 1 else ""
        if gp.units_after < gp.units_before:
            lines.append(f"  {name}{more}: {gp.width_before} -> {gp.width_after} channels")
        elif gp.why_whole and gp.why_whole not in ("network input", "network output"):
            lines.append(f"  {name}{more}: left whole ({gp.why_whole})")
    return lines
