"""The relaxations of the differentiable searches (edgecompress/search/gumbel.py)."""

from __future__ import annotations

import math

import pytest
import torch

from edgecompress.search.gumbel import (Temperature, channel_interpolate, cost_loss, gumbel_softmax,
                                        sample_candidates)


def test_gumbel_max_samples_follow_the_softmax() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    gen = torch.Generator().manual_seed(0)
    n = 20000
    hard = gumbel_softmax(logits.expand(n, 4), 0.5, hard=True, generator=gen)
    assert torch.all(hard.sum(-1) == 1) and set(hard.unique().tolist()) == {0.0, 1.0}
    freq = hard.mean(0)
    assert torch.allclose(freq, torch.softmax(logits, -1), atol=0.012)  # 3 sigma at n = 20000
    soft = gumbel_softmax(logits.expand(n, 4), 10.0, generator=gen)
    assert soft.max() < 0.6  # a high temperature keeps samples spread
    assert torch.allclose(soft.sum(-1), torch.ones(n))


def test_hard_sample_passes_the_soft_gradient() -> None:
    logits = torch.zeros(3, requires_grad=True)
    y = gumbel_softmax(logits, 1.0, hard=True, generator=torch.Generator().manual_seed(1))
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_sample_candidates_are_distinct_weighted_and_follow_the_distribution() -> None:
    logits = torch.tensor([2.0, 0.0, 0.0, -2.0], requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    first = torch.zeros(4)
    for _ in range(4000):
        idx, w = sample_candidates(logits, 1.0, 2, generator=gen)
        assert len(set(idx.tolist())) == 2 and float(w.detach().sum()) == pytest.approx(1.0)
        first[idx[0]] += 1
    # Gumbel-top-k: the first pick is distributed as softmax(logits)
    assert torch.allclose(first / 4000, torch.softmax(logits.detach(), -1), atol=0.025)
    idx, w = sample_candidates(logits, 1.0, 2, generator=gen)
    (w * torch.arange(2.0)).sum().backward()
    assert logits.grad[idx].abs().sum() > 0
    with pytest.raises(ValueError, match="tau"):
        sample_candidates(logits, 0.0)


def test_channel_interpolation_shapes_and_values() -> None:
    x = torch.arange(4.0).reshape(1, 4, 1, 1).expand(2, 4, 3, 5)
    down = channel_interpolate(x, 2)
    assert down.shape == (2, 2, 3, 5)
    assert down[0, :, 0, 0].tolist() == [0.5, 2.5]  # means of channels 0-1 and 2-3
    up = channel_interpolate(x[:, :2], 4)
    assert up[1, :, 2, 4].tolist() == [0.0, 0.0, 1.0, 1.0]  # each channel repeated
    odd = channel_interpolate(torch.arange(3.0).reshape(1, 3), 2)  # 2-D (Linear outputs) too
    assert odd.tolist() == [[0.5, 1.5]]  # bins 0-1 and 1-2 overlap as adaptive pooling does
    assert channel_interpolate(x, 4) is x


def test_cost_loss_three_branches_and_gradients() -> None:
    target, t = 0.5, 0.05
    for value, expect, grad in ((0.8, math.log(0.8), 1 / 0.8), (0.51, 0.0, 0.0), (0.3, -math.log(0.3), -1 / 0.3)):
        e = torch.tensor(value, requires_grad=True)
        loss = cost_loss(e, target, t)
        loss.backward()
        assert float(loss) == pytest.approx(expect) and float(e.grad) == pytest.approx(grad)
    # the band edges: (1 + t) * target = 0.525 is inside, just above is not
    assert float(cost_loss(torch.tensor(0.525), target, t)) == 0.0
    assert float(cost_loss(torch.tensor(0.526), target, t)) == pytest.approx(math.log(0.526))
    with pytest.raises(ValueError, match="target"):
        cost_loss(torch.tensor(0.5), 0.0)


def test_temperature_anneals_from_start_to_end() -> None:
    exp = Temperature(10.0, 0.1)
    assert exp.at(0, 101) == pytest.approx(10.0) and exp.at(100, 101) == pytest.approx(0.1)
    assert exp.at(50, 101) == pytest.approx(1.0)  # geometric midpoint
    assert Temperature(10.0, 0.1, "linear").at(50, 101) == pytest.approx(5.05)
    with pytest.raises(ValueError, match="schedule"):
        Temperature(schedule="cosine")
