"""What a pruning search chooses from: one keep ratio per prunable channel group.

`SearchSpace.from_model(model, input_shape)` lists the groups `prune_` can cut (from
`build_groups`, in graph order), each with its allowed kept widths (the rounding rules of
`prune_`: multiples of `round_to` channels, at least `min_channels`, between `min_keep`
and `max_keep` of the group) and AMC's per-layer features (type, channels, kernel,
stride, feature-map size, MACs). A `Policy` is one keep ratio per group;
`space.apply(policy)` prunes a copy of the model with per-group overrides, and
`space.macs(policy)` / `space.params(policy)` estimate the result without pruning:
every layer's MACs scale with the kept fraction of the group it reads (input side) times
that of the group it writes (output side); depthwise and grouped convolutions follow
their output side only. For the zoo models (conv, depthwise, linear layers) the estimate
equals the pruned model's measured MACs exactly (tests/search/test_search_space.py).

`Constraint` is AMC's resource-constrained mode: decided layer by layer, each keep
ratio is cut down just enough that the budget stays reachable with every later group at
its minimum. `LinearLatencyModel` gives that clamp a latency estimate that is linear in
every group's kept width, fitted on a few measured probe models.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgecompress.errors import UserError, check_keys

METRICS = ("macs", "params", "latency")
LAYER_TYPES = ("conv", "depthwise", "grouped", "linear", "other")
# Columns of `SearchSpace.features()`: AMC's static per-layer description.
FEATURES = ("index", "type", "in_channels", "out_channels", "kernel", "stride", "feature_size", "macs")


@dataclass(frozen=True)
class Policy:
    """One keep ratio (fraction of a group's channels kept, in (0, 1]) per searchable group.

    `groups` names each group by its first producer, so a policy saved for one model is
    refused by another (`SearchSpace.check`).
    """

    keep: tuple[float, ...]
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(float(k) for k in self.keep))
        object.__setattr__(self, "groups", tuple(str(g) for g in self.groups))
        for i, k in enumerate(self.keep):
            if not (math.isfinite(k) and 0 < k <= 1):
                raise ValueError(f"Policy.keep[{i}] = {k!r} must be in (0, 1] (the fraction of channels kept)")
        if self.groups and len(self.groups) != len(self.keep):
            raise ValueError(f"Policy has {len(self.keep)} keep ratios but {len(self.groups)} group names")

    def __len__(self) -> int:
        return len(self.keep)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": [round(k, 6) for k in self.keep], "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping):
            raise ValueError("a policy must be a mapping with a 'keep' list (and optionally 'groups')")
        check_keys("policy key", data, ("keep", "groups"))
        if "keep" not in data:
            raise ValueError("a policy needs a 'keep' list: one keep ratio per group")
        return cls(tuple(data["keep"]), tuple(data.get("groups", ())))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"policy JSON does not parse ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """A policy file: `{"keep": [...], "groups": [...]}` or a search's best_policy.json (UserError if unreadable)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise UserError(f"cannot read policy file {str(path)!r} ({exc.strerror}); pass the best_policy.json "
                            "an `edgecompress search` wrote") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"policy file {str(path)!r} is not JSON ({exc})") from None
        if isinstance(data, Mapping) and "keep" not in data and "policy" in data:  # best_policy.json
            data = {"keep": data["policy"], "groups": data.get("groups", ())}
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise UserError(f"policy file {str(path)!r}: {exc}") from None

    def short(self, digits: int = 2) -> str:
        """The keep ratios on one line, for messages."""
        return "[" + ", ".join(f"{k:.{digits}f}" for k in self.keep) + "]"


@dataclass(frozen=True)
class GroupSpec:
    """One searchable group: its allowed kept widths and AMC's features.

    choices: the kept unit counts the group may take, ascending (units are what `prune_`
    keeps or removes; usually one unit = one channel). `step`/`lo` are `prune_`'s
    rounding (a multiple of `step` units, at least `lo`). Features describe the first
    producer: layer_type, in/out channels, kernel, stride, feature_size (H*W of its
    input, 1 for a Linear) and macs (MACs of every layer whose cost this group scales).
    """

    name: str
    producers: tuple[str, ...]
    slot: int  # index of the group in build_groups' list
    units: int
    width: int
    step: int
    lo: int
    choices: tuple[int, ...]
    layer_type: str = "conv"
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 1
    stride: int = 1
    feature_size: int = 1
    macs: int = 0

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or list(self.choices) != sorted(set(self.choices)):
            raise ValueError(f"GroupSpec {self.name}: choices {self.choices} must be >= 2 ascending unit counts")
        if not (1 <= self.choices[0] and self.choices[-1] <= self.units):
            raise ValueError(f"GroupSpec {self.name}: choices {self.choices} must lie in [1, {self.units}]")
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"GroupSpec.layer_type {self.layer_type!r} must be one of {', '.join(LAYER_TYPES)}")

    @property
    def min_keep(self) -> float:
        return self.choices[0] / self.units

    @property
    def max_keep(self) -> float:
        return self.choices[-1] / self.units

    def round_units(self, keep: float) -> int:
        """Units kept for a keep ratio: `prune_`'s rounding, then clipped to the choices."""
        k = max(self.lo, int(round(self.units * keep / self.step)) * self.step)
        k = self.units if k >= self.units else k
        return min(max(k, self.choices[0]), self.choices[-1])


@dataclass(frozen=True)
class LayerTerm:
    """How one layer's cost follows the groups: `ins`/`outs` are (slot, share of the width)."""

    name: str
    macs: int
    params_scaled: int  # weight elements: scale with in x out (out only when grouped)
    params_out: int  # bias / norm elements: scale with out
    grouped: bool
    ins: tuple[tuple[int, float], ...]
    outs: tuple[tuple[int, float], ...]


class SearchSpace:
    """The ordered searchable groups of a model and a fast cost model over them.

    Build it with `SearchSpace.from_model`; the constructor takes the parts for synthetic
    spaces (tests). `fixed` maps build_groups slots that are cut but not searched to the
    fraction they keep (prune_ rounds every prunable group, searched or not).
    """

    def __init__(
        self,
        groups: Sequence[GroupSpec],
        terms: Sequence[LayerTerm],
        *,
        slots: int,
        total_macs: int,
        total_params: int,
        input_shape: tuple[int, ...] = (),
        fixed: Mapping[int, float] | None = None,
        round_to: int = 8,
        min_channels: int = 8,
        importance: str = "l2",
        ignore: tuple[str, ...] = (),
        skipped: Sequence[tuple[str, str]] = (),
        model: nn.Module | None = None,
    ) -> None:
        if not groups:
            raise UserError("the search space is empty: no channel group can be pruned at these settings "
                            f"(round_to={round_to}, min_channels={min_channels}); lower them, or see "
                            "`edgecompress analyze` for what blocks pruning")
        self.groups = list(groups)
        self.terms = list(terms)
        self.slots = slots
        self.total_macs, self.total_params = int(total_macs), int(total_params)
        self.input_shape = tuple(input_shape)
        self.fixed = dict(fixed or {})
        self.round_to, self.min_channels = round_to, min_channels
        self.importance, self.ignore = importance, tuple(ignore)
        self.skipped = list(skipped)
        self.model = model
        self._build_matrices()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        *,
        round_to: int = 8,
        min_keep: float = 0.2,
        max_keep: float = 1.0,
        min_channels: int = 8,
        importance: str = "l2",
        ignore: Sequence[str] = (),
    ) -> SearchSpace:
        """The searchable groups of `model` at `input_shape` (C, H, W).

        A group is searchable when `prune_` may cut it (prunable, not `ignore`d by a regex
        on a member's module name) and it has at least two kept widths between `min_keep`
        and `max_keep` after rounding to multiples of `round_to` channels and at least
        `min_channels`. The model is kept (not copied) for `apply`.
        """
        from edgecompress.graph.cost import analyze
        from edgecompress.graph.groups import build_groups

        if not (isinstance(min_keep, (int, float)) and 0 < min_keep <= 1):
            raise ValueError(f"min_keep = {min_keep!r} must be in (0, 1]")
        if not (isinstance(max_keep, (int, float)) and min_keep <= max_keep <= 1):
            raise ValueError(f"max_keep = {max_keep!r} must be in [min_keep, 1] (min_keep = {min_keep})")
        if not (isinstance(round_to, int) and round_to >= 1):
            raise ValueError(f"round_to = {round_to!r} must be an integer >= 1")
        if not (isinstance(min_channels, int) and min_channels >= 1):
            raise ValueError(f"min_channels = {min_channels!r} must be an integer >= 1")
        ignore = tuple(ignore)
        for pattern in ignore:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"ignore: {pattern!r} is not a valid regex ({exc})") from None
        raw = build_groups(model, input_shape)
        base = analyze(model, input_shape)
        modules = dict(model.named_modules())
        records = {layer.name: layer for layer in base.layers}
        specs: list[GroupSpec] = []
        fixed: dict[int, float] = {}  # cut by prune_'s rounding though not searched
        skipped: list[tuple[str, str]] = []
        for slot, g in enumerate(raw):
            name = g.producers[0] if g.producers else "(input)"
            if not g.prunable:
                continue
            if any(re.search(p, m.name) for p in ignore for m in g.members):
                skipped.append((name, "ignored"))
                continue
            n = len(g.units)
            per_unit = max(1, g.width // max(1, n))
            # prune_'s rounding: a multiple of `step` units (round_to channels), at least `lo`
            step = round_to // math.gcd(round_to, per_unit)
            lo = max(step, math.ceil(min_channels / per_unit / step) * step)
            if lo >= n:
                skipped.append((name, f"{g.width} channels: cannot keep fewer at multiples of {round_to} "
                                      f"and at least {min_channels}"))
                continue
            probe = GroupSpec(name, g.producers, slot, n, g.width, step, lo, (lo, n))
            low, high = probe.round_units(min_keep), probe.round_units(max_keep)
            choices = tuple(k for k in sorted({*range(lo, n, step), n}) if low <= k <= high)
            if len(choices) >= 2:
                specs.append(GroupSpec(name, g.producers, slot, n, g.width, step, lo, choices,
                                       **_features(modules.get(name), records.get(name))))
                continue
            skipped.append((name, f"one width only ({choices[0] * per_unit if choices else g.width} channels) "
                                  f"between keep {min_keep:g} and {max_keep:g}"))
            if probe.round_units(1.0) < n:  # prune_ rounds a group it is given no ratio for, too
                fixed[slot] = probe.round_units(1.0) / n
        terms = _layer_terms(raw, modules, records)
        touched = [0] * len(raw)
        for t in terms:
            for slot in {s for s, _ in (*t.ins, *t.outs)}:  # a depthwise conv is on both sides of its group
                touched[slot] += t.macs
        specs = [dataclasses.replace(s, macs=touched[s.slot]) for s in specs]
        return cls(specs, terms, slots=len(raw), total_macs=base.total_macs, total_params=base.total_params,
                   input_shape=tuple(input_shape), fixed=fixed, round_to=round_to, min_channels=min_channels,
                   importance=importance, ignore=ignore, skipped=skipped, model=model)

    @classmethod
    def chain(cls, widths: Sequence[int], *, feature_size: int = 64, in_channels: int = 3, classes: int = 10,
              min_keep: float = 0.2) -> SearchSpace:
        """A synthetic space without a model: a plain chain of 3x3 convs of these widths (one
        group each, one-channel steps) and a classifier. A stand-in for tests and examples."""
        groups, terms = [], []
        prev = in_channels
        for i, w in enumerate(widths):
            low = max(1, int(round(w * min_keep)))
            groups.append(GroupSpec(f"conv{i}", (f"conv{i}",), i, w, w, 1, 1, tuple(range(low, w + 1)),
                                    in_channels=prev, out_channels=w, kernel=3, feature_size=feature_size))
            prev = w
        prev = in_channels
        for i, w in enumerate([*widths, classes]):
            terms.append(LayerTerm(f"conv{i}", prev * w * 9 * feature_size, prev * w * 9, w, False,
                                   ((i - 1, 1.0),) if i else (), ((i, 1.0),) if i < len(widths) else ()))
            prev = w
        touched = [terms[i].macs + terms[i + 1].macs for i in range(len(widths))]
        groups = [dataclasses.replace(g, macs=m) for g, m in zip(groups, touched)]
        return cls(groups, terms, slots=len(widths), total_macs=sum(t.macs for t in terms),
                   total_params=sum(t.params_scaled + t.params_out for t in terms), round_to=1, min_channels=1)

    def _build_matrices(self) -> None:
        """Dense share matrices so a cost estimate is a few numpy products (~20 us)."""
        n_terms = len(self.terms)
        self._in = np.zeros((n_terms, self.slots))
        self._out = np.zeros((n_terms, self.slots))
        for i, t in enumerate(self.terms):
            for slot, share in t.ins:
                self._in[i, slot] += share
            for slot, share in t.outs:
                self._out[i, slot] += share
        self._macs = np.array([t.macs for t in self.terms], dtype=np.float64)
        self._pw = np.array([t.params_scaled for t in self.terms], dtype=np.float64)
        self._pb = np.array([t.params_out for t in self.terms], dtype=np.float64)
        self._grouped = np.array([t.grouped for t in self.terms], dtype=bool)
        self._base_frac = np.ones(self.slots)
        for slot, f in self.fixed.items():
            self._base_frac[slot] = f
        self._slot_of = np.array([g.slot for g in self.groups], dtype=np.int64)
        self._units = np.array([g.units for g in self.groups], dtype=np.float64)
        self._const_macs = self.total_macs - self._macs.sum()
        self._const_params = self.total_params - self._pw.sum() - self._pb.sum()

    # -- policies -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def policy(self, keep: Sequence[float]) -> Policy:
        """A policy of this space from keep ratios (snapped to the allowed widths)."""
        return self.from_units([g.round_units(k) for g, k in zip(self.groups, keep, strict=True)])

    def from_units(self, units: Sequence[int]) -> Policy:
        return Policy(tuple(u / g.units for g, u in zip(self.groups, units, strict=True)), self.names)

    def full_policy(self) -> Policy:
        """Every group at its widest choice."""
        return self.from_units([g.choices[-1] for g in self.groups])

    def min_policy(self) -> Policy:
        """Every group at its narrowest choice: the smallest model the space holds."""
        return self.from_units([g.choices[0] for g in self.groups])

    def check(self, policy: Policy) -> None:
        """UserError if `policy` was not made for this space (length or group names differ)."""
        if len(policy) != len(self):
            raise UserError(f"policy has {len(policy)} keep ratios but the search space has {len(self)} groups; "
                            "it was made for another model or other search settings")
        if policy.groups and policy.groups != self.names:
            bad = next(i for i, (a, b) in enumerate(zip(policy.groups, self.names)) if a != b)
            raise UserError(f"policy group {bad} is {policy.groups[bad]!r} but the model's is {self.names[bad]!r}; "
                            "the policy was made for another model")

    def units(self, policy: Policy) -> list[int]:
        """Kept units per group (what `prune_` will keep) for `policy`."""
        self.check(policy)
        return [g.round_units(k) for g, k in zip(self.groups, policy.keep)]

    def widths(self, policy: Policy) -> list[int]:
        """Kept channels of each group's widest producer."""
        return [round(u * g.width / g.units) for g, u in zip(self.groups, self.units(policy))]

    # -- cost estimates (no pruning) ------------------------------------------------------

    def _fractions(self, units: Sequence[float]) -> np.ndarray:
        frac = self._base_frac.copy()
        frac[self._slot_of] = np.asarray(units, dtype=np.float64) / self._units
        return frac

    def cost_units(self, units: Sequence[float], metric: str = "macs") -> float:
        """Estimated MACs or params of the model pruned to `units` kept per group."""
        frac = self._fractions(units) - 1.0
        f_in = 1.0 + self._in @ frac
        f_out = 1.0 + self._out @ frac
        dense = np.where(self._grouped, 1.0, f_in) * f_out
        if metric == "macs":
            return float(self._const_macs + self._macs @ dense)
        if metric == "params":
            return float(self._const_params + self._pw @ dense + self._pb @ f_out)
        raise ValueError(f"metric {metric!r} must be macs or params here (latency needs a LinearLatencyModel)")

    def macs(self, policy: Policy) -> float:
        """Estimated MACs of the pruned model (exact for conv/depthwise/linear layers)."""
        return self.cost_units(self.units(policy), "macs")

    def params(self, policy: Policy) -> float:
        """Estimated parameter count of the pruned model."""
        return self.cost_units(self.units(policy), "params")

    # -- AMC features ---------------------------------------------------------------------

    def features(self) -> np.ndarray:
        """Static features per group (rows) in FEATURES order, each scaled to [0, 1] over the space."""
        rows = np.array([[i, LAYER_TYPES.index(g.layer_type), g.in_channels, g.out_channels, g.kernel, g.stride,
                          g.feature_size, g.macs] for i, g in enumerate(self.groups)], dtype=np.float64)
        lo, hi = rows.min(0), rows.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (rows - lo) / span

    # -- pruning --------------------------------------------------------------------------

    def prune_config(self, policy: Policy):
        """The PruneConfig that prunes exactly `policy`: one anchored override per group."""
        from edgecompress.prune.structured import PruneConfig

        overrides = {f"^{re.escape(g.name)}$": 1.0 - u / g.units for g, u in zip(self.groups, self.units(policy))}
        return PruneConfig(overrides=overrides, importance=self.importance, ignore=self.ignore,
                           round_to=self.round_to, min_channels=self.min_channels)

    def prune(self, policy: Policy, model: nn.Module | None = None):
        """(pruned copy, PruneResult) of `model` (default: the model the space was built from)."""
        import warnings

        from edgecompress.prune.structured import prune_

        model = self._model(model)
        pruned = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anchored overrides always match; ignore notes are the user's
            result = prune_(pruned, self.prune_config(policy), input_shape=self.input_shape)  # type: ignore[arg-type]
        return pruned, result

    def apply(self, policy: Policy, model: nn.Module | None = None) -> nn.Module:
        """A pruned copy of `model` (default: the space's own model) as `policy` says."""
        return self.prune(policy, model)[0]

    def _model(self, model: nn.Module | None) -> nn.Module:
        model = model if model is not None else self.model
        if model is None:
            raise UserError("this search space has no model to prune (it was built without one); pass model=")
        return model

    # -- description ----------------------------------------------------------------------

    def signature(self) -> str:
        """Short hash of what the space searches over (groups, widths, choices, rounding)."""
        data = [(g.name, g.units, g.width, g.choices) for g in self.groups]
        text = json.dumps([data, self.round_to, self.min_channels, self.importance, list(self.ignore)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature(), "input_shape": list(self.input_shape), "round_to": self.round_to,
            "min_channels": self.min_channels, "importance": self.importance, "ignore": list(self.ignore),
            "total_macs": self.total_macs, "total_params": self.total_params,
            "groups": [{"name": g.name, "producers": list(g.producers), "width": g.width, "units": g.units,
                        "min_keep": round(g.min_keep, 6), "max_keep": round(g.max_keep, 6), "choices": len(g.choices),
                        "type": g.layer_type, "in": g.in_channels, "out": g.out_channels, "kernel": g.kernel,
                        "stride": g.stride, "feature_size": g.feature_size, "macs": g.macs} for g in self.groups],
            "skipped": [{"name": n, "why": why} for n, why in self.skipped],
        }


def _features(mod: nn.Module | None, record: Any) -> dict[str, Any]:
    """AMC's description of a group's first producer."""
    feats: dict[str, Any] = {"feature_size": 1}
    if record is not None and len(record.input_shape) == 4:
        feats["feature_size"] = int(record.input_shape[2] * record.input_shape[3])
    if isinstance(mod, nn.Conv2d):
        kind = "conv" if mod.groups == 1 else "depthwise" if mod.groups == mod.in_channels else "grouped"
        feats.update(layer_type=kind, in_channels=mod.in_channels, out_channels=mod.out_channels,
                     kernel=int(mod.kernel_size[0]), stride=int(mod.stride[0]))
    elif isinstance(mod, nn.Linear):
        feats.update(layer_type="linear", in_channels=mod.in_features, out_channels=mod.out_features)
    else:
        feats["layer_type"] = "other"
    return feats


_IN_KINDS = ("in", "group_in", "depthwise")
_OUT_KINDS = ("out", "group_out", "norm", "depthwise")


def _layer_terms(raw: list, modules: dict[str, nn.Module], records: dict[str, Any]) -> list[LayerTerm]:
    """One term per layer that some group touches: its MACs/params and the group shares of each side."""
    sides: dict[str, dict[str, dict[int, int]]] = {}
    for slot, g in enumerate(raw):
        if not g.prunable:
            continue
        for m in g.members:
            if m.kind == "param" or m.name not in modules:
                continue  # a bare per-channel tensor: no MACs, a handful of params
            entry = sides.setdefault(m.name, {"in": {}, "out": {}})
            for side, kinds in (("in", _IN_KINDS), ("out", _OUT_KINDS)):
                if m.kind in kinds:
                    entry[side][slot] = entry[side].get(slot, 0) + len(m.positions)
    terms = []
    for name, entry in sides.items():
        mod = modules[name]
        width_in, width_out = _widths(mod)
        weight = getattr(mod, "weight", None)
        bias = getattr(mod, "bias", None)
        norm = isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
        n_w = weight.numel() if isinstance(weight, nn.Parameter) else 0
        n_b = bias.numel() if isinstance(bias, nn.Parameter) else 0
        record = records.get(name)
        terms.append(LayerTerm(
            name=name,
            macs=int(record.macs) if record is not None else 0,
            params_scaled=0 if norm else n_w,
            params_out=n_b + (n_w if norm else 0),
            grouped=isinstance(mod, nn.Conv2d) and mod.groups > 1,
            ins=tuple((s, c / width_in) for s, c in entry["in"].items()) if width_in else (),
            outs=tuple((s, c / width_out) for s, c in entry["out"].items()) if width_out else (),
        ))
    return terms


def _widths(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels, mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return mod.num_features, mod.num_features
    if isinstance(mod, nn.LayerNorm):
        return mod.normalized_shape[0], mod.normalized_shape[0]
    return 0, 0


# -- budgets and AMC's clamp ----------------------------------------------------------------


class LinearLatencyModel:
    """Latency (ms) estimated as linear in every group's kept width, for the clamp.

    latency ~= correction * (full_ms - sum_g savings_g * (max_g - units_g) / (max_g - min_g))

    `fit` measures the widest model, the narrowest, and each group alone at its minimum
    (len(space) + 2 calls of the source): savings_g is what cutting group g alone saves,
    rescaled so the estimate of the narrowest model equals its measurement (cutting
    several groups saves less than the sum of their savings when they meet in a layer).
    `observe` refines a multiplicative correction from every measured candidate (a high
    quantile of measured / estimated, so that most candidates the clamp fits onto the
    budget also measure within it). The
    estimate only steers the clamp: a candidate's latency in the search log is always a
    real call of the latency source.
    """

    def __init__(self, space: SearchSpace, full_ms: float, min_ms: float, savings: Sequence[float],
                 ratios: Sequence[float] = ()) -> None:
        if len(savings) != len(space):
            raise ValueError(f"{len(savings)} savings for a space of {len(space)} groups")
        self.space = space
        self.full_ms, self.min_ms = float(full_ms), float(min_ms)
        self.savings = np.maximum(np.asarray(savings, dtype=np.float64), 0.0)  # monotone: the clamp bisects
        self.ratios = [float(r) for r in ratios]
        self._max = np.array([g.choices[-1] for g in space.groups], dtype=np.float64)
        self._span = np.array([g.choices[-1] - g.choices[0] for g in space.groups], dtype=np.float64)

    @classmethod
    def fit(cls, space: SearchSpace, latency_ms: Callable[[Policy], float]) -> LinearLatencyModel:
        """Fit on len(space) + 2 probe policies; `latency_ms(policy)` measures one (ms)."""
        full, low = latency_ms(space.full_policy()), latency_ms(space.min_policy())
        top = [g.choices[-1] for g in space.groups]
        alone = []
        for i, g in enumerate(space.groups):
            units = list(top)
            units[i] = g.choices[0]
            alone.append(max(0.0, full - latency_ms(space.from_units(units))))
        total = sum(alone)
        want = max(0.0, full - low)
        savings = [s * want / total for s in alone] if total > 0 else [want / len(space)] * len(space)
        return cls(space, full, low, savings)

    #: the clamp aims at this quantile of measured / estimated: with the median, half of the
    #: candidates clamped onto a latency budget measured above it (timing noise, model error)
    QUANTILE = 0.8

    @property
    def correction(self) -> float:
        """The QUANTILE of measured / estimated over the last 20 observed candidates (1 before any)."""
        return float(np.quantile(self.ratios[-20:], self.QUANTILE)) if self.ratios else 1.0

    def _raw(self, units: Sequence[float]) -> float:
        return float(self.full_ms - self.savings @ ((self._max - np.asarray(units, dtype=np.float64)) / self._span))

    def estimate_units(self, units: Sequence[float]) -> float:
        """Estimated latency (ms) of the model pruned to `units` kept per group."""
        return self.correction * self._raw(units)

    def estimate(self, policy: Policy) -> float:
        return self.estimate_units(self.space.units(policy))

    def observe(self, policy: Policy, measured_ms: float) -> None:
        """Record a measured candidate: the correction follows measured / estimated."""
        raw = self._raw(self.space.units(policy))
        if raw > 0 and math.isfinite(measured_ms) and measured_ms > 0:
            self.ratios.append(measured_ms / raw)

    def to_dict(self) -> dict[str, Any]:
        return {"full_ms": self.full_ms, "min_ms": self.min_ms, "savings": self.savings.tolist(), "ratios": self.ratios}

    @classmethod
    def from_dict(cls, space: SearchSpace, data: Mapping[str, Any]) -> LinearLatencyModel:
        return cls(space, data["full_ms"], data["min_ms"], data["savings"], data.get("ratios", ()))


class Constraint:
    """A budget on one metric: estimate <= limit (MACs, params, or ms).

    `hard`: AMC's resource-constrained mode; strategies then pass every action through
    `clamp` (or whole policies through `project`). With `hard=False` the budget is only a
    target the reward reads (MnasNet) and the uniform baseline aims at.
    `estimate(units) -> value` defaults to the space's MACs / params model; latency needs
    a `LinearLatencyModel`'s `estimate_units`.
    """

    def __init__(self, space: SearchSpace, metric: str, limit: float, *, hard: bool = True,
                 estimate: Callable[[Sequence[float]], float] | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} must be one of {', '.join(METRICS)}")
        if estimate is None:
            if metric == "latency":
                raise ValueError("a latency constraint needs estimate= (LinearLatencyModel.estimate_units)")
            estimate = lambda units: space.cost_units(units, metric)  # noqa: E731
        self.space, self.metric, self.limit, self.hard = space, metric, float(limit), hard
        self.estimate_units = estimate

    def floor_units(self) -> list[int]:
        return [g.choices[0] for g in self.space.groups]

    def estimate(self, policy: Policy) -> float:
        return self.estimate_units(self.space.units(policy))

    def clamp(self, decided: Sequence[int], want: int) -> int:
        """Largest allowed unit count <= `want` for group len(decided) such that the budget holds
        with `decided` for the groups before it and every later group at its minimum.

        If even the group's minimum breaks the budget (only when the decided prefix already
        does), the minimum is returned: the clamp never leaves the space.
        """
        i = len(decided)
        g = self.space.groups[i]
        units = [*decided, want, *self.floor_units()[i + 1:]]
        if self.estimate_units(units) <= self.limit:
            return want
        options = [c for c in g.choices if c < want]
        lo, hi = 0, len(options) - 1  # bisection on the monotone cost: largest feasible option
        best = g.choices[0]
        while lo <= hi:
            mid = (lo + hi) // 2
            units[i] = options[mid]
            if self.estimate_units(units) <= self.limit:
                best, lo = options[mid], mid + 1
            else:
                hi = mid - 1
        return best

    def project(self, policy: Policy) -> Policy:
        """`policy` clamped group by group, in order (what AMC does to its actions)."""
        decided: list[int] = []
        for want in self.space.units(policy):
            decided.append(self.clamp(decided, want))
        return self.space.from_units(decided)

    def describe(self) -> str:
        unit = {"macs": "MACs", "params": "params"}.get(self.metric)
        value = f"{self.limit:,.0f} {unit}" if unit else f"{self.limit:.4g} ms"
        return f"{self.metric} <= {value}" + ("" if self.hard else " (soft target)")
