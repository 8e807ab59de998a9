"""Accuracy and loss of a classifier over a data loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError
from edgecompress.train.progress import ProgressMode, make_console, make_progress, progress_enabled


@dataclass(frozen=True)
class EvalResult:
    """top1/top5: fractions in [0, 1]; loss: mean cross-entropy (nats per sample); n: samples seen.

    top5 is the fraction whose label is among the 5 highest logits. With 5 classes
    or fewer that would be 1.0 by construction and say nothing, so it is then
    reported equal to top1.
    """

    top1: float
    top5: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class _Totals:
    def __init__(self) -> None:
        self.n = 0
        self.correct1 = 0
        self.correct5 = 0
        self.loss_sum = 0.0
        self.small_head = False

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[0] != target.shape[0]:
            raise UserError(
                f"model output has shape {list(logits.shape)} for a batch of {target.shape[0]}; "
                "evaluation needs class logits shaped (batch, classes)"
            )
        logits = logits.float()
        classes = logits.shape[1]
        self.small_head = classes <= 5
        self.loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        top = logits.topk(min(5, classes), dim=1).indices
        hits = top == target[:, None]
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.n += target.shape[0]

    def result(self) -> EvalResult:
        if self.n == 0:
            raise UserError("evaluation data is empty: the loader yielded no samples; check the dataset and --data-dir")
        top1 = self.correct1 / self.n
        return EvalResult(top1=top1, top5=top1 if self.small_head else self.correct5 / self.n, loss=self.loss_sum / self.n, n=self.n)


def run_evaluation(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    on_batch: Callable[[int, EvalResult], None] | None = None,
) -> EvalResult:
    """`evaluate` without its own progress bar; `on_batch(batches_done, running_result)` is
    called after each batch (used by `train` to drive its bars)."""
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches {max_batches} must be >= 1 or None")
    totals = _Totals()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = batch[0].to(device), batch[1].to(device)
                totals.add(model(x), y)
                if on_batch is not None:
                    on_batch(i + 1, totals.result())
    finally:
        model.train(was_training)
    return totals.result()


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    progress: ProgressMode = True,
    max_batches: int | None = None,
) -> EvalResult:
    """Top-1/top-5 accuracy and mean cross-entropy of `model` on (inputs, labels) batches.

    The model is put in eval mode for the pass and restored afterwards. `max_batches`
    stops early (a quick estimate). Progress bars follow `progress_enabled`.
    """
    if not progress_enabled(progress):
        return run_evaluation(model, loader, device, max_batches)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    with make_progress(make_console(progress)) as bars:
        task = bars.add_task("evaluate", total=total, info="")

        def update(done: int, r: EvalResult) -> None:
            bars.update(task, completed=done, info=f"top1 {r.top1:.2%}  loss {r.loss:.4f}")

        return run_evaluation(model, loader, device, max_batches, update)
