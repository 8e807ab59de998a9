"""Unstructured magnitude pruning: the gradual schedule of Zhu & Gupta (2017) and a one-shot version.

Zhu & Gupta, "To prune, or not to prune" (arXiv:1710.01878), raise the sparsity of every
selected weight tensor from s_i to s_f over n pruning steps spaced dt optimizer steps apart,
starting at step t0:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

At each pruning step the smallest-magnitude weights are masked to zero; in between, the
network trains and the masks are re-applied after every optimizer step so pruned weights
stay exactly zero.

Zeros are written into the ordinary weight tensors (no forward hooks, no
parametrizations), so `state_dict`, ONNX and TFLite export see plain dense tensors with
zeros in them. Dense runtimes do not get faster from unstructured zeros, but the
compressed download is smaller (see `gzip_size`); for speed, use structured pruning.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import UserError, check_keys, suggest
from edgecompress.train.hooks import TrainHook

SCOPES = ("layer", "global")
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def sparsity_at(step: int, *, initial: float, final: float, begin_step: int, end_step: int, frequency: int) -> float:
    """Target sparsity (fraction of zeros in [0, 1)) at optimizer step `step` (0-based).

    Cubic schedule of Zhu & Gupta: `initial` before `begin_step`, `final` from `end_step` on,
    and in between the formula evaluated at the last pruning step, i.e. `step` rounded down
    to `begin_step + k * frequency`. Raises ValueError naming the bad argument.
    """
    _check_schedule(initial, final, begin_step, end_step, frequency)
    if step < begin_step:
        return float(initial)
    if step >= end_step:
        return float(final)
    t = begin_step + (step - begin_step) // frequency * frequency
    progress = (t - begin_step) / (end_step - begin_step)
    return float(final + (initial - final) * (1.0 - progress) ** 3)


def _check_schedule(initial: float, final: float, begin_step: int, end_step: int, frequency: int) -> None:
    if not _is_number(initial) or not 0.0 <= initial < 1.0:
        raise ValueError(f"initial_sparsity = {initial!r} must be a number in [0, 1)")
    if not _is_number(final) or not 0.0 <= final < 1.0:
        raise ValueError(f"final_sparsity = {final!r} must be a number in [0, 1)")
    if initial > final:
        raise ValueError(f"initial_sparsity = {initial!r} must be <= final_sparsity ({final!r}): sparsity only grows")
    if not _is_int(begin_step) or begin_step < 0:
        raise ValueError(f"begin_step = {begin_step!r} must be an integer >= 0")
    if not _is_int(end_step) or end_step <= begin_step:
        raise ValueError(f"end_step = {end_step!r} must be an integer > begin_step ({begin_step!r})")
    if not _is_int(frequency) or frequency < 1:
        raise ValueError(f"frequency = {frequency!r} must be an integer >= 1 (optimizer steps between mask updates)")


@dataclass(frozen=True)
class GMPConfig:
    """Gradual magnitude pruning settings.

    final_sparsity: fraction of selected weights that are zero from `end_step` on, in [0, 1).
    initial_sparsity: sparsity applied at `begin_step` (weights stay dense before it).
    begin_step / end_step: 0-based optimizer steps where the ramp starts and reaches
        `final_sparsity`. `end_step=None` means "the last step of training": the caller
        fills it in (`with_total_steps`, or `GradualMagnitudePruner(..., total_steps=N)`).
    frequency: optimizer steps between mask updates (Zhu & Gupta's dt).
    scope: "layer" prunes every selected tensor to the target sparsity; "global" uses one
        magnitude threshold over all selected weights (raw |w|, no per-layer scaling), so
        layers with small weights lose more of them and a layer can lose nearly all.
    include: regexes searched (`re.search`) in module names; empty = every Conv2d and Linear.
        Only the `weight` of Conv2d and Linear modules is ever pruned (biases and norms stay).
    ignore: regexes of module names to keep dense, applied after `include`. Empty by default
        (the paper prunes every layer); to keep the classifier dense, e.g. ignore=[r"^fc$"].
        First-layer convs and classifiers are small and sensitive, so ignoring them costs
        little size and often saves accuracy.
    """

    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    begin_step: int = 0
    end_step: int | None = None
    frequency: int = 100
    scope: str = "layer"
    include: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", _as_patterns("include", self.include))
        object.__setattr__(self, "ignore", _as_patterns("ignore", self.ignore))
        if self.scope not in SCOPES:
            raise ValueError(f"scope = {self.scope!r} must be one of {', '.join(SCOPES)}" + suggest(str(self.scope), SCOPES))
        if self.end_step is None:
            # Check everything else with a stand-in end; the real one comes from the caller.
            _check_schedule(self.initial_sparsity, self.final_sparsity, self.begin_step, _next_int(self.begin_step), self.frequency)
        else:
            _check_schedule(self.initial_sparsity, self.final_sparsity, self.begin_step, self.end_step, self.frequency)

    def with_total_steps(self, total_steps: int) -> GMPConfig:
        """This config with `end_step=None` replaced by the last step (`total_steps - 1`)."""
        if self.end_step is not None:
            return self
        if not _is_int(total_steps) or total_steps - 1 <= self.begin_step:
            raise ValueError(
                f"total_steps = {total_steps!r} leaves no room to prune: the last step must come after begin_step ({self.begin_step})"
            )
        return GMPConfig(**{**self._fields(), "end_step": total_steps - 1})

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at 0-based optimizer `step` (needs `end_step`)."""
        if self.end_step is None:
            raise ValueError("end_step = None: fill it in with with_total_steps(total optimizer steps) first")
        return sparsity_at(
            step, initial=self.initial_sparsity, final=self.final_sparsity,
            begin_step=self.begin_step, end_step=self.end_step, frequency=self.frequency,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["ignore"] = list(self.include), list(self.ignore)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GMPConfig:
        check_keys("GMPConfig field", d, (f.name for f in fields(cls)))
        return cls(**d)

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class LayerSparsity:
    """One pruned tensor: `name` is the parameter name, params its element count, zeros
    how many are exactly 0.0, sparsity = zeros / params."""

    name: str
    params: int
    zeros: int
    sparsity: float


@dataclass(frozen=True)
class SparsityReport:
    """Per-tensor and overall sparsity (zeros / params over all listed tensors)."""

    layers: tuple[LayerSparsity, ...]
    params: int
    zeros: int
    sparsity: float

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(x) for x in self.layers], "params": self.params, "zeros": self.zeros, "sparsity": self.sparsity}


def prunable_weights(model: nn.Module, include: Iterable[str] = (), ignore: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Parameter name -> weight of every Conv2d/Linear whose module name matches `include`
    (all when empty) and no `ignore` regex, in module order."""
    inc = [re.compile(p) for p in _as_patterns("include", include)]
    ign = [re.compile(p) for p in _as_patterns("ignore", ignore)]
    out: dict[str, nn.Parameter] = {}
    for mname, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or not isinstance(getattr(module, "weight", None), nn.Parameter):
            continue
        if inc and not any(p.search(mname) for p in inc):
            continue
        if any(p.search(mname) for p in ign):
            continue
        out[f"{mname}.weight" if mname else "weight"] = module.weight
    return out


def sparsity_report(model: nn.Module, include: Iterable[str] = (), ignore: Iterable[str] = ()) -> SparsityReport:
    """Count exact zeros in the Conv2d/Linear weights selected by `include`/`ignore`."""
    return _report(prunable_weights(model, include, ignore))


def prune_magnitude_(
    model: nn.Module, sparsity: float, scope: str = "layer", include: Iterable[str] = (), ignore: Iterable[str] = ()
) -> SparsityReport:
    """One-shot magnitude pruning in place: zero the smallest-|w| fraction `sparsity` of the
    selected weights, per tensor (`scope="layer"`) or with one global threshold ("global").
    Returns the sparsity report of the selected weights."""
    if not _is_number(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity = {sparsity!r} must be a number in [0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"scope = {scope!r} must be one of {', '.join(SCOPES)}" + suggest(str(scope), SCOPES))
    weights = _select_or_fail(model, include, ignore)
    masks = magnitude_masks(weights, sparsity, scope)
    _apply_masks(weights, masks)
    return _report(weights)


def magnitude_masks(
    weights: Mapping[str, torch.Tensor], sparsity: float, scope: str, previous: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """name -> bool mask (True = keep) that zeroes round(sparsity * n) smallest-|w| entries of
    each tensor ("layer") or of all tensors together ("global"). Entries already pruned in
    `previous` rank below every live weight, so masks only ever grow (ties do not revive them)."""
    scores = {}
    for name, w in weights.items():
        s = w.detach().abs().float()
        if previous is not None and name in previous:
            s = torch.where(previous[name].to(s.device), s, torch.full_like(s, -1.0))
        scores[name] = s.flatten()
    if scope == "layer":
        return {name: _keep_mask(s, _count(sparsity, s.numel())).view_as(weights[name]) for name, s in scores.items()}
    flat = torch.cat([s.cpu() for s in scores.values()])
    keep = _keep_mask(flat, _count(sparsity, flat.numel()))
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset : offset + s.numel()].view_as(weights[name]).to(s.device)
        offset += s.numel()
    return masks


class GradualMagnitudePruner(TrainHook):
    """Zhu & Gupta gradual magnitude pruning as a training hook.

    `train(model, loader, val, cfg, hooks=[GradualMagnitudePruner(model, GMPConfig(...), total_steps=N)])`.
    From `begin_step`, at every step where the schedule's target rises (every `frequency`
    steps up to `end_step`), the masks are recomputed from the current weights; masks only
    grow. After every optimizer step the masks are re-applied (w *= mask), so pruned weights
    are exactly zero for every forward pass. After backward, the gradients of pruned weights
    are zeroed, so gradient clipping measures only live weights and SGD momentum for pruned
    entries decays instead of growing. The optimizer state itself (momentum / Adam moments)
    is not touched: the hook does not see the optimizer, and re-masking after each step
    makes whatever it holds harmless.

    Masks live in a plain dict (name -> bool tensor, True = keep), not in buffers, so the
    model's state_dict is unchanged; `state_dict()` / `load_state_dict()` carry the masks and
    the last update step for resume. `finalize()` leaves plain zeros in the weights.
    """

    def __init__(self, model: nn.Module, config: GMPConfig, *, total_steps: int | None = None) -> None:
        if config.end_step is None:
            if total_steps is None:
                raise ValueError("end_step = None needs total_steps (the number of optimizer steps of the training run)")
            config = config.with_total_steps(total_steps)
        self.config = config
        self.model = model
        self.names = tuple(_select_or_fail(model, config.include, config.ignore))
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0  # the target the current masks were computed for
        self.last_update_step: int | None = None

    def target_at(self, step: int) -> float:
        """Sparsity the masks should have after optimizer `step`: 0 before begin_step, then the schedule."""
        return 0.0 if step < self.config.begin_step else self.config.sparsity_at(step)

    def after_backward(self, model: nn.Module, step: int) -> None:
        params = self._weights(model)
        for name, mask in self.masks.items():
            grad = params[name].grad
            if grad is not None:
                grad.mul_(mask)

    def after_step(self, model: nn.Module, step: int) -> None:
        weights = self._weights(model)
        target = self.target_at(step)
        if target > self.sparsity:
            _apply_masks(weights, self.masks)  # rank what the forward pass actually saw
            self.masks = magnitude_masks(weights, target, self.config.scope, previous=self.masks)
            self.sparsity, self.last_update_step = target, step
        _apply_masks(weights, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {k: v.detach().cpu().clone() for k, v in self.masks.items()},
            "sparsity": self.sparsity,
            "last_update_step": self.last_update_step,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        if saved is not None and saved != self.config.to_dict():
            changed = ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in self.config.to_dict().items() if saved.get(k) != v)
            raise UserError(f"pruning state was saved with other settings ({changed}); resume with the same GMPConfig")
        params = self._weights(self.model)
        masks = state["masks"]
        missing = sorted(set(masks) - set(params))
        if missing:
            raise UserError(
                f"pruning state has masks for {missing[0]!r}, which this model's selection does not have; "
                "resume with the same model and include/ignore settings"
            )
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(params[name].shape):
                raise UserError(
                    f"pruning mask for {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(params[name].shape)}; "
                    "resume with the same model"
                )
        self.masks = {k: v.to(device=params[k].device, dtype=torch.bool) for k, v in masks.items()}
        self.sparsity = float(state["sparsity"])
        self.last_update_step = state["last_update_step"]
        _apply_masks(params, self.masks)

    def finalize(self) -> SparsityReport:
        """Write the masks into the weights one last time and drop them. The model is left
        with ordinary tensors containing zeros (nothing to remove before export)."""
        weights = self._weights(self.model)
        _apply_masks(weights, self.masks)
        self.masks = {}
        return _report(weights)

    def sparsity_report(self, model: nn.Module | None = None) -> SparsityReport:
        """Exact zeros in the weights this pruner manages."""
        return _report(self._weights(model if model is not None else self.model))

    def _weights(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise UserError(f"the model has no parameter {missing[0]!r} that the pruner was built for; pass the same model")
        return {n: params[n] for n in self.names}


def gzip_size(path: str | Path, chunk_bytes: int = 1 << 20) -> int:
    """Size in bytes of the file at `path` compressed with gzip at level 9, read in chunks.

    Dense runtimes do not get faster from unstructured zeros, but the compressed download
    is smaller: this is the number to report for an unstructured-pruned model.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip header + trailer
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def _keep_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat bool mask, False on exactly `k` lowest scores (ties broken by topk)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.topk(scores, k, largest=False, sorted=False).indices] = False
    return keep


def _count(sparsity: float, n: int) -> int:
    return min(n, math.floor(sparsity * n + 0.5))


@torch.no_grad()
def _apply_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        weights[name].mul_(mask)


def _report(weights: Mapping[str, torch.Tensor]) -> SparsityReport:
    layers = []
    for name, w in weights.items():
        n, z = w.numel(), int((w.detach() == 0).sum())
        layers.append(LayerSparsity(name, n, z, z / n if n else 0.0))
    params, zeros = sum(x.params for x in layers), sum(x.zeros for x in layers)
    return SparsityReport(tuple(layers), params, zeros, zeros / params if params else 0.0)


def _select_or_fail(model: nn.Module, include: Iterable[str], ignore: Iterable[str]) -> dict[str, nn.Parameter]:
    weights = prunable_weights(model, include, ignore)
    if not weights:
        inc, ign = list(_as_patterns("include", include)), list(_as_patterns("ignore", ignore))
        raise UserError(
            f"no Conv2d/Linear weights to prune (include={inc}, ignore={ign}); "
            "check the regexes against the module names (`model.named_modules()`)"
        )
    return weights


def _as_patterns(field: str, value: Any) -> tuple[str, ...]:
    """Normalise a regex list (a single string is one pattern) and check each compiles."""
    patterns = (value,) if isinstance(value, str) else tuple(value or ())
    for p in patterns:
        if not isinstance(p, str):
            raise ValueError(f"{field} = {value!r}: each entry must be a regex string, got {p!r}")
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{field} = {value!r}: {p!r} is not a valid regex ({e})") from e
    return patterns


def _next_int(x: Any) -> Any:
    return x + 1 if _is_int(x) else x


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
