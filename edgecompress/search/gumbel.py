"""The relaxations differentiable searches are built from (TAS, SNAS, SCAS share them).

- `gumbel_softmax(logits, tau)`: a sample of the Concrete / Gumbel-softmax distribution
  (Maddison et al., Jang et al. 2017): softmax((logits + g) / tau) with g ~ Gumbel(0, 1).
  As tau -> 0 the sample becomes one-hot and its argmax is distributed as
  softmax(logits) (the Gumbel-max trick); `hard=True` returns that one-hot in the forward
  pass with the soft sample's gradient (straight-through).
- `sample_candidates(logits, tau, k)`: TAS's sampling: k distinct candidates drawn
  without replacement (Gumbel-top-k: the k largest perturbed logits), weighted by their
  Gumbel-softmax probabilities renormalised over the k, so only k candidates run per
  step but every logit gets a gradient through the weights.
- `channel_interpolate(x, c)`: TAS's channel-wise interpolation: a feature map of c'
  channels resized to c along the channel dimension by adaptive average pooling (output
  channel i is the mean of input channels floor(i c'/c) .. ceil((i+1) c'/c) - 1), so
  candidates of different widths can be summed.
- `cost_loss(expected, target, tolerance)`: TAS's resource loss with a tolerance band:
  log(E) above (1 + t) * target, 0 inside the band, -log(E) below (1 - t) * target.
  `expected` is the expected cost as a fraction of the unpruned model, so the loss
  reads the same for MACs and latency.
- `Temperature`: the annealing schedule of tau (exponential from 10 to 0.1 by default,
  as in TAS; linear also offered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCHEDULES = ("exp", "linear")
_TINY = 1e-10


def gumbel_noise(shape: torch.Size | tuple[int, ...], *, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard Gumbel samples -log(-log U), U ~ Uniform(0, 1) kept away from 0 and 1."""
    u = torch.rand(shape, generator=generator, dtype=dtype).clamp_(_TINY, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def _check_tau(tau: float) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"temperature tau = {tau!r} must be a finite number > 0")


def gumbel_softmax(logits: torch.Tensor, tau: float, *, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One relaxed one-hot sample per row of `logits` (last dimension = the choices)."""
    _check_tau(tau)
    y = F.softmax((logits + gumbel_noise(logits.shape, generator=generator, dtype=logits.dtype)) / tau, dim=-1)
    if not hard:
        return y
    one_hot = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return one_hot - y.detach() + y


def sample_candidates(logits: torch.Tensor, tau: float, k: int = 2, *,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices[k], weights[k]) for one 1-D `logits`: k distinct candidates, weights summing to 1."""
    _check_tau(tau)
    if logits.dim() != 1:
        raise ValueError(f"sample_candidates takes 1-D logits, got shape {tuple(logits.shape)}")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k = {k!r} must be an integer >= 1 (candidates sampled per step)")
    k = min(k, logits.numel())
    perturbed = logits + gumbel_noise(logits.shape, generator=generator, dtype=logits.dtype)
    probs = F.softmax(perturbed / tau, dim=-1)
    idx = torch.topk(perturbed.detach(), k).indices
    chosen = probs[idx]
    return idx, chosen / chosen.sum().clamp_min(_TINY)


def channel_interpolate(x: torch.Tensor, channels: int) -> torch.Tensor:
    """`x` (N, c', ...) resized to (N, `channels`, ...) by adaptive average pooling over dim 1."""
    if not (isinstance(channels, int) and channels >= 1):
        raise ValueError(f"channels = {channels!r} must be an integer >= 1")
    have = x.shape[1]
    if have == channels:
        return x
    moved = x.movedim(1, -1)
    lead = moved.shape[:-1]
    out = F.adaptive_avg_pool1d(moved.reshape(-1, 1, have), channels)
    return out.reshape(*lead, channels).movedim(-1, 1)


def cost_loss(expected: torch.Tensor, target: float, tolerance: float = 0.05) -> torch.Tensor:
    """TAS's resource loss of the expected cost (a fraction of the full model's) against `target`."""
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"cost target = {target!r} must be a finite number > 0 (a fraction of the full model)")
    if not (0 <= tolerance < 1):
        raise ValueError(f"tolerance = {tolerance!r} must be in [0, 1)")
    value = float(expected.detach())
    if value > (1 + tolerance) * target:
        return torch.log(expected)
    if value < (1 - tolerance) * target:
        return -torch.log(expected)
    return expected * 0.0


@dataclass(frozen=True)
class Temperature:
    """tau over a search, from `start` (first step) to `end` (last step)."""

    start: float = 10.0
    end: float = 0.1
    schedule: str = "exp"

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"Temperature.{name} = {v!r} must be a finite number > 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Temperature.schedule = {self.schedule!r} must be one of {', '.join(SCHEDULES)}")

    def at(self, step: int, total: int) -> float:
        """tau at `step` of `total` steps (0-based; the last step gets `end`)."""
        frac = min(max(step / max(total - 1, 1), 0.0), 1.0)
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * frac
        return self.start * (self.end / self.start) ** frac
