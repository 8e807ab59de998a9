"""The registry of compression steps a recipe can list.

A step is `fn(model, params: dict, ctx: StepContext) -> nn.Module`: it takes the
current model and returns the compressed one (in place or new). Techniques
register themselves here (`@register_step("prune", validate=...)`), so the pipeline
never grows an if/elif per technique; `validate(params)` runs when the recipe is read,
so a typo fails before an hour of fine-tuning. The built-in step modules are imported
on first use, which keeps `edgecompress --help` light.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

StepFn = Callable[..., Any]
Validator = Callable[[dict], None]
SequenceCheck = Callable[[list[tuple[str, dict]]], None]
_STEPS: dict[str, StepFn] = {}
_VALIDATORS: dict[str, Validator] = {}
_SEQUENCE_CHECKS: list[SequenceCheck] = []
_BUILTIN = ("edgecompress.prune.steps", "edgecompress.search.steps", "edgecompress.lowrank.steps",
            "edgecompress.quantize.steps")


@dataclass
class StepContext:
    """What a step may use besides the model: data, seed, device and a work dir for checkpoints.

    A recipe runs on one *track* (the variant "after"); a step may fork others
    (`forks[name] = policy`, e.g. the search step's uniform baseline at the same budget):
    the pipeline then runs the remaining steps on a copy of the model with a context of
    its own (`variant`, `policy`, a work dir below this one) and reports each variant.
    """

    input_shape: tuple[int, ...]
    seed: int
    splits: Any  # edgecompress.data Splits (train/val/test), loaded lazily by the pipeline
    device: Any  # edgecompress.devices.Device
    work_dir: Path  # survives a failed run, so training steps can resume from checkpoints
    original: Any = None  # the model before any step (the distillation teacher)
    notes: list[str] = field(default_factory=list)  # lines a step wants in the report
    records: dict[str, Any] = field(default_factory=dict)  # per-step results for report.json
    variant: str = "after"  # the name of this track in the report
    policy: Any = None  # a search.Policy chosen by a `search` step, for `prune: {policy: search}`
    search_space: Any = None  # the search.SearchSpace that policy belongs to
    forks: dict[str, Any] = field(default_factory=dict)  # variant name -> policy, taken by the pipeline
    artifacts: dict[str, Path] = field(default_factory=dict)  # bundle-relative name -> file to copy in
    #: how to rebuild the model when a step replaced its architecture (a gradient search's
    #: child): {"spec", "kwargs", "removed"} for save_checkpoint; None: the original's
    rebuild: dict[str, Any] | None = None

    def fork(self, variant: str, policy: Any) -> StepContext:
        """The context of a new track that starts here with `policy` (same data, device, teacher)."""
        return dataclasses.replace(self, work_dir=self.work_dir / variant, notes=[], records={}, variant=variant,
                                   policy=policy, forks={}, artifacts={})

    def step_dir(self, step: str, key: str = "") -> Path:
        """A work dir for the next run of `step` on this track (checkpoints; `key` tells settings apart)."""
        count = self.records.setdefault("_counts", {})
        count[step] = count.get(step, 0) + 1
        return self.work_dir / (f"{step}-{count[step]}" + (f"-{key}" if key else ""))

    def round_to(self) -> int | None:
        """The channel multiple the device's profile says its runtimes like (`preferred_round_to`); None: unknown."""
        from edgecompress.devices.profiles import preferred_round_to

        return preferred_round_to(self.device)

    def loader(self, split: str, batch_size: int, shuffle: bool, n: int | None = None):
        """A DataLoader over `split` (train/val/test; None if the split is empty), `n` images drawn with the seed."""
        from edgecompress.data.calibration import calibration_subset, make_loader

        ds = getattr(self.splits, split)
        if ds is None:
            return None
        if n is not None and n < len(ds):
            ds = calibration_subset(ds, n, seed=self.seed)
        return make_loader(ds, batch_size=batch_size, shuffle=shuffle, seed=self.seed)


def register_step(name: str, validate: Validator | None = None) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        if name in _STEPS:
            raise ValueError(f"step {name!r} is already registered (by {_STEPS[name].__module__})")
        _STEPS[name] = fn
        if validate is not None:
            _VALIDATORS[name] = validate
        return fn

    return deco


def register_recipe_check(fn: SequenceCheck) -> SequenceCheck:
    """Register a check over a recipe's whole step list (e.g. `prune: {policy: search}` needs a search before it)."""
    _SEQUENCE_CHECKS.append(fn)
    return fn


def _load_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def available_steps() -> list[str]:
    _load_builtin()
    return sorted(_STEPS)


def get_step(name: str) -> StepFn:
    _load_builtin()
    return _STEPS[name]


def validate_step(name: str, params: dict) -> None:
    """Check a step's parameters (ValueError naming the bad one); steps without a validator accept any."""
    _load_builtin()
    if name in _VALIDATORS:
        _VALIDATORS[name](params)


def validate_sequence(steps: list[tuple[str, dict]]) -> None:
    """Run the registered whole-recipe checks (ValueError naming the step)."""
    _load_builtin()
    for check in _SEQUENCE_CHECKS:
        check(steps)
