"""Training hyperparameters as one frozen, validated, JSON-friendly dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgecompress.errors import check_keys, suggest

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How `train` fits a model.

    epochs: full passes over the training loader.
    lr: peak learning rate, reached after `warmup_epochs` of linear warm-up.
    momentum: SGD momentum (AdamW keeps its default betas 0.9/0.999).
    nesterov: Nesterov momentum for SGD.
    weight_decay: L2 (SGD) or decoupled (AdamW) decay; skipped for 1-D parameters
        (BatchNorm scales, biases) when `no_decay_1d`.
    batch_size: samples per step, for callers that build loaders from the config
        (`train` itself uses the loaders it is given).
    label_smoothing: cross-entropy label smoothing in [0, 1).
    optimizer: "sgd" or "adamw".
    schedule: "cosine" (to 0 at the last step) or "constant", both after warm-up;
        the learning rate is updated every step.
    warmup_epochs: linear warm-up length, may be fractional.
    seed: seeds python/numpy/torch at the start of a fresh run (data order, augmentation).
    grad_clip: max global gradient norm, or None for no clipping.
    restore_best: load the weights of the best validation epoch into the model at the end.
    """

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 128
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    seed: int = 0
    grad_clip: float | None = None
    no_decay_1d: bool = True
    restore_best: bool = True

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} {rule}")

        check("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "must be an integer >= 1")
        check("lr", _finite(self.lr) and self.lr > 0, "must be > 0")
        check("momentum", _finite(self.momentum) and 0 <= self.momentum < 1, "must be in [0, 1)")
        check("weight_decay", _finite(self.weight_decay) and self.weight_decay >= 0, "must be >= 0")
        check("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "must be an integer >= 1")
        check("label_smoothing", _finite(self.label_smoothing) and 0 <= self.label_smoothing < 1, "must be in [0, 1)")
        check("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}" + suggest(str(self.optimizer), OPTIMIZERS))
        check("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}" + suggest(str(self.schedule), SCHEDULES))
        check("warmup_epochs", _finite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs, "must be in [0, epochs]")
        check("seed", isinstance(self.seed, int) and 0 <= self.seed < 2**32, "must be an integer in [0, 2**32)")
        check("grad_clip", self.grad_clip is None or (_finite(self.grad_clip) and self.grad_clip > 0), "must be > 0 or None")
        check("nesterov", isinstance(self.nesterov, bool), "must be true or false")
        check("no_decay_1d", isinstance(self.no_decay_1d, bool), "must be true or false")
        check("restore_best", isinstance(self.restore_best, bool), "must be true or false")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("TrainConfig.nesterov = True needs momentum > 0; set nesterov false or momentum > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a JSON/YAML mapping; unknown keys are a ValueError naming them."""
        check_keys("TrainConfig field", data, (f.name for f in fields(cls)))
        return cls(**data)

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Multiplier of `lr` at optimizer step `step` (0-based), for a LambdaLR."""
        total = self.epochs * steps_per_epoch
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        if self.schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
