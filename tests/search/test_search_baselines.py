"""Uniform, random and regularized-evolution baselines (edgecompress/search/baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.search.baselines import EvolutionStrategy, RandomStrategy, UniformStrategy
from edgecompress.search.reward import Outcome
from edgecompress.search.space import Constraint, LinearLatencyModel, SearchSpace

SPACE = SearchSpace.chain([48, 64, 64, 32, 96])
LOW = SPACE.cost_units([g.choices[0] for g in SPACE.groups])


def _outcome(policy, latency_ms=None) -> Outcome:
    return Outcome(0.5, SPACE.macs(policy), SPACE.params(policy), latency_ms)


def test_uniform_meets_a_macs_budget_with_the_widest_ratio():
    limit = 0.5 * SPACE.total_macs
    c = Constraint(SPACE, "macs", limit)
    u = UniformStrategy(SPACE)
    policy = u.ask(c)
    assert SPACE.macs(policy) <= limit
    widths = SPACE.units(policy)
    wider = SPACE.from_units([min(w + 1, g.units) for w, g in zip(widths, SPACE.groups)])
    assert SPACE.macs(wider) > limit  # one channel more everywhere breaks it
    ratios = [k for k in policy.keep]
    assert max(ratios) - min(ratios) < 0.02  # one ratio for all (up to rounding to whole channels)
    u.tell(policy, 0.0, _outcome(policy))
    # MACs are estimated exactly: nothing else is worth measuring
    u.ask(c)
    assert u.finished


def test_uniform_bisects_on_measured_latency():
    """The latency estimate is optimistic by 20%: measurements steer the ratio back under the budget."""
    def true_ms(policy):
        return 1.2 * (0.5 + SPACE.macs(policy) / SPACE.total_macs)

    model = LinearLatencyModel.fit(SPACE, lambda p: true_ms(p) / 1.2)
    limit = 1.2 * 0.9
    c = Constraint(SPACE, "latency", limit, estimate=model.estimate_units)
    u = UniformStrategy(SPACE)
    measured = []
    for _ in range(30):
        policy = u.ask(c)
        if u.finished:
            break
        measured.append((true_ms(policy), policy))
        u.tell(policy, 0.0, _outcome(policy, true_ms(policy)))
    assert u.finished and len(measured) <= 15
    assert measured[0][0] > limit  # the estimate's first guess was too wide
    fits = [ms for ms, _ in measured if ms <= limit]
    assert fits and max(fits) > 0.97 * limit  # and the bisection ends close under the budget


def test_random_respects_the_budget_and_the_seed():
    for limit_share in (0.3, 0.6, 0.9):
        limit = LOW + limit_share * (SPACE.total_macs - LOW)
        c = Constraint(SPACE, "macs", limit)
        r = RandomStrategy(SPACE, seed=0)
        for _ in range(50):
            policy = r.ask(c)
            assert SPACE.macs(policy) <= limit
            r.tell(policy, 0.0)
    a, b = RandomStrategy(SPACE, seed=5), RandomStrategy(SPACE, seed=5)
    assert [a.ask(None).keep for _ in range(5)] == [b.ask(None).keep for _ in range(5)]
    state = a.state_dict()
    nxt = a.ask(None)
    b.load_state_dict(state)
    assert b.ask(None) == nxt


def test_evolution_ages_mutates_and_respects_the_budget():
    limit = LOW + 0.4 * (SPACE.total_macs - LOW)
    c = Constraint(SPACE, "macs", limit)
    evo = EvolutionStrategy(SPACE, seed=0, population=8, sample=3, mutations=2)
    target = np.array([0.3, 0.9, 0.5, 0.6, 0.2])
    first_rewards, rewards = [], []
    for step in range(150):
        policy = evo.ask(c)
        assert SPACE.macs(policy) <= limit
        reward = -float(np.abs(np.array(policy.keep) - target).sum())
        (first_rewards if step < 8 else rewards).append(reward)
        evo.tell(policy, reward)
        assert len(evo.population) == min(step + 1, 8)
    assert evo.population[-1][0] == SPACE.units(policy)  # the newest is last, the oldest went first
    assert np.mean(rewards[-20:]) > np.mean(first_rewards) + 0.3  # it climbs
    # a child differs from its parent in 1..mutations groups before the clamp (unconstrained here)
    evo2 = EvolutionStrategy(SPACE, seed=1, population=4, sample=4, mutations=2)
    for _ in range(4):
        p = evo2.ask(None)
        evo2.tell(p, p.keep[0] + p.keep[1])  # distinct rewards: one best parent
    best = max(evo2.population, key=lambda m: m[1])[0]
    child = SPACE.units(evo2.ask(None))
    assert 1 <= sum(a != b for a, b in zip(child, best)) <= 2


def test_evolution_state_round_trip_and_validation():
    evo = EvolutionStrategy(SPACE, seed=3, population=4, sample=2)
    for _ in range(6):
        p = evo.ask(None)
        evo.tell(p, float(np.sum(p.keep)))
    state = evo.state_dict()
    nxt = evo.ask(None)
    other = EvolutionStrategy(SPACE, seed=0, population=4, sample=2)
    other.load_state_dict(state)
    assert other.ask(None) == nxt and list(other.population) == list(evo.population)
    with pytest.raises(ValueError, match="sample = 5 must be an integer in \\[1, population=4\\]"):
        EvolutionStrategy(SPACE, population=4, sample=5)


def test_evolution_mutates_and_restores_rank_ratios_of_a_joint_space():
    from edgecompress.models import create_model

    joint = SearchSpace.from_model(create_model("resnet20", num_classes=10, in_channels=1), (1, 28, 28),
                                   lowrank="spatial-svd")
    n = len(joint.groups)
    evo = EvolutionStrategy(joint, seed=0, population=2, sample=1, mutations=len(joint))
    changed = 0
    for _ in range(8):
        parent = max(evo.population, key=lambda m: m[1])[0] if len(evo.population) == 2 else None
        policy = evo.ask(None)
        values = joint.units(policy)
        assert all(v in d.choices for v, d in zip(values, joint.dims))
        if parent is not None:
            changed += sum(a != b for a, b in zip(values[n:], parent[n:]))
        evo.tell(policy, float(np.sum(policy.keep) + np.sum(policy.rank)))
    assert changed > 0  # mutations reach the rank ratios, which stay ratios (not truncated to ints)
    other = EvolutionStrategy(joint, seed=1, population=2, sample=1, mutations=len(joint))
    other.load_state_dict(evo.state_dict())
    assert list(other.population) == list(evo.population) and other.ask(None) == evo.ask(None)
