"""Training hooks: how pruning, sparsity and regularisers plug into `train(...)`.

Each optimizer step of `edgecompress.train.train` runs, in this order and for every hook in
the order given:

    logits = model(x)
    loss = criterion(x, y, logits)
    loss = hook.loss(model, x, y, logits, loss)       # each hook may add terms
    loss.backward()
    hook.after_backward(model, step)                  # e.g. add subgradients to .grad
    clip_grad_norm_ (if config.grad_clip)
    optimizer.step(); scheduler.step()
    hook.after_step(model, step)                      # e.g. re-apply pruning masks

`step` is the 0-based global optimizer step (epoch-1) * steps_per_epoch + batch index, so a
schedule keyed on it continues correctly after a resume. Because `after_step` runs after the
last step of an epoch too, a hook that edits weights (masks) has done so before validation.

Hooks may edit values in place (`.grad`, `param.data`, buffers) but must not replace or
reshape parameters: the optimizer holds them. Physical pruning happens between `train` calls.

`state_dict()` is saved in the per-epoch training checkpoint and handed back to
`load_state_dict` on resume; it must hold only tensors, numbers, strings, lists, tuples and
dicts (the checkpoint is read with `weights_only=True`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainHook:
    """Base class; override what you need. step is the 0-based global optimizer step."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Return the loss to back-propagate; the default leaves it unchanged."""
        return loss

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Called after `loss.backward()`, before gradient clipping and the optimizer step."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after the optimizer and scheduler steps."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in the training checkpoint (restored on resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
