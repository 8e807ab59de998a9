"""Network slimming (Liu et al., ICCV 2017): an L1 penalty on BatchNorm scales during training.

Adding lambda * sum(|gamma|) to the loss drives the scales of unimportant channels towards
zero, so a BN-scale importance criterion can then remove them with little accuracy loss.
The penalty is applied as its subgradient lambda * sign(gamma), added to each selected
BatchNorm weight's gradient after backward (sign(0) = 0, so a zero scale is left alone).

With `TrainConfig.no_decay_1d` on (the default) BatchNorm scales get no L2 weight decay, so
this L1 term is the only shrinkage on them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.train.hooks import TrainHook

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class SlimmingHook(TrainHook):
    """`train(hooks=[SlimmingHook(1e-4)])`: adds penalty * sign(gamma) to every BatchNorm
    scale's gradient (the subgradient of penalty * sum|gamma|).

    penalty: lambda > 0 (the paper used 1e-4 to 1e-5 for CIFAR/ImageNet nets).
    include: regex searched in qualified module names (`re.search`); None selects every
        affine BatchNorm. Frozen scales (requires_grad False) are skipped.
    """

    def __init__(self, penalty: float = 1e-4, include: str | None = None):
        if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or not math.isfinite(penalty) or penalty <= 0:
            raise ValueError(f"SlimmingHook.penalty = {penalty!r} must be a finite number > 0")
        if include is not None:
            try:
                re.compile(include)
            except re.error as e:
                raise ValueError(f"SlimmingHook.include = {include!r} is not a valid regular expression: {e}") from e
        self.penalty = float(penalty)
        self.include = include

    def after_backward(self, model: nn.Module, step: int) -> None:
        found = False
        for _, weight in _bn_scales(model, self.include):
            found = True
            if not weight.requires_grad:
                continue
            sub = torch.sign(weight.detach()) * self.penalty
            if weight.grad is None:
                weight.grad = sub
            else:
                weight.grad.add_(sub)
        if not found:
            where = f" whose name matches {self.include!r}" if self.include is not None else ""
            raise UserError(f"network slimming found no BatchNorm layer with a scale{where}; use a model with BatchNorm or fix the include pattern")

    def __repr__(self) -> str:
        return f"SlimmingHook(penalty={self.penalty!r}, include={self.include!r})"


def bn_l1(model: nn.Module, include: str | None = None) -> float:
    """sum(|gamma|) over the affine BatchNorm layers (whose names match `include`), for reporting."""
    return float(sum(w.detach().abs().sum().item() for _, w in _bn_scales(model, include)))


def _bn_scales(model: nn.Module, include: str | None) -> Iterator[tuple[str, nn.Parameter]]:
    for name, module in model.named_modules():
        if isinstance(module, BATCH_NORMS) and module.weight is not None:
            if include is None or re.search(include, name):
                yield name, module.weight
