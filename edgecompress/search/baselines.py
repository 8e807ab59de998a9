"""Baselines for the AMC search, with the same ask/tell interface, evaluation budget and reward.

- `UniformStrategy`: one keep ratio for every group, bisected to meet the budget. Its
  first candidate is the widest uniform ratio whose *estimate* fits; after that each
  measured candidate moves the bracket (measured value <= budget: keep more, else less),
  so a latency budget is met on measurements, not on the estimate. With a MACs or params
  budget the estimate is exact and one candidate is all it has (`finished`).
- `RandomStrategy`: keep ratios drawn uniformly per group, projected onto the budget by
  the same layer-by-layer clamp as AMC (hard constraints only).
- `EvolutionStrategy`: regularized ("aging") evolution, Real et al., AAAI 2019: a
  population of P candidates (the first P random), each new one a mutation of the best
  of S sampled from the population (one to `mutations` groups get a new random ratio),
  projected onto the budget; the oldest member dies each step, whatever its reward.

Random and evolution draw and mutate every dimension of a joint space (rank ratios
too); the uniform baseline prunes only and leaves every rank layer whole.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from edgecompress.search.space import Constraint, Policy, SearchSpace


def _random_units(space: SearchSpace, rng: np.random.Generator) -> list[float]:
    return [d.snap(float(rng.uniform(d.min_keep, d.max_keep))) for d in space.dims]


def _project(space: SearchSpace, units: list[float], constraint: Constraint | None) -> Policy:
    policy = space.from_units(units)
    return constraint.project(policy) if constraint is not None and constraint.hard else policy


class RandomStrategy:
    """Uniformly random keep ratios, clamped in layer order onto a hard budget."""

    name = "random"
    finished = False

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.episode = 0

    def ask(self, constraint: Constraint | None = None) -> Policy:
        return _project(self.space, _random_units(self.space, self.rng), constraint)

    def tell(self, policy: Policy, reward: float, outcome: Any = None) -> None:
        self.episode += 1

    def info(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episode = int(state["episode"])
        self.rng.bit_generator.state = state["rng"]


class EvolutionStrategy:
    """Regularized evolution: population `population`, tournament `sample`, 1..`mutations` groups mutated."""

    name = "evolution"
    finished = False

    def __init__(self, space: SearchSpace, *, seed: int = 0, population: int = 20, sample: int = 5,
                 mutations: int = 2) -> None:
        if not (isinstance(population, int) and population >= 2):
            raise ValueError(f"evolution population = {population!r} must be an integer >= 2")
        if not (isinstance(sample, int) and 1 <= sample <= population):
            raise ValueError(f"evolution sample = {sample!r} must be an integer in [1, population={population}]")
        if not (isinstance(mutations, int) and mutations >= 1):
            raise ValueError(f"evolution mutations = {mutations!r} must be an integer >= 1")
        self.space = space
        self.population_size, self.sample, self.mutations = population, sample, mutations
        self.rng = np.random.default_rng(seed)
        self.population: deque[tuple[list[float], float]] = deque()  # (value per dimension, reward)
        self.episode = 0

    def ask(self, constraint: Constraint | None = None) -> Policy:
        if len(self.population) < self.population_size:
            return _project(self.space, _random_units(self.space, self.rng), constraint)
        picks = self.rng.choice(len(self.population), size=self.sample, replace=False)
        parent = max((self.population[int(i)] for i in picks), key=lambda member: member[1])[0]
        child = list(parent)
        n = int(self.rng.integers(1, min(self.mutations, len(child)) + 1))
        for i in self.rng.choice(len(child), size=n, replace=False):
            g = self.space.dims[int(i)]
            others = [c for c in g.choices if c != child[int(i)]]
            child[int(i)] = others[int(self.rng.integers(len(others)))]  # a real change, never a copy
        return _project(self.space, child, constraint)

    def tell(self, policy: Policy, reward: float, outcome: Any = None) -> None:
        self.population.append((self.space.units(policy), float(reward)))
        if len(self.population) > self.population_size:
            self.population.popleft()  # the oldest dies, not the worst: aging regularizes
        self.episode += 1

    def info(self) -> dict[str, Any]:
        return {"population": len(self.population)}

    def state_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "rng": self.rng.bit_generator.state,
                "population": [[list(u), r] for u, r in self.population]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episode = int(state["episode"])
        self.rng.bit_generator.state = state["rng"]
        n = len(self.space.groups)  # kept units are ints, rank ratios floats
        self.population = deque(([int(v) if i < n else float(v) for i, v in enumerate(u)], float(r))
                                for u, r in state["population"])


class UniformStrategy:
    """One keep ratio for all groups, bisected on measured values to meet the budget."""

    name = "uniform"

    def __init__(self, space: SearchSpace, *, seed: int = 0, tolerance: float = 1e-3) -> None:
        self.space = space
        self.tolerance = tolerance
        # The bracket on the shared ratio: lo is known to fit (the runner checks the budget
        # is above the minimum), hi is not known to.
        self.lo = min(g.min_keep for g in space.groups)
        self.hi = 1.0
        self.tried: dict[tuple[int, ...], bool] = {}  # units -> measured within budget
        self.current: float | None = None
        self.finished = False
        self.episode = 0
        self._constraint: Constraint | None = None

    def _policy(self, ratio: float) -> Policy:
        groups, whole = self.space.groups, [r.max_keep for r in self.space.ranks]
        return self.space.from_units([g.round_units(min(max(ratio, g.min_keep), g.max_keep)) for g in groups] + whole)

    def _fits(self, ratio: float) -> bool:
        c = self._constraint
        return c.estimate(self._policy(ratio)) <= c.limit  # type: ignore[union-attr]

    def ask(self, constraint: Constraint | None = None) -> Policy:
        if constraint is None:
            raise ValueError("the uniform baseline needs a budget to aim at")
        self._constraint = constraint
        if self.current is None:  # first: the widest ratio whose estimate fits
            lo, hi = self.lo, self.hi
            if self._fits(hi):
                lo = hi
            while hi - lo > self.tolerance:
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if self._fits(mid) else (lo, mid)
            self.current = lo
            return self._policy(lo)
        # Then bisect the bracket, skipping ratios whose policy is already known: measured,
        # or (MACs, params: the estimate is exact) over the budget by the estimate.
        exact = constraint.metric != "latency"
        while self.hi - self.lo > self.tolerance:
            mid = (self.lo + self.hi) / 2
            key = tuple(self.space.units(self._policy(mid)))
            if key not in self.tried and exact and not self._fits(mid):
                self.tried[key] = False
            if key not in self.tried:
                self.current = mid
                return self._policy(mid)
            self.lo, self.hi = (mid, self.hi) if self.tried[key] else (self.lo, mid)
        self.finished = True
        self.current = self.lo
        return self._policy(self.lo)  # nothing new: the best known ratio again

    def tell(self, policy: Policy, reward: float, outcome: Any = None) -> None:
        """`outcome` (an Outcome) tells whether the candidate met the budget when measured."""
        self.episode += 1
        c = self._constraint
        if outcome is None or c is None or self.current is None or self.finished:
            return
        fits = outcome.metric(c.metric) <= c.limit
        self.tried[tuple(self.space.units(policy))] = fits
        if fits:
            self.lo = max(self.lo, self.current)
        else:
            self.hi = min(self.hi, self.current)
        if self.hi - self.lo <= self.tolerance or self.lo >= 1.0:
            self.finished = True

    def info(self) -> dict[str, Any]:
        return {"ratio": None if self.current is None else round(self.current, 6)}

    def state_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "lo": self.lo, "hi": self.hi, "current": self.current,
                "finished": self.finished, "tried": [[list(k), v] for k, v in self.tried.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episode, self.lo, self.hi = int(state["episode"]), float(state["lo"]), float(state["hi"])
        self.current, self.finished = state["current"], bool(state["finished"])
        self.tried = {tuple(int(u) for u in k): bool(v) for k, v in state["tried"]}
