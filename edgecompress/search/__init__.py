"""Search per-layer keep ratios: AMC (DDPG) and its baselines, with measured latency in the reward.

    from edgecompress.search import SearchSpace, Evaluator, run_search
    space = SearchSpace.from_model(model, (1, 28, 28), round_to=8, min_keep=0.2)
    result = run_search("amc", space, evaluator, latency_source, "latency=0.6", episodes=300, out_dir="search")
    pruned = space.apply(result.best_policy)

Modules: space (groups, policies, cost estimates, the budget clamp), amc (the agent),
baselines (uniform, random, evolution), reward (rewards, BN re-estimation, evaluator),
runner (the shared loop, checkpoints, log, plot). Names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": "space", "Policy": "space", "GroupSpec": "space", "RankSpec": "space", "LayerTerm": "space",
    "Constraint": "space",
    "LinearLatencyModel": "space",
    "AMCAgent": "amc", "AMCConfig": "amc",
    "UniformStrategy": "baselines", "RandomStrategy": "baselines", "EvolutionStrategy": "baselines",
    "Outcome": "reward", "Evaluator": "reward", "reestimate_bn": "reward", "make_reward": "reward",
    "list_rewards": "reward", "register_reward": "reward", "fashion_mnist_evaluator": "reward",
    "run_search": "runner", "read_search": "runner", "plot_search": "runner", "pareto_front": "runner",
    "make_strategy": "runner", "list_strategies": "runner", "SearchResult": "runner", "STRATEGIES": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"edgecompress.search.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgecompress.search' has no attribute {name!r}")
