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
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

StepFn = Callable[..., Any]
Validator = Callable[[dict], None]
_STEPS: dict[str, StepFn] = {}
_VALIDATORS: dict[str, Validator] = {}
_BUILTIN = ("edgecompress.prune.steps",)


@dataclass
class StepContext:
    """What a step may use besides the model: data, seed, device and a work dir for checkpoints."""

    input_shape: tuple[int, ...]
    seed: int
    splits: Any  # edgecompress.data Splits (train/val/test), loaded lazily by the pipeline
    device: Any  # edgecompress.devices.Device
    work_dir: Path  # survives a failed run, so training steps can resume from checkpoints
    original: Any = None  # the model before any step (the distillation teacher)
    notes: list[str] = field(default_factory=list)  # lines a step wants in the report
    records: dict[str, Any] = field(default_factory=dict)  # per-step results for report.json


def register_step(name: str, validate: Validator | None = None) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        if name in _STEPS:
            raise ValueError(f"step {name!r} is already registered (by {_STEPS[name].__module__})")
        _STEPS[name] = fn
        if validate is not None:
            _VALIDATORS[name] = validate
        return fn

    return deco


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
