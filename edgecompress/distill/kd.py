"""Knowledge distillation (Hinton, Vinyals and Dean 2015) for fine-tuning a compressed model.

The student is trained on a mix of the teacher's softened outputs and the hard labels:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The KL term is summed over classes and averaged over samples ("batchmean");
T^2 keeps its gradients on the scale of the CE term when T changes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from edgecompress.errors import UserError, check_keys
from edgecompress.train.config import TrainConfig
from edgecompress.train.hooks import TrainHook
from edgecompress.train.loop import TrainHistory, train
from edgecompress.train.progress import ProgressMode


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class DistillConfig:
    """temperature: T > 0 that softens both softmaxes (1 = no softening).
    alpha: weight in [0, 1] of the distillation term; 1 - alpha goes to cross-entropy on
    the labels (0 = no distillation)."""

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self) -> None:
        if not _real(self.temperature) or not self.temperature > 0:
            raise ValueError(f"DistillConfig.temperature = {self.temperature!r} must be a finite number > 0")
        if not _real(self.alpha) or not 0 <= self.alpha <= 1:
            raise ValueError(f"DistillConfig.alpha = {self.alpha!r} must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build from a JSON/YAML mapping; unknown keys are a ValueError naming them."""
        check_keys("DistillConfig field", data, (f.name for f in fields(cls)))
        return cls(**data)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, config: DistillConfig) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) (batch mean) + (1 - alpha) * CE(student, y).

    Logits are (N, classes); y holds class indices (N,). The CE term has no label smoothing.
    Gradients flow to `student_logits` only.
    """
    if student_logits.shape != teacher_logits.shape:
        raise UserError(
            f"teacher logits have shape {tuple(teacher_logits.shape)}, the student's {tuple(student_logits.shape)}; "
            "use a teacher with the same classes as the student"
        )
    t = config.temperature
    teacher_logits = teacher_logits.detach()
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, y)
    return config.alpha * t * t * kl + (1.0 - config.alpha) * ce


class DistillCriterion:
    """`train(criterion=DistillCriterion(teacher, config))`: the KD loss against `teacher`.

    The teacher runs on the same batch in eval mode under `torch.no_grad()`: it gets no
    gradients, its BatchNorm statistics never move, and the student's `model.train()`
    does not reach it (it is not a submodule of the student). It is moved to the batch's
    device on first use.
    """

    def __init__(self, teacher: nn.Module, config: DistillConfig | None = None):
        self.teacher = teacher.eval()
        self.config = config if config is not None else DistillConfig()
        self._device: torch.device | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self._device != x.device:
            self.teacher.to(x.device)
            self._device = x.device
        # Set every call: the caller may have put the teacher back in train mode in between.
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return kd_loss(logits, teacher_logits, y, self.config)


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    train_config: TrainConfig,
    distill: DistillConfig | None = DistillConfig(),
    hooks: Sequence[TrainHook] = (),
    checkpoint_dir: str | Path | None = None,
    progress: ProgressMode = True,
    device: str | torch.device = "cpu",
) -> TrainHistory:
    """Fine-tune `student` in place with `train`, distilling from `teacher`.

    Without a teacher or with `distill=None` this is plain `train` (cross-entropy with
    `train_config.label_smoothing`); with both, the loss is `kd_loss` (label smoothing
    is not used). `hooks`, `checkpoint_dir` and `progress` are passed to `train`, which
    resumes from `checkpoint_dir` when it holds a checkpoint.
    """
    criterion = DistillCriterion(teacher, distill) if teacher is not None and distill is not None else None
    return train(
        student, train_loader, val_loader, train_config,
        checkpoint_dir=checkpoint_dir, progress=progress, device=device, hooks=hooks, criterion=criterion,
    )


def iterative_prune(
    model: nn.Module,
    steps: int,
    prune_fn: Callable[[nn.Module, int], None],
    finetune_fn: Callable[[nn.Module, int], None],
    *,
    progress: bool = True,
) -> None:
    """Alternate pruning and fine-tuning: for i in range(steps): prune_fn(model, i); finetune_fn(model, i).

    Both functions edit `model` in place; i is 0-based. With `progress`, one line per phase
    goes to stderr with the parameter count (dense, so masked weights still count) and
    the wall time in seconds.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"iterative pruning needs steps >= 1, got {steps!r}; give a positive whole number of prune/fine-tune rounds")
    for i in range(steps):
        before = _params(model)
        t0 = time.perf_counter()
        prune_fn(model, i)
        t1 = time.perf_counter()
        if progress:
            print(f"round {i + 1}/{steps}: pruned, params {before:,} -> {_params(model):,} ({t1 - t0:.1f} s); fine-tuning", file=sys.stderr, flush=True)
        finetune_fn(model, i)
        if progress:
            print(f"round {i + 1}/{steps}: fine-tuned ({time.perf_counter() - t1:.1f} s)", file=sys.stderr, flush=True)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
