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

With `lowrank=METHOD` the space is joint: after the groups come one *rank ratio* per
layer that method can factorize so that it saves MACs (`RankSpec`); `apply` prunes first,
then factorizes each such layer at that ratio of the pruned layer's full rank. The
estimate stays exact: a rank layer's pruned widths follow from the group fractions, and
its factors' MACs / params come from `edgecompress.lowrank.decomposition` for those widths.

`Constraint` is AMC's resource-constrained mode: decided dimension by dimension (groups,
then rank layers), each value is cut down just enough that the budget stays reachable
with every later dimension at its minimum. `LinearLatencyModel` gives that clamp a
latency estimate that is linear in every dimension, fitted on a few measured probe models.
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
LAYER_TYPES = ("conv", "depthwise", "grouped", "linear", "other", "lowrank")  # lowrank: a rank dimension
# Columns of `SearchSpace.features()`: AMC's static per-layer description.
FEATURES = ("index", "type", "in_channels", "out_channels", "kernel", "stride", "feature_size", "macs")


@dataclass(frozen=True)
class Policy:
    """One keep ratio (fraction of a group's channels kept, in (0, 1]) per searchable group,
    and in a joint space one rank ratio per rank layer.

    `groups` names each group by its first producer, so a policy saved for one model is
    refused by another (`SearchSpace.check`). `rank[i]` is the fraction of layer
    `rank_layers[i]`'s full rank kept, in (0, 1] (1 leaves the layer whole), factorized
    with the method `lowrank` (svd | spatial-svd | tucker2 | cp).
    """

    keep: tuple[float, ...]
    groups: tuple[str, ...] = ()
    rank: tuple[float, ...] = ()
    rank_layers: tuple[str, ...] = ()
    lowrank: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(float(k) for k in self.keep))
        object.__setattr__(self, "groups", tuple(str(g) for g in self.groups))
        object.__setattr__(self, "rank", tuple(float(r) for r in self.rank))
        object.__setattr__(self, "rank_layers", tuple(str(n) for n in self.rank_layers))
        for i, k in enumerate(self.keep):
            if not (math.isfinite(k) and 0 < k <= 1):
                raise ValueError(f"Policy.keep[{i}] = {k!r} must be in (0, 1] (the fraction of channels kept)")
        if self.groups and len(self.groups) != len(self.keep):
            raise ValueError(f"Policy has {len(self.keep)} keep ratios but {len(self.groups)} group names")
        for i, r in enumerate(self.rank):
            if not (math.isfinite(r) and 0 < r <= 1):
                raise ValueError(f"Policy.rank[{i}] = {r!r} must be in (0, 1] (the fraction of the layer's full rank "
                                 "kept; 1 leaves it whole)")
        if self.rank_layers and len(self.rank_layers) != len(self.rank):
            raise ValueError(f"Policy has {len(self.rank)} rank ratios but {len(self.rank_layers)} rank layer names")
        if self.rank and self.lowrank is None:
            raise ValueError("Policy has rank ratios but no lowrank method; set lowrank to the method they "
                             "factorize with (svd, spatial-svd, tucker2 or cp)")
        if self.lowrank is not None:
            from edgecompress.lowrank.decomposition import METHODS

            if self.lowrank not in METHODS:
                raise ValueError(f"Policy.lowrank = {self.lowrank!r} must be one of {', '.join(METHODS)}")

    def __len__(self) -> int:
        return len(self.keep)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"keep": [round(k, 6) for k in self.keep], "groups": list(self.groups)}
        if self.rank:
            data.update(rank=[round(r, 6) for r in self.rank], rank_layers=list(self.rank_layers), lowrank=self.lowrank)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping):
            raise ValueError("a policy must be a mapping with a 'keep' list (and optionally 'groups')")
        check_keys("policy key", data, _POLICY_KEYS)
        if "keep" not in data:
            raise ValueError("a policy needs a 'keep' list: one keep ratio per group")
        return cls(tuple(data["keep"]), tuple(data.get("groups", ())), tuple(data.get("rank", ())),
                   tuple(data.get("rank_layers", ())), data.get("lowrank"))

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
            data = {**{k: data[k] for k in _POLICY_KEYS if k in data}, "keep": data["policy"]}
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise UserError(f"policy file {str(path)!r}: {exc}") from None

    def short(self, digits: int = 2) -> str:
        """The keep ratios (and rank ratios) on one line, for messages."""
        text = "[" + ", ".join(f"{k:.{digits}f}" for k in self.keep) + "]"
        return text + (" rank [" + ", ".join(f"{r:.{digits}f}" for r in self.rank) + "]" if self.rank else "")


_POLICY_KEYS = ("keep", "groups", "rank", "rank_layers", "lowrank")


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

    # A search dimension (GroupSpec or RankSpec): `choices` ascending, `snap(ratio)` -> the
    # choice a ratio takes, `ratio_of(choice)` -> back to a ratio in (0, 1].
    snap = round_units

    def ratio_of(self, units: float) -> float:
        return units / self.units


@dataclass(frozen=True)
class RankSpec:
    """One searchable rank: a layer the space's low-rank method factorizes, and the rank
    ratios it may take (`choices`, ascending, the last 1.0: the layer left whole).

    A ratio is of the *pruned* layer's full rank (`rank_for_ratio(pruned, method, ratio,
    round_to)`); a rank whose factors would not save MACs leaves the layer whole. `term`
    is the index of the layer's LayerTerm (-1: no group changes its widths); in_hw/out_hw
    its input/output feature-map sizes. Features as GroupSpec's, of the layer itself.
    """

    name: str
    choices: tuple[float, ...]
    layer: nn.Module = dataclasses.field(compare=False, repr=False)
    term: int = -1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    layer_type: str = "lowrank"
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 1
    stride: int = 1
    feature_size: int = 1
    macs: int = 0

    @property
    def min_keep(self) -> float:
        return self.choices[0]

    @property
    def max_keep(self) -> float:
        return self.choices[-1]

    def snap(self, ratio: float) -> float:
        """The nearest allowed rank ratio (the larger one on a tie)."""
        return min(self.choices, key=lambda c: (abs(c - ratio), -c))

    def ratio_of(self, value: float) -> float:
        return float(value)


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
    fraction they keep (prune_ rounds every prunable group, searched or not). `dims` are
    the groups, then the `ranks` (rank layers of the low-rank method `lowrank`); a
    policy's values per dimension (`units`) are kept units for a group, a rank ratio for
    a rank layer.
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
        ranks: Sequence[RankSpec] = (),
        lowrank: str | None = None,
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
        self.ranks, self.lowrank = list(ranks), lowrank if ranks else None
        self.dims: list[GroupSpec | RankSpec] = [*self.groups, *self.ranks]
        self._rank_cost: dict[tuple[int, int, int, float], tuple[int, int]] = {}
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
        lowrank: str | None = None,
    ) -> SearchSpace:
        """The searchable groups of `model` at `input_shape` (C, H, W).

        A group is searchable when `prune_` may cut it (prunable, not `ignore`d by a regex
        on a member's module name) and it has at least two kept widths between `min_keep`
        and `max_keep` after rounding to multiples of `round_to` channels and at least
        `min_channels`. The model is kept (not copied) for `apply`.

        `lowrank` (svd | spatial-svd | tucker2 | cp) adds a rank dimension per layer that
        method can factorize (not `ignore`d) whose smallest rank ratio saves MACs at full
        width; its ratios are factorize_'s grid (DEFAULT_RATIOS) and 1.0 (left whole),
        ranks rounded up to multiples of `round_to`.
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
        ranks: list[RankSpec] = []
        if lowrank is not None:
            ranks = _rank_specs(model, lowrank, records, terms, ignore, round_to, skipped)
        touched = [0] * len(raw)
        for t in terms:
            for slot in {s for s, _ in (*t.ins, *t.outs)}:  # a depthwise conv is on both sides of its group
                touched[slot] += t.macs
        specs = [dataclasses.replace(s, macs=touched[s.slot]) for s in specs]
        return cls(specs, terms, slots=len(raw), total_macs=base.total_macs, total_params=base.total_params,
                   input_shape=tuple(input_shape), fixed=fixed, round_to=round_to, min_channels=min_channels,
                   importance=importance, ignore=ignore, skipped=skipped, model=model, ranks=ranks,
                   lowrank=lowrank)

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
        """Searched dimensions: the groups, then the rank layers."""
        return len(self.dims)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def rank_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.ranks)

    def policy(self, ratios: Sequence[float]) -> Policy:
        """A policy of this space from a ratio per dimension (keep ratios, then rank ratios), snapped to the choices."""
        return self.from_units([d.snap(r) for d, r in zip(self.dims, ratios, strict=True)])

    def from_units(self, units: Sequence[float]) -> Policy:
        """The policy of a value per dimension (kept units per group, then rank ratios)."""
        ratios = [d.ratio_of(u) for d, u in zip(self.dims, units, strict=True)]
        n = len(self.groups)
        return Policy(tuple(ratios[:n]), self.names, tuple(ratios[n:]), self.rank_names, self.lowrank)

    def full_policy(self) -> Policy:
        """Every group at its widest choice (and every rank layer whole)."""
        return self.from_units([d.choices[-1] for d in self.dims])

    def min_policy(self) -> Policy:
        """Every dimension at its smallest choice: the smallest model the space holds."""
        return self.from_units([d.choices[0] for d in self.dims])

    def check(self, policy: Policy) -> None:
        """UserError if `policy` was not made for this space (lengths, names or low-rank method differ)."""
        if len(policy.keep) != len(self.groups):
            raise UserError(f"policy has {len(policy.keep)} keep ratios but the search space has {len(self.groups)} "
                            "groups; it was made for another model or other search settings")
        if policy.groups and policy.groups != self.names:
            bad = next(i for i, (a, b) in enumerate(zip(policy.groups, self.names)) if a != b)
            raise UserError(f"policy group {bad} is {policy.groups[bad]!r} but the model's is {self.names[bad]!r}; "
                            "the policy was made for another model")
        if len(policy.rank) != len(self.ranks):
            raise UserError(f"policy has {len(policy.rank)} rank ratios but the search space has {len(self.ranks)} "
                            f"rank layers (lowrank {self.lowrank or 'none'}); it was made for other search settings")
        if policy.rank and policy.lowrank != self.lowrank:
            raise UserError(f"policy factorizes with {policy.lowrank!r} but the search space with {self.lowrank!r}; "
                            "build the space with the policy's lowrank method")
        if policy.rank_layers and policy.rank_layers != self.rank_names:
            bad = next(i for i, (a, b) in enumerate(zip(policy.rank_layers, self.rank_names)) if a != b)
            raise UserError(f"policy rank layer {bad} is {policy.rank_layers[bad]!r} but the model's is "
                            f"{self.rank_names[bad]!r}; the policy was made for another model")

    def units(self, policy: Policy) -> list[float]:
        """The value per dimension for `policy`: kept units per group (what `prune_` will
        keep), then the rank ratio per rank layer (snapped to its choices)."""
        self.check(policy)
        return [*(g.round_units(k) for g, k in zip(self.groups, policy.keep)),
                *(r.snap(p) for r, p in zip(self.ranks, policy.rank))]

    def widths(self, policy: Policy) -> list[int]:
        """Kept channels of each group's widest producer."""
        units = self.units(policy)[:len(self.groups)]
        return [round(u * g.width / g.units) for g, u in zip(self.groups, units)]

    # -- cost estimates (no pruning) ------------------------------------------------------

    def _fractions(self, units: Sequence[float]) -> np.ndarray:
        frac = self._base_frac.copy()
        frac[self._slot_of] = np.asarray(units[:len(self.groups)], dtype=np.float64) / self._units
        return frac

    def cost_units(self, units: Sequence[float], metric: str = "macs") -> float:
        """Estimated MACs or params of the model pruned to `units` kept per group, then
        factorized at the rank ratios that follow them (missing: every rank layer whole)."""
        frac = self._fractions(units) - 1.0
        f_in = 1.0 + self._in @ frac
        f_out = 1.0 + self._out @ frac
        dense = np.where(self._grouped, 1.0, f_in) * f_out
        if metric not in ("macs", "params"):
            raise ValueError(f"metric {metric!r} must be macs or params here (latency needs a LinearLatencyModel)")
        lowrank = self._lowrank_change(units[len(self.groups):], f_in, f_out, metric == "macs")
        if metric == "macs":
            return float(self._const_macs + self._macs @ dense) + lowrank
        return float(self._const_params + self._pw @ dense + self._pb @ f_out) + lowrank

    def _lowrank_change(self, ratios: Sequence[float], f_in: np.ndarray, f_out: np.ndarray, macs: bool) -> float:
        """What factorizing the rank layers at `ratios` adds to the pruned model's MACs (or params)."""
        change = 0
        for j, (spec, ratio) in enumerate(zip(self.ranks, ratios)):
            if ratio >= 1.0:
                continue
            fi, fo = (f_in[spec.term], f_out[spec.term]) if spec.term >= 0 else (1.0, 1.0)
            key = (j, round(spec.in_channels * fi), round(spec.out_channels * fo), float(ratio))
            if key not in self._rank_cost:  # a handful of widths per layer: decided once each
                self._rank_cost[key] = _factorized_change(spec, str(self.lowrank), *key[1:], self.round_to)
            change += self._rank_cost[key][0 if macs else 1]
        return float(change)

    def macs(self, policy: Policy) -> float:
        """Estimated MACs of the pruned (and factorized) model (exact for conv/depthwise/linear layers)."""
        return self.cost_units(self.units(policy), "macs")

    def params(self, policy: Policy) -> float:
        """Estimated parameter count of the pruned model."""
        return self.cost_units(self.units(policy), "params")

    # -- AMC features ---------------------------------------------------------------------

    def features(self) -> np.ndarray:
        """Static features per dimension (rows) in FEATURES order, each scaled to [0, 1] over the space."""
        rows = np.array([[i, LAYER_TYPES.index(g.layer_type), g.in_channels, g.out_channels, g.kernel, g.stride,
                          g.feature_size, g.macs] for i, g in enumerate(self.dims)], dtype=np.float64)
        lo, hi = rows.min(0), rows.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (rows - lo) / span

    # -- pruning --------------------------------------------------------------------------

    def prune_config(self, policy: Policy):
        """The PruneConfig that prunes exactly `policy`: one anchored override per group."""
        from edgecompress.prune.structured import PruneConfig

        units = self.units(policy)[:len(self.groups)]
        overrides = {f"^{re.escape(g.name)}$": 1.0 - u / g.units for g, u in zip(self.groups, units)}
        return PruneConfig(overrides=overrides, importance=self.importance, ignore=self.ignore,
                           round_to=self.round_to, min_channels=self.min_channels)

    def prune(self, policy: Policy, model: nn.Module | None = None):
        """(pruned copy, PruneResult) of `model` (default: the model the space was built from).

        With rank ratios below 1 the pruned copy is then factorized (`factorize_`): the
        result's macs_after / params_after are then the factorized model's, and its
        `factorized` holds what factorize_ did to the layers it replaced.
        """
        import warnings

        from edgecompress.prune.structured import prune_

        model = self._model(model)
        pruned = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anchored overrides always match; ignore notes are the user's
            result = prune_(pruned, self.prune_config(policy), input_shape=self.input_shape)  # type: ignore[arg-type]
        ratios = {r.name: p for r, p in zip(self.ranks, self.units(policy)[len(self.groups):]) if p < 1.0}
        if ratios:
            fac = _factorize(pruned, self.lowrank, ratios, self.round_to, self.input_shape)  # type: ignore[arg-type]
            record = fac.to_dict()
            record["layers"] = [p for p in record["layers"] if p["status"] == "factorized"]
            result = dataclasses.replace(result, macs_after=fac.macs_after, params_after=fac.params_after,
                                         factorized=record)
        return pruned, result

    def apply(self, policy: Policy, model: nn.Module | None = None) -> nn.Module:
        """A pruned (and factorized) copy of `model` (default: the space's own model) as `policy` says."""
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
        parts: list[Any] = [data, self.round_to, self.min_channels, self.importance, list(self.ignore)]
        if self.ranks:  # a space without rank layers keeps the signature it always had
            parts.append([self.lowrank, [(r.name, r.choices) for r in self.ranks]])
        text = json.dumps(parts)
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
            **({"lowrank": self.lowrank, "ranks": [
                {"name": r.name, "choices": list(r.choices), "in": r.in_channels, "out": r.out_channels,
                 "kernel": r.kernel, "stride": r.stride, "feature_size": r.feature_size, "macs": r.macs}
                for r in self.ranks]} if self.ranks else {}),
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


# -- rank dimensions ------------------------------------------------------------------------


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    return (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, 1)


def _rank_specs(model: nn.Module, method: str, records: dict[str, Any], terms: list[LayerTerm],
                ignore: tuple[str, ...], round_to: int, skipped: list[tuple[str, str]]) -> list[RankSpec]:
    """A RankSpec per layer `method` factorizes whose smallest rank ratio saves MACs at full
    width (the others that it supports go to `skipped`, with the reason)."""
    from edgecompress.lowrank import decomposition as dec
    from edgecompress.lowrank.factorize import DEFAULT_RATIOS

    if method not in dec.METHODS:
        raise ValueError(f"lowrank = {method!r} must be one of {', '.join(dec.METHODS)}")
    choices = (*DEFAULT_RATIOS, 1.0)
    index = {t.name: i for i, t in enumerate(terms)}
    specs = []
    for name, layer in model.named_modules():
        record = records.get(name)
        if record is None or dec.unsupported(layer, method) is not None or any(re.search(p, name) for p in ignore):
            continue
        in_hw, out_hw = _hw(record.input_shape), _hw(record.output_shape)
        rank = dec.rank_for_ratio(layer, method, choices[0], round_to)
        macs = dec.factorized_macs(layer, method, rank, in_hw, out_hw)
        if macs >= record.macs:
            skipped.append((name, f"{method} at its smallest rank {rank} would not save MACs "
                                  f"({macs:,} vs {record.macs:,})"))
            continue
        specs.append(RankSpec(name, choices, layer, index.get(name, -1), in_hw, out_hw,
                              **{**_features(layer, record), "layer_type": "lowrank", "macs": int(record.macs)}))
    if not specs:
        raise UserError(f"lowrank {method}: no layer of this model can be factorized with it so that it saves MACs "
                        f"(at rank ratio {choices[0]}, ranks at multiples of {round_to}); try another method, or "
                        "search without lowrank")
    return specs


def _resized(layer: nn.Module, ci: int, co: int) -> nn.Module:
    """A shape-only copy (meta device) of `layer` with `ci` inputs and `co` outputs: what pruning leaves of it."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Linear(ci, co, bias=bias, device="meta")
    return nn.Conv2d(ci, co, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=bias,
                     padding_mode=layer.padding_mode, device="meta")


def _factorized_change(spec: RankSpec, method: str, ci: int, co: int, ratio: float, round_to: int) -> tuple[int, int]:
    """(MACs, params) factorizing the layer pruned to ci -> co at `ratio` adds (negative: saves);
    (0, 0) where factorize_ would leave it whole (its factors would not save MACs)."""
    from edgecompress.lowrank import decomposition as dec

    layer = _resized(spec.layer, ci, co)
    rank = dec.rank_for_ratio(layer, method, ratio, round_to)
    macs = dec.factorized_macs(layer, method, rank, spec.in_hw, spec.out_hw)
    # A conv's / linear's MACs and weights scale exactly with in x out channels.
    scale = ci * co, spec.in_channels * spec.out_channels
    dense_macs = spec.macs * scale[0] // scale[1]
    if macs >= dense_macs:
        return 0, 0
    dense_params = spec.layer.weight.numel() * scale[0] // scale[1] + (co if spec.layer.bias is not None else 0)
    return macs - dense_macs, dec.factorized_params(layer, method, rank) - dense_params


def _factorize(model: nn.Module, method: str, ratios: Mapping[str, float], round_to: int,
               input_shape: tuple[int, ...]):
    """factorize_ each named layer of `model` (in place) at its rank ratio; the FactorizeResult."""
    from edgecompress.lowrank.factorize import LowRankConfig, factorize_

    chosen = "|".join(re.escape(name) for name in ratios)
    config = LowRankConfig(
        method=method,
        rank=1.0,  # LowRankConfig wants a rule; every layer factorized has its own override
        overrides={f"^{re.escape(name)}$": {"rank": ratio} for name, ratio in ratios.items()},
        ignore=(f"^(?!(?:{chosen})$)",),  # every other layer stays as it is
        round_to=round_to,
    )
    return factorize_(model, config, input_shape=tuple(input_shape))  # type: ignore[arg-type]


# -- budgets and AMC's clamp ----------------------------------------------------------------


class LinearLatencyModel:
    """Latency (ms) estimated as linear in every group's kept width, for the clamp.

    latency ~= correction * (full_ms - sum_d savings_d * (max_d - value_d) / (max_d - min_d))

    over every dimension d (a group's kept units, a rank layer's rank ratio).

    `fit` measures the widest model, the narrowest, and each dimension alone at its minimum
    (len(space) + 2 calls of the source): savings_d is what cutting dimension d alone saves,
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
            raise ValueError(f"{len(savings)} savings for a space of {len(space)} dimensions")
        self.space = space
        self.full_ms, self.min_ms = float(full_ms), float(min_ms)
        self.savings = np.maximum(np.asarray(savings, dtype=np.float64), 0.0)  # monotone: the clamp bisects
        self.ratios = [float(r) for r in ratios]
        self._max = np.array([d.choices[-1] for d in space.dims], dtype=np.float64)
        self._span = np.array([d.choices[-1] - d.choices[0] for d in space.dims], dtype=np.float64)

    @classmethod
    def fit(cls, space: SearchSpace, latency_ms: Callable[[Policy], float]) -> LinearLatencyModel:
        """Fit on len(space) + 2 probe policies; `latency_ms(policy)` measures one (ms)."""
        full, low = latency_ms(space.full_policy()), latency_ms(space.min_policy())
        top = [d.choices[-1] for d in space.dims]
        alone = []
        for i, g in enumerate(space.dims):
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

    def floor_units(self) -> list[float]:
        return [d.choices[0] for d in self.space.dims]

    def estimate(self, policy: Policy) -> float:
        return self.estimate_units(self.space.units(policy))

    def clamp(self, decided: Sequence[float], want: float) -> float:
        """Largest allowed value <= `want` for dimension len(decided) (kept units of a group,
        rank ratio of a rank layer) such that the budget holds with `decided` for the
        dimensions before it and every later one at its minimum. Exact for rank layers too:
        the cost is monotone in every dimension (a lower rank never costs more).

        If even the dimension's minimum breaks the budget (only when the decided prefix
        already does), the minimum is returned: the clamp never leaves the space.
        """
        i = len(decided)
        g = self.space.dims[i]
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
        """`policy` clamped dimension by dimension, in order (what AMC does to its actions)."""
        decided: list[float] = []
        for want in self.space.units(policy):
            decided.append(self.clamp(decided, want))
        return self.space.from_units(decided)

    def describe(self) -> str:
        unit = {"macs": "MACs", "params": "params"}.get(self.metric)
        value = f"{self.limit:,.0f} {unit}" if unit else f"{self.limit:.4g} ms"
        return f"{self.metric} <= {value}" + ("" if self.hard else " (soft target)")
