"""Rewards, BN re-estimation and the no-fine-tuning evaluator (edgecompress/search/reward.py)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.search.reward import (
    ErrorLogMacsReward, ErrorReward, Evaluator, MnasNetReward, Outcome, list_rewards, make_reward, reestimate_bn,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo" / "fmnist_mobilenetv2.pt"


def test_registry():
    assert list_rewards() == ["error", "error_log_macs", "mnasnet"]
    assert isinstance(make_reward("error"), ErrorReward)
    assert make_reward("mnasnet", w=-0.1).w == -0.1
    with pytest.raises(UserError, match="unknown reward 'mnasnett' \\(did you mean mnasnet\\?\\); valid: error"):
        make_reward("mnasnett")
    with pytest.raises(UserError, match="does not take"):
        make_reward("error", w=1)
    with pytest.raises(ValueError, match="MnasNetReward.w = 0.5 must be a number <= 0"):
        MnasNetReward(w=0.5)


def test_error_rewards():
    out = Outcome(accuracy=0.9, macs=1e6, params=1e4, latency_ms=2.0)
    r = ErrorReward()
    assert r.hard and r.needs_budget and r(out) == pytest.approx(-0.1)
    r2 = ErrorLogMacsReward()
    assert not r2.hard and not r2.takes_budget
    assert r2(out) == pytest.approx(-0.1 * math.log(1e6)) == pytest.approx(-1.381551)
    # halving the MACs is worth an error rising from 0.1 to 0.1 * ln(1e6) / ln(5e5) = 0.10528
    assert r2(Outcome(1 - 0.105282, 5e5, 1e4)) == pytest.approx(r2(out), abs=1e-5)
    with pytest.raises(UserError, match="accuracy 1.5 must be a fraction"):
        r(Outcome(1.5, 1, 1))


def test_mnasnet_reward():
    r = MnasNetReward()
    at = Outcome(0.8, 1e6, 1e4, latency_ms=10.0)
    assert r(at, "latency", 10.0) == pytest.approx(0.8)
    slow = Outcome(0.8, 1e6, 1e4, latency_ms=20.0)
    fast = Outcome(0.8, 1e6, 1e4, latency_ms=5.0)
    assert r(slow, "latency", 10.0) == pytest.approx(0.8 * 2 ** -0.07) == pytest.approx(0.76211, abs=1e-5)
    assert r(fast, "latency", 10.0) == pytest.approx(0.8 * 0.5 ** -0.07) == pytest.approx(0.83978, abs=1e-5)
    hard = MnasNetReward(w=0.0, w_above=-1.0)  # MnasNet's hard-constraint setting
    assert hard(fast, "latency", 10.0) == pytest.approx(0.8)
    assert hard(slow, "latency", 10.0) == pytest.approx(0.4)
    assert r(Outcome(0.8, 2e6, 1e4), "macs", 1e6) == pytest.approx(0.8 * 2 ** -0.07)
    with pytest.raises(UserError, match="needs a budget"):
        r(at)
    with pytest.raises(UserError, match="latency was not measured"):
        r(Outcome(0.8, 1, 1), "latency", 10.0)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.BatchNorm1d(3))


def test_bn_reestimation_changes_statistics_and_nothing_else():
    net = _bn_net().eval()
    net[3].train()  # a module left in train mode stays so
    before = copy.deepcopy(net.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 1, 8, 8, generator=g) * 3 + 2 for _ in range(4)]
    assert reestimate_bn(net, batches) == 4
    after = net.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == ("running" in key or "num_batches" in key), key
    # running mean = the average of the per-batch means (momentum None); conv output is deterministic
    with torch.no_grad():
        feats = [net[0](x) for x in batches]
    want = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, want, atol=1e-5)
    assert net[1].momentum == 0.3 and net[6].momentum == 0.1
    assert not net.training and net[3].training and not net[1].training
    assert int(net[1].num_batches_tracked) == 4


def test_evaluator_is_fixed_and_reestimates():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[4].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        net[4].bias.zero_()
        net[1].running_mean.fill_(5.0)  # stale statistics: every sample looks negative
    ev = Evaluator((x, y), (x, y), val_samples=200, bn_batches=2, batch_size=50, seed=0)
    assert ev.val_x.shape == (200, 1, 8, 8) and len(ev.bn_batches) == 2
    stale = Evaluator((x, y), (x, y), val_samples=200, bn_batches=0, batch_size=50, seed=0)
    assert stale(copy.deepcopy(net)) == pytest.approx(float((ev.val_y == 0).float().mean()))
    assert ev(net) > 0.95  # fresh statistics restore the sign test
    assert abs(float(net[1].running_mean[0])) < 0.2
    again = Evaluator((x, y), (x, y), val_samples=200, bn_batches=2, batch_size=50, seed=0)
    assert torch.equal(again.val_x, ev.val_x) and torch.equal(again.bn_batches[0], ev.bn_batches[0])
    with pytest.raises(ValueError, match="Evaluator.batch_size = 0 must be an integer >= 1"):
        Evaluator((x, y), (x, y), batch_size=0)


@pytest.mark.skipif(not DEMO.exists() or not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="needs the demo checkpoint and the Debian Fashion-MNIST files")
def test_demo_model_with_and_without_bn_reestimation():
    from edgecompress.models.loading import load_model
    from edgecompress.search.reward import fashion_mnist_evaluator
    from edgecompress.search.space import SearchSpace

    model = load_model(str(DEMO)).model
    ev = fashion_mnist_evaluator((1, 28, 28), val_samples=500, bn_batches=4)
    assert ev(copy.deepcopy(model)) > 0.9  # 0.924 on the full val split
    space = SearchSpace.from_model(model, (1, 28, 28))
    pruned = space.apply(space.policy([0.75] * len(space)))  # 64% of the MACs
    fresh = ev(copy.deepcopy(pruned))
    ev.bn_batches = []
    stale = ev(pruned)
    assert fresh > 0.8 and stale < 0.4  # measured: 0.89 vs 0.16 on 1000 images
