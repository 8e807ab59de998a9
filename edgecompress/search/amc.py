"""AMC: a DDPG agent that picks a keep ratio per prunable group, layer by layer.

He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices",
ECCV 2018. One episode walks the dimensions of a `SearchSpace` in order (its groups, then
in a joint space its rank layers, whose action is the rank ratio); at step t the agent
sees an embedding of dimension t (index, layer type, in/out channels, kernel, stride,
feature-map size, MACs, the MACs already cut, the MACs still ahead, its previous action,
each scaled to [0, 1] over the space) and outputs a keep ratio. After the last group the
candidate is pruned and scored (no fine-tuning), and that one reward is given to every
transition of the episode. A moving average of the rewards is the baseline subtracted
from them; it is subtracted when transitions are sampled for an update, so old and new
transitions are measured against the same level (subtracting it when storing would leave
each old transition with the stale baseline of its day).

Exploration: `warmup` episodes of uniformly random actions, then the actor's action plus
truncated-normal noise (sigma 0.5, times 0.95 after every post-warm-up episode, as in
the paper). Resource-constrained mode (a hard `Constraint`): each action is clamped so the
budget stays reachable with every later group at its narrowest; for a latency budget the
clamp reads a `LinearLatencyModel` estimate, and the runner's real measurement of the
finished candidate is the final check.

Everything random comes from the agent's own generators (numpy for actions and replay
sampling, a seeded fork of torch's for the initial weights), so a seed gives one run, and
`state_dict()` holds all of it (weights, optimisers, replay buffer, RNG, episode count)
for an exact resume.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.search.space import Constraint, Policy, SearchSpace

DYNAMIC = ("macs_reduced", "macs_ahead", "previous_action")


@dataclass(frozen=True)
class AMCConfig:
    """DDPG settings; defaults are the paper's (300-300 MLPs, tau 0.01, batch 64, buffer 2000,
    100 warm-up episodes, sigma 0.5 decaying x0.95, discount 1).

    discount: with the episode's reward given to every transition, 1 makes Q(s_t, a_t)
    the sum of the rewards still to come, so each step's value includes the later steps'
    (AMC's choice: no layer is favoured for acting late); 0 makes it the episode reward
    itself. updates_per_episode: gradient steps after each post-warm-up episode (None: one
    per group, i.e. one per transition stored). saturation_penalty: weight of the squared
    pre-sigmoid actor output in the actor's loss; it keeps the sigmoid out of saturation,
    where its gradient vanishes and an action stuck at a bound never comes back (measured
    on the synthetic task of tests/search: max error 0.03-0.06 over 4 seeds with 1e-3,
    up to 0.12 without, the worst a group pinned at its minimum).
    """

    hidden: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    buffer_size: int = 2000
    warmup: int = 100
    sigma: float = 0.5
    sigma_decay: float = 0.95
    baseline_decay: float = 0.95
    updates_per_episode: int | None = None
    saturation_penalty: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or not all(isinstance(h, int) and h >= 1 for h in self.hidden):
            raise ValueError(f"AMCConfig.hidden = {self.hidden!r} must be one or more layer widths >= 1")
        for field in ("actor_lr", "critic_lr", "sigma"):
            v = getattr(self, field)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"AMCConfig.{field} = {v!r} must be > 0")
        for field in ("tau", "sigma_decay", "baseline_decay"):
            v = getattr(self, field)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ValueError(f"AMCConfig.{field} = {v!r} must be in (0, 1]")
        if not (isinstance(self.saturation_penalty, (int, float)) and self.saturation_penalty >= 0):
            raise ValueError(f"AMCConfig.saturation_penalty = {self.saturation_penalty!r} must be >= 0")
        if not (isinstance(self.discount, (int, float)) and 0 <= self.discount <= 1):
            raise ValueError(f"AMCConfig.discount = {self.discount!r} must be in [0, 1]")
        for field in ("batch_size", "buffer_size"):
            v = getattr(self, field)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"AMCConfig.{field} = {v!r} must be an integer >= 1")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"AMCConfig.warmup = {self.warmup!r} must be an integer >= 0 (episodes)")
        if self.updates_per_episode is not None and not (
                isinstance(self.updates_per_episode, int) and self.updates_per_episode >= 1):
            raise ValueError(f"AMCConfig.updates_per_episode = {self.updates_per_episode!r} must be >= 1 or None")


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class _Replay:
    """A ring buffer of (state, action, reward, next state, done) in float32 arrays."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.s = np.zeros((capacity, dim), np.float32)
        self.a = np.zeros((capacity, 1), np.float32)
        self.r = np.zeros((capacity, 1), np.float32)
        self.s2 = np.zeros((capacity, dim), np.float32)
        self.d = np.zeros((capacity, 1), np.float32)
        self.pos = self.size = 0

    def add(self, s, a, r, s2, d) -> None:
        i = self.pos
        self.s[i], self.a[i], self.r[i], self.s2[i], self.d[i] = s, a, r, s2, d
        self.pos = (i + 1) % len(self.s)
        self.size = min(self.size + 1, len(self.s))

    def sample(self, rng: np.random.Generator, n: int) -> list[torch.Tensor]:
        idx = rng.integers(0, self.size, size=min(n, self.size))
        return [torch.from_numpy(x[idx]) for x in (self.s, self.a, self.r, self.s2, self.d)]

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "size": self.size,
                **{k: torch.from_numpy(getattr(self, k).copy()) for k in ("s", "a", "r", "s2", "d")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("s", "a", "r", "s2", "d"):
            getattr(self, k)[...] = state[k].numpy()
        self.pos, self.size = int(state["pos"]), int(state["size"])


class AMCAgent:
    """The AMC strategy: `ask(constraint) -> Policy`, then `tell(policy, reward)` once scored."""

    name = "amc"
    finished = False  # AMC never runs out of candidates

    def __init__(self, space: SearchSpace, config: AMCConfig | None = None, *, seed: int = 0) -> None:
        self.space = space
        self.config = config or AMCConfig()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._static = space.features().astype(np.float32)
        self.dim = self._static.shape[1] + len(DYNAMIC)
        macs = np.array([d.macs for d in space.dims], dtype=np.float64)
        total = macs.sum()
        # Share of the searched MACs still ahead after step t.
        self._ahead = ((total - np.cumsum(macs)) / total if total > 0 else np.zeros(len(macs))).astype(np.float32)
        self._lo = np.array([d.min_keep for d in space.dims])
        self._hi = np.array([d.max_keep for d in space.dims])
        self._top = [d.choices[-1] for d in space.dims]
        self._top_macs = space.cost_units(self._top)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = _mlp(self.dim, self.config.hidden, 1)
            self.critic = _mlp(self.dim + 1, self.config.hidden, 1)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.buffer = _Replay(self.config.buffer_size, self.dim)
        self.episode = 0
        self.sigma = float(self.config.sigma)
        self.baseline: float | None = None
        self._pending: tuple[Policy, list[np.ndarray], list[float]] | None = None

    # -- acting ---------------------------------------------------------------------------

    def _state(self, t: int, decided: list[float], previous: float) -> np.ndarray:
        units = [*decided, *self._top[len(decided):]]
        reduced = (self._top_macs - self.space.cost_units(units)) / max(self.space.total_macs, 1)
        dynamic = np.array([min(max(reduced, 0.0), 1.0), self._ahead[t], previous], dtype=np.float32)
        return np.concatenate([self._static[t], dynamic])

    def _act(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return float(torch.sigmoid(self.actor(torch.from_numpy(state)[None]))[0, 0])

    def _truncated_normal(self, mean: float, sigma: float, lo: float, hi: float) -> float:
        """One draw of N(mean, sigma) truncated to [lo, hi], by inverting the CDF (one uniform per draw)."""
        dist = NormalDist(mean, sigma)
        a, b = dist.cdf(lo), dist.cdf(hi)
        if b - a < 1e-12:  # the whole mass is outside: take the nearer bound
            return lo if mean < lo else hi
        p = a + (b - a) * float(self.rng.random())
        return min(max(dist.inv_cdf(min(max(p, 1e-12), 1 - 1e-12)), lo), hi)

    def _rollout(self, constraint: Constraint | None, explore: bool) -> tuple[Policy, list[np.ndarray], list[float]]:
        clamp = constraint if constraint is not None and constraint.hard else None
        decided: list[float] = []
        states: list[np.ndarray] = []
        actions: list[float] = []
        previous = 0.0
        for t, g in enumerate(self.space.dims):
            lo, hi = self._lo[t], self._hi[t]
            state = self._state(t, decided, previous)
            if explore and self.episode < self.config.warmup:
                keep = float(self.rng.uniform(lo, hi))
            else:
                keep = lo + self._act(state) * (hi - lo)
                if explore:
                    keep = self._truncated_normal(keep, self.sigma, lo, hi)
            want = g.snap(keep)
            got = clamp.clamp(decided, want) if clamp is not None else want
            if got < want:
                keep = g.ratio_of(got)  # the clamped action is the one taken and learnt from
            decided.append(got)
            u = (keep - lo) / (hi - lo)
            states.append(state)
            actions.append(u)
            previous = u
        return self.space.from_units(decided), states, actions

    def ask(self, constraint: Constraint | None = None) -> Policy:
        """The next candidate: one exploring episode (random during warm-up)."""
        self._pending = self._rollout(constraint, explore=True)
        return self._pending[0]

    def greedy(self, constraint: Constraint | None = None) -> Policy:
        """The actor's policy without noise (clamped if the constraint is hard); changes nothing."""
        return self._rollout(constraint, explore=False)[0]

    # -- learning -------------------------------------------------------------------------

    def tell(self, policy: Policy, reward: float, outcome: Any = None) -> None:
        """Store the episode with its reward for every step; after warm-up, learn and decay the noise."""
        if self._pending is None or self._pending[0] != policy:
            raise ValueError("tell() must get the policy of the latest ask()")
        _, states, actions = self._pending
        self._pending = None
        reward = float(reward)
        self.baseline = reward if self.baseline is None else \
            self.baseline + (1 - self.config.baseline_decay) * (reward - self.baseline)
        terminal = np.zeros(self.dim, dtype=np.float32)
        for t, (s, a) in enumerate(zip(states, actions)):
            last = t == len(states) - 1
            self.buffer.add(s, a, reward, terminal if last else states[t + 1], float(last))
        if self.episode >= self.config.warmup:
            for _ in range(self.config.updates_per_episode or len(states)):
                self._update()
            self.sigma *= self.config.sigma_decay
        self.episode += 1

    def _update(self) -> None:
        c = self.config
        s, a, r, s2, d = self.buffer.sample(self.rng, c.batch_size)
        # The baseline is subtracted when sampled, not when stored: every transition is then
        # measured against the same (current) level, so old episodes do not carry the stale
        # baselines of their time into the critic's targets.
        r = r - float(self.baseline or 0.0)
        with torch.no_grad():
            a2 = torch.sigmoid(self.actor_target(s2))
            y = r + c.discount * (1 - d) * self.critic_target(torch.cat([s2, a2], 1))
        q = self.critic(torch.cat([s, a], 1))
        critic_loss = nn.functional.mse_loss(q, y)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        z = self.actor(s)
        actor_loss = -self.critic(torch.cat([s, torch.sigmoid(z)], 1)).mean() + c.saturation_penalty * z.pow(2).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.mul_(1 - c.tau).add_(p, alpha=c.tau)

    # -- checkpoints ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Per-episode facts for the search log."""
        return {"sigma": round(self.sigma, 6), "warmup": self.episode < self.config.warmup}

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config), "seed": self.seed, "space": self.space.signature(),
            "episode": self.episode, "sigma": self.sigma, "baseline": self.baseline,
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "buffer": self.buffer.state_dict(), "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["space"] != self.space.signature():
            raise ValueError("this AMC state was saved for another search space")
        if tuple(state["config"]["hidden"]) != self.config.hidden:
            raise ValueError(f"this AMC state has hidden layers {state['config']['hidden']}, "
                             f"not {list(self.config.hidden)}")
        # A resumed search goes on with the settings it started with (warm-up length included).
        self.config = AMCConfig(**{**state["config"], "hidden": tuple(state["config"]["hidden"])})
        self.episode, self.sigma, self.baseline = int(state["episode"]), float(state["sigma"]), state["baseline"]
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["rng"]
        self._pending = None
