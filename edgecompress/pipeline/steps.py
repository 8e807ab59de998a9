"""The registry of compression steps a recipe can list.

A step is `fn(model, params: dict, ctx: StepContext) -> nn.Module`: it takes the
current model and returns the compressed one (in place or new). Techniques
register themselves here (`@register_step("prune")`), so the pipeline never
grows an if/elif per technique. This version ships the measurement pipeline;
pruning, quantization, factorization and search register their steps as they land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

StepFn = Callable[..., Any]
_STEPS: dict[str, StepFn] = {}


@dataclass
class StepContext:
    """What a step may use besides the model: data, seed, device and a work dir for checkpoints."""

    input_shape: tuple[int, ...]
    seed: int
    splits: Any  # edgecompress.data Splits (train/val/test), loaded lazily by the pipeline
    device: Any  # edgecompress.devices.Device
    work_dir: Path  # survives a failed run, so training steps can resume from checkpoints


def register_step(name: str) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        if name in _STEPS:
            raise ValueError(f"step {name!r} is already registered (by {_STEPS[name].__module__})")
        _STEPS[name] = fn
        return fn

    return deco


def available_steps() -> list[str]:
    return sorted(_STEPS)


def get_step(name: str) -> StepFn:
    return _STEPS[name]
