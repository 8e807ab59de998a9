"""The AMC agent (edgecompress/search/amc.py) on synthetic spaces: learning, determinism, clamp, resume."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from edgecompress.search.amc import DYNAMIC, AMCAgent, AMCConfig
from edgecompress.search.space import FEATURES, Constraint, SearchSpace

torch.set_num_threads(1)
TARGET = np.array([0.3, 0.8, 0.5, 0.9, 0.4])
# Small nets, faster learning rates and a slower noise decay than the paper's defaults, so the
# synthetic task converges in a few hundred episodes of a unit test.
FAST = dict(hidden=(64, 64), actor_lr=1e-3, critic_lr=1e-2, warmup=50, sigma_decay=0.985, updates_per_episode=20)


def synthetic_reward(policy) -> float:
    return -float(np.abs(np.array(policy.keep) - TARGET).sum())


def test_agent_learns_a_known_optimum():
    space = SearchSpace.chain([64] * 5)
    agent = AMCAgent(space, AMCConfig(**FAST), seed=0)
    rewards = []
    for _ in range(400):
        policy = agent.ask()
        rewards.append(synthetic_reward(policy))
        agent.tell(policy, rewards[-1])
    greedy = np.array(agent.greedy().keep)
    error = np.abs(greedy - TARGET)
    assert error.max() < 0.1, (greedy, error)
    assert np.mean(rewards[:50]) < -1.0 < -0.3 < np.mean(rewards[-50:])  # random warm-up vs. learnt
    assert agent.sigma == pytest.approx(0.5 * 0.985 ** 350)
    assert agent.buffer.size == 2000  # 400 episodes x 5 steps, ring buffer of 2000


def test_state_embedding():
    space = SearchSpace.chain([16, 32, 64])
    agent = AMCAgent(space, seed=0)
    assert agent.dim == len(FEATURES) + len(DYNAMIC) == 11
    s0 = agent._state(0, [], 0.0)
    assert s0.min() >= 0 and s0.max() <= 1 and s0[-3] == 0  # nothing reduced yet
    s1 = agent._state(1, [8], 0.4)
    full = space.cost_units([16, 32, 64])
    assert s1[-3] == pytest.approx((full - space.cost_units([8, 32, 64])) / space.total_macs)
    assert s1[-1] == pytest.approx(0.4)
    assert s1[-2] == pytest.approx(space.groups[2].macs / sum(g.macs for g in space.groups))


def test_same_seed_same_policies():
    space = SearchSpace.chain([32] * 4)
    config = AMCConfig(**{**FAST, "warmup": 5})
    runs = []
    for _ in range(2):
        agent = AMCAgent(space, config, seed=7)
        policies = []
        for _ in range(20):
            policy = agent.ask()
            policies.append(policy.keep)
            agent.tell(policy, -float(np.abs(np.array(policy.keep) - 0.6).sum()))
        runs.append((policies, agent.greedy().keep))
    assert runs[0] == runs[1]
    other = AMCAgent(space, config, seed=8)
    assert other.ask().keep != runs[0][0][0]


def test_clamped_episodes_meet_the_budget():
    space = SearchSpace.chain([48, 64, 64, 32, 96])
    low = space.cost_units([g.choices[0] for g in space.groups])
    agent = AMCAgent(space, AMCConfig(**{**FAST, "warmup": 10, "sigma": 1.0}), seed=3)
    for episode in range(40):
        limit = low + (episode % 7 + 1) / 8 * (space.total_macs - low)
        constraint = Constraint(space, "macs", limit)
        policy = agent.ask(constraint)
        assert space.macs(policy) <= limit
        # the greedy (noise-free) episode is clamped too
        assert space.macs(agent.greedy(constraint)) <= limit
        agent.tell(policy, -space.macs(policy) / space.total_macs)
    # a soft constraint is not clamped: the agent acts freely
    soft = Constraint(space, "macs", low, hard=False)
    assert space.macs(agent.ask(soft)) > low


def test_state_dict_resumes_exactly():
    space = SearchSpace.chain([32] * 5)
    config = AMCConfig(**{**FAST, "warmup": 4})

    def play(agent, n):
        out = []
        for _ in range(n):
            policy = agent.ask()
            out.append(policy.keep)
            agent.tell(policy, synthetic_reward(policy))
        return out

    straight = AMCAgent(space, config, seed=1)
    expected = play(straight, 12)
    first = AMCAgent(space, config, seed=1)
    head = play(first, 6)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = AMCAgent(space, config, seed=99)  # a different seed: everything comes from the state
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert head + play(second, 6) == expected
    for a, b in zip(straight.actor.parameters(), second.actor.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another search space"):
        AMCAgent(SearchSpace.chain([32] * 4), config).load_state_dict(second.state_dict())


def test_tell_needs_the_asked_policy_and_config_is_validated():
    space = SearchSpace.chain([16, 16])
    agent = AMCAgent(space, seed=0)
    with pytest.raises(ValueError, match="latest ask"):
        agent.tell(space.full_policy(), 0.0)
    with pytest.raises(ValueError, match="AMCConfig.tau = 0 must be in"):
        AMCConfig(tau=0)
    with pytest.raises(ValueError, match="AMCConfig.warmup = -1"):
        AMCConfig(warmup=-1)
    with pytest.raises(ValueError, match="AMCConfig.hidden"):
        AMCConfig(hidden=())
    defaults = AMCConfig()
    assert (defaults.hidden, defaults.tau, defaults.warmup, defaults.sigma, defaults.sigma_decay) == (
        (300, 300), 0.01, 100, 0.5, 0.95)


def test_truncated_normal_stays_in_bounds():
    agent = AMCAgent(SearchSpace.chain([16]), seed=0)
    draws = np.array([agent._truncated_normal(0.9, 0.5, 0.2, 1.0) for _ in range(2000)])
    assert draws.min() >= 0.2 and draws.max() <= 1.0
    assert 0.6 < draws.mean() < 0.75  # pulled below 0.9 by the truncation at 1
    assert agent._truncated_normal(5.0, 0.01, 0.2, 1.0) == 1.0
