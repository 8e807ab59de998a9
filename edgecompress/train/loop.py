"""The training loop: progress bars, atomic per-epoch checkpoints, exact resume, best-val weights,
a pluggable criterion (distillation) and hooks (regularisers, pruning masks)."""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgecompress.errors import UserError
from edgecompress.fsutil import atomic_write_bytes
from edgecompress.train.config import TrainConfig
from edgecompress.train.evaluate import EvalResult, run_evaluation
from edgecompress.train.hooks import TrainHook
from edgecompress.train.progress import ProgressMode, TrainReporter
from edgecompress.train.seed import rng_states, seed_everything, set_rng_states

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "edgecompress.train-checkpoint/1"

# criterion(x, y, logits) -> scalar loss. x is passed so a criterion can run a teacher on it.
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch. Accuracies are fractions in [0, 1]; train_loss is the mean of the
    loss that was minimised (the criterion, by default cross-entropy with label smoothing,
    plus any terms hooks added); val_loss is plain cross-entropy; val fields are None
    without a val loader;
    lr is the rate of the epoch's last step; seconds is the wall time of train + val."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    seconds: float


@dataclass(frozen=True)
class TrainHistory:
    """All finished epochs (including those from before a resume).

    best_epoch/best_val_top1: the epoch (1-based) with the highest val top-1, None without
    a val loader. seconds: training wall time summed over every run that contributed.
    resumed_from: epochs already finished when this call started (0 for a fresh run).
    """

    epochs: tuple[EpochRecord, ...]
    best_epoch: int | None
    best_val_top1: float | None
    seconds: float
    resumed_from: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [asdict(r) for r in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_top1": self.best_val_top1,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
        }


@dataclass
class _State:
    epoch: int = 0  # epochs finished
    records: list[EpochRecord] | None = None
    best_top1: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0


def train(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: ProgressMode = True,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    device: str | torch.device = "cpu",
    hooks: Sequence[TrainHook] = (),
    criterion: Criterion | None = None,
) -> TrainHistory:
    """Train `model` in place for `config.epochs` epochs and return the history.

    After every epoch, `checkpoint_dir/last.pt` is replaced atomically with the model,
    optimizer, scheduler, RNG states (python, numpy, torch, the loader's generator),
    history and best-val weights. With `resume` and such a file present, training
    continues after its last finished epoch and ends with the same weights as an
    uninterrupted run (same data, config and thread count). The config must match the
    checkpoint's. `resume=False` starts over and overwrites it.

    A fresh run seeds python/numpy/torch with `config.seed` (the model is built by the
    caller, so seed before building it too). Ctrl-C lets a checkpoint being written
    finish, says how to resume, and re-raises KeyboardInterrupt. `on_epoch_end` gets
    each `EpochRecord` after its checkpoint is written.

    `criterion(x, y, logits)` returns the loss to minimise (None: cross-entropy with
    `config.label_smoothing`). `hooks` run in order at each step, see
    `edgecompress.train.hooks`; their `state_dict()`s are saved in the checkpoint and
    restored on resume, so resuming needs the same hooks (count and classes).
    """
    steps = len(train_loader)
    if steps == 0:
        raise UserError("training data is empty: the train loader yields no batches; check the dataset and batch size")
    model.to(device)
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: config.lr_factor(step, steps))
    hooks = tuple(hooks)
    for hook in hooks:
        if not isinstance(hook, TrainHook):
            raise TypeError(f"hooks must be TrainHook instances, got {type(hook).__name__}")
    if criterion is None:
        criterion = _cross_entropy(config.label_smoothing)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    generator: torch.Generator | None = getattr(train_loader, "generator", None)

    state = _State(records=[])
    if ckpt is not None and resume and ckpt.exists():
        state = _load_checkpoint(ckpt, model, optimizer, scheduler, generator, config, steps, hooks)
    else:
        seed_everything(config.seed, deterministic=False)
    resumed_from = state.epoch

    report = TrainReporter(progress, config.epochs, steps, state.epoch)
    try:
        with report:
            if resumed_from:
                report.print(f"resuming from {ckpt}: {resumed_from}/{config.epochs} epochs done")
            for epoch in range(state.epoch + 1, config.epochs + 1):
                record = _run_epoch(model, train_loader, val_loader, optimizer, scheduler, criterion, hooks, config, device, epoch, report)
                state.records.append(record)  # type: ignore[union-attr]
                state.epoch, state.seconds = epoch, state.seconds + record.seconds
                if record.val_top1 is not None and (state.best_top1 is None or record.val_top1 > state.best_top1):
                    state.best_top1, state.best_epoch = record.val_top1, epoch
                    state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if ckpt is not None:
                    with _sigint_deferred():
                        _save_checkpoint(ckpt, model, optimizer, scheduler, generator, config, steps, state, hooks)
                report.end_epoch(_epoch_line(record, config.epochs), state.best_top1)
                if on_epoch_end is not None:
                    on_epoch_end(record)
    except KeyboardInterrupt:
        if ckpt is not None and state.epoch:
            where = f"{state.epoch} finished epoch(s) are saved in {ckpt}; run the same command again with resume on (--resume) to continue"
        elif ckpt is not None:
            where = "no epoch had finished, so nothing was saved"
        else:
            where = "no checkpoint_dir was given, so nothing was saved"
        when = "after" if report.epoch == state.epoch else "during"
        report.console.print(f"interrupted {when} epoch {report.epoch}/{config.epochs}: {where}", markup=False, highlight=False, soft_wrap=True)
        raise

    if config.restore_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
    return TrainHistory(
        epochs=tuple(state.records or ()),
        best_epoch=state.best_epoch,
        best_val_top1=state.best_top1,
        seconds=state.seconds,
        resumed_from=resumed_from,
    )


def _run_epoch(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: Criterion,
    hooks: tuple[TrainHook, ...],
    config: TrainConfig,
    device: str | torch.device,
    epoch: int,
    report: TrainReporter,
) -> EpochRecord:
    """Train one epoch (1-based `epoch`), then validate."""
    t0 = time.perf_counter()
    report.start_epoch(epoch)
    train_loss, train_top1, last_lr = _train_epoch(model, train_loader, optimizer, scheduler, criterion, hooks, config, device, epoch, report.train_batch)
    val: EvalResult | None = None
    if val_loader is not None:
        report.start_val(len(val_loader) if hasattr(val_loader, "__len__") else None)
        val = run_evaluation(model, val_loader, device, on_batch=lambda i, r: report.val_batch(i, r.top1))
    return EpochRecord(
        epoch=epoch,
        lr=last_lr,
        train_loss=train_loss,
        train_top1=train_top1,
        val_loss=val.loss if val else None,
        val_top1=val.top1 if val else None,
        val_top5=val.top5 if val else None,
        seconds=time.perf_counter() - t0,
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: Criterion,
    hooks: tuple[TrainHook, ...],
    config: TrainConfig,
    device: str | torch.device,
    epoch: int,
    on_batch: Callable[[int, str], None] | None,
) -> tuple[float, float, float]:
    """One pass; returns (mean loss, top-1 fraction) over the samples seen and the last step's lr."""
    model.train()
    n, loss_sum, correct, lr = 0, 0.0, 0, config.lr
    steps = len(loader)
    for i, batch in enumerate(loader):
        step = (epoch - 1) * steps + i  # global, so hook schedules continue across a resume
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x)
        loss = criterion(x, y, logits)
        for hook in hooks:
            loss = hook.loss(model, x, y, logits, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in hooks:
            hook.after_backward(model, step)
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        for hook in hooks:
            hook.after_step(model, step)
        value = loss.item()
        if not np.isfinite(value):
            raise UserError(
                f"training diverged: loss {value} at epoch {epoch} step {i + 1}; "
                f"lower the learning rate (lr {config.lr}) or set grad_clip"
            )
        n += y.shape[0]
        loss_sum += value * y.shape[0]
        correct += int((logits.detach().argmax(1) == y).sum())
        if on_batch is not None:
            on_batch(i + 1, f"loss {loss_sum / n:.4f}  acc {correct / n:.2%}  lr {lr:.3g}")
    return loss_sum / max(n, 1), correct / max(n, 1), lr


def _cross_entropy(label_smoothing: float) -> Criterion:
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def criterion(x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return ce(logits, y)

    return criterion


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters (all have requires_grad=False)")
    if config.no_decay_1d and config.weight_decay > 0:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": config.weight_decay}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def _epoch_line(r: EpochRecord, epochs: int) -> str:
    line = f"epoch {r.epoch}/{epochs}  loss {r.train_loss:.4f}  train top1 {r.train_top1:.2%}"
    if r.val_top1 is not None:
        line += f"  val top1 {r.val_top1:.2%}  val loss {r.val_loss:.4f}"
    return line + f"  lr {r.lr:.3g}  {r.seconds:.0f} s"


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (a checkpoint is never left half-written), then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt



def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator | None,
    config: TrainConfig,
    steps: int,
    state: _State,
    hooks: tuple[TrainHook, ...],
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "config": config.to_dict(),
        "steps_per_epoch": steps,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(generator),
        "history": [asdict(r) for r in state.records or ()],
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "seconds": state.seconds,
        "hook_types": [_hook_type(h) for h in hooks],
        "hooks": [h.state_dict() for h in hooks],
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator | None,
    config: TrainConfig,
    steps: int,
    hooks: tuple[TrainHook, ...],
) -> _State:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise UserError(f"cannot read training checkpoint {path}: {e}; delete it or start without resume") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an edgecompress training checkpoint; delete it or start without resume")
    saved = payload["config"]
    changed = [f.name for f in fields(TrainConfig) if saved.get(f.name) != getattr(config, f.name)]
    if changed:
        detail = ", ".join(f"{k} {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise UserError(f"checkpoint {path} was written with other settings ({detail}); use the same settings to resume, or start without resume")
    if payload["steps_per_epoch"] != steps:
        raise UserError(
            f"checkpoint {path} had {payload['steps_per_epoch']} steps per epoch, the train loader now has {steps}; "
            "resume with the same data and batch size, or start without resume"
        )
    # Checkpoints from before hooks existed have neither key: they were written without hooks.
    saved_hooks = payload.get("hook_types", [])
    if saved_hooks != [_hook_type(h) for h in hooks]:
        raise UserError(
            f"checkpoint {path} was written with hooks [{', '.join(saved_hooks)}], this run has "
            f"[{', '.join(_hook_type(h) for h in hooks)}]; resume with the same hooks, or start without resume"
        )
    model.load_state_dict(payload["model"])
    for hook, hook_state in zip(hooks, payload.get("hooks", [])):
        hook.load_state_dict(hook_state)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    set_rng_states(payload["rng"], generator)
    return _State(
        epoch=payload["epoch"],
        records=[EpochRecord(**r) for r in payload["history"]],
        best_top1=payload["best_top1"],
        best_epoch=payload["best_epoch"],
        best_state=payload["best_state"],
        seconds=payload["seconds"],
    )


def _hook_type(hook: TrainHook) -> str:
    return f"{type(hook).__module__}.{type(hook).__qualname__}"
