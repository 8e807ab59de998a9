"""How a search scores a pruned candidate: rewards and the no-fine-tuning evaluator.

Rewards (a registry: `make_reward(name, **params)`, `list_rewards()`):

- "error": AMC's reward under a hard constraint, R = -error (error = 1 - top-1 accuracy).
  The budget is met by construction (the strategies clamp every action), so the reward
  only has to rank accuracy.
- "error_log_macs": AMC's accuracy-guaranteed reward, R = -error * ln(MACs): no budget;
  the log makes a 10x MAC cut worth a fixed error increase whatever the model size.
- "mnasnet": MnasNet's soft constraint, R = ACC * (m / T) ** w with m the candidate's
  budget metric (latency ms by default), T the budget. w = -0.07 on both sides of T by
  default (MnasNet's soft setting, alpha = beta = -0.07: 2x slower costs ~5% of reward,
  2x faster gains as much). `w_above` sets a separate exponent above T (MnasNet's hard
  setting is w = 0, w_above = -1).

`Evaluator` gives the accuracy of a candidate without fine-tuning, as AMC does: BN
statistics are re-estimated on a few training batches first (pruning changes every
downstream activation distribution, and stale statistics would rank candidates by how
little they moved, not by what they can do), then top-1 is taken on a fixed held-out
validation subset.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgecompress.errors import UserError, suggest


@dataclass(frozen=True)
class Outcome:
    """What a candidate measured: top-1 accuracy in [0, 1], MACs, params, latency in ms (None: not measured)."""

    accuracy: float
    macs: float
    params: float
    latency_ms: float | None = None

    def metric(self, name: str) -> float:
        """The value of a budget metric ("macs", "params" or "latency")."""
        value = {"macs": self.macs, "params": self.params, "latency": self.latency_ms}[name]
        if value is None:
            raise UserError(f"the candidate's {name} was not measured; pass a latency source")
        return float(value)


class Reward(abc.ABC):
    """Base of the rewards: `hard` (the budget is a hard constraint met by clamping),
    `needs_budget` (the reward reads a budget) and `takes_budget` (a budget may be given)."""

    name = ""
    hard = False
    needs_budget = False
    takes_budget = True

    @abc.abstractmethod
    def __call__(self, outcome: Outcome, metric: str | None = None, target: float | None = None) -> float:
        """The reward of `outcome`; `metric`/`target` are the budget's metric name and value."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


_REWARDS: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str):
    """Class decorator adding a reward to the registry under `name`."""

    def decorate(cls):
        cls.name = name
        _REWARDS[name] = cls
        return cls

    return decorate


def list_rewards() -> list[str]:
    return sorted(_REWARDS)


def make_reward(name: str | Reward, **params: Any) -> Reward:
    """A reward by registry name (or a Reward passed through); UserError for an unknown name."""
    if isinstance(name, Reward):
        return name
    if name not in _REWARDS:
        raise UserError(f"unknown reward {name!r}{suggest(str(name), _REWARDS)}; valid: {', '.join(list_rewards())}")
    try:
        return _REWARDS[name](**params)
    except TypeError as exc:
        raise UserError(f"reward {name!r} does not take {sorted(params)} ({exc})") from None


def _accuracy(outcome: Outcome) -> float:
    a = float(outcome.accuracy)
    if not (math.isfinite(a) and 0 <= a <= 1):
        raise UserError(f"accuracy {a!r} must be a fraction in [0, 1]; the accuracy function returned something else")
    return a


@register_reward("error")
class ErrorReward(Reward):
    """R = -(1 - accuracy), for AMC's resource-constrained (hard budget) search."""

    hard = True
    needs_budget = True

    def __call__(self, outcome: Outcome, metric: str | None = None, target: float | None = None) -> float:
        return -(1.0 - _accuracy(outcome))


@register_reward("error_log_macs")
class ErrorLogMacsReward(Reward):
    """R = -(1 - accuracy) * ln(MACs), AMC's accuracy-guaranteed reward (no budget)."""

    takes_budget = False

    def __call__(self, outcome: Outcome, metric: str | None = None, target: float | None = None) -> float:
        if not outcome.macs >= 1:
            raise UserError(f"MACs {outcome.macs!r} must be >= 1 for the error_log_macs reward")
        return -(1.0 - _accuracy(outcome)) * math.log(outcome.macs)


@register_reward("mnasnet")
class MnasNetReward(Reward):
    """R = accuracy * (m / T) ** w for m <= T, ** w_above for m > T (w_above defaults to w)."""

    needs_budget = True

    def __init__(self, w: float = -0.07, w_above: float | None = None) -> None:
        for field, v in (("w", w), ("w_above", w_above)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v <= 0):
                raise ValueError(f"MnasNetReward.{field} = {v!r} must be a number <= 0")
        self.w, self.w_above = float(w), None if w_above is None else float(w_above)

    def __call__(self, outcome: Outcome, metric: str | None = None, target: float | None = None) -> float:
        if metric is None or target is None or not target > 0:
            raise UserError("the mnasnet reward needs a budget (target T), e.g. latency=3ms")
        m = outcome.metric(metric)
        w = self.w if m <= target or self.w_above is None else self.w_above
        return _accuracy(outcome) * (m / target) ** w

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "w": self.w, "w_above": self.w_above}


# -- accuracy without fine-tuning -----------------------------------------------------------

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean/var as the plain average over `batches`.

    Each BN is reset, its momentum set to None (cumulative average) and only the BNs are
    put in train mode (a dropout left in train mode would perturb the statistics); inputs
    run under no_grad. Momentum and every module's train/eval flag are restored: weights,
    biases and anything else stay untouched. Returns the number of batches seen.
    """
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x)
                seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    if seen == 0:
        raise UserError("BN re-estimation got no batches; give the evaluator a non-empty training set")
    return seen


def _stack(data: Any, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) tensors of `data` (a Dataset of (x, y) or an (X, Y) tensor pair) at `indices`."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return data[0][idx], data[1][idx]
    fetch = getattr(data, "__getitems__", None)
    items = fetch(list(indices)) if fetch is not None else [data[i] for i in indices]
    xs = torch.stack([torch.as_tensor(x) for x, _ in items])
    ys = torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
    return xs, ys


def _length(data: Any) -> int:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return len(data[0])
    return len(data)


class Evaluator:
    """Top-1 of a candidate, no fine-tuning: BN re-estimation, then a fixed validation subset.

    val_data / train_data: Datasets of (input, label) or (X, Y) tensor pairs. A seeded
    draw fixes `val_samples` validation images and `bn_batches` batches of `batch_size`
    training images once, so every candidate sees the same data and a search resumes
    exactly. Calling it on a model re-estimates that model's BN statistics in place
    (candidates are pruned copies) and returns the accuracy in [0, 1].
    """

    def __init__(self, val_data: Any, train_data: Any, *, val_samples: int = 2000, bn_batches: int = 10,
                 batch_size: int = 128, seed: int = 0) -> None:
        for field, v, least in (("val_samples", val_samples, 1), ("bn_batches", bn_batches, 0),
                                ("batch_size", batch_size, 1)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= least):
                raise ValueError(f"Evaluator.{field} = {v!r} must be an integer >= {least}")
        gen = torch.Generator().manual_seed(seed)
        n_val, n_train = _length(val_data), _length(train_data)
        if n_val == 0:
            raise UserError("the validation set is empty; the search needs held-out images to score candidates")
        val_idx = torch.randperm(n_val, generator=gen)[: min(val_samples, n_val)].sort().values.tolist()
        self.val_x, self.val_y = _stack(val_data, val_idx)
        need = min(bn_batches * batch_size, n_train)
        bn_idx = torch.randperm(n_train, generator=gen)[:need].tolist() if need else []
        bn_x = _stack(train_data, bn_idx)[0] if bn_idx else torch.empty(0)
        self.bn_batches = list(bn_x.split(batch_size)) if bn_idx else []
        self.batch_size = batch_size

    def __call__(self, model: nn.Module) -> float:
        if self.bn_batches:
            reestimate_bn(model, self.bn_batches)
        was = model.training
        model.eval()
        correct = 0
        try:
            with torch.inference_mode():
                for x, y in zip(self.val_x.split(self.batch_size), self.val_y.split(self.batch_size)):
                    correct += int((model(x).argmax(1) == y).sum())
        finally:
            model.train(was)
        return correct / len(self.val_y)


def fashion_mnist_evaluator(input_shape: Sequence[int] = (1, 28, 28), data_dir: Any = None, *, val_samples: int = 2000,
                            bn_batches: int = 10, batch_size: int = 128, seed: int = 0) -> Evaluator:
    """An Evaluator on Fashion-MNIST: validation images from the held-out val split (5000 of
    the official train split, seed 0, as the demo model was trained), BN batches from train."""
    from edgecompress.data.fashion_mnist import fashion_mnist_splits

    splits = fashion_mnist_splits(tuple(input_shape), data_dir, val_size=5000, seed=0)
    return Evaluator(splits.val, splits.train, val_samples=val_samples, bn_batches=bn_batches,
                     batch_size=batch_size, seed=seed)

