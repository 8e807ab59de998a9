"""The shared search loop (edgecompress/search/runner.py): budget, log, checkpoints, resume, errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.graph.cost import analyze
from edgecompress.models import create_model
from edgecompress.search.runner import list_strategies, pareto_front, read_search, run_search
from edgecompress.search.space import SearchSpace

torch.set_num_threads(1)
SHAPE = (1, 28, 28)
AMC = {"warmup": 2, "hidden": (32, 32), "batch_size": 16}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_model(create_model("resnet20", num_classes=10, in_channels=1), SHAPE)


def fake_accuracy(model) -> float:
    """Deterministic stand-in for an evaluator: more parameters, higher accuracy."""
    n = sum(p.numel() for p in model.parameters())
    return round(0.3 + 0.6 * (n / 272474) ** 0.3, 6)


class FakeLatency:
    """0.2 ms + 1e-7 ms per MAC, with a latency cache that says hit for a model seen before."""

    name = "fake"

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.calls = 0
        self.last_result = None

    def latency_ms(self, model, input_shape) -> float:
        self.calls += 1
        macs = analyze(model, tuple(input_shape)).total_macs
        self.last_result = SimpleNamespace(runtime_info={"cache": "hit" if macs in self.seen else "miss"})
        self.seen.add(macs)
        return 0.2 + macs * 1e-7


def _strip(log):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "latency_cache_hit")} for r in log]


def test_amc_search_writes_log_best_policy_and_plot(space, tmp_path):
    out = tmp_path / "amc"
    result = run_search("amc", space, fake_accuracy, None, "macs=0.5", episodes=6, seed=0, out_dir=out,
                        progress=False, strategy_options=AMC)
    assert len(result.log) == 6 and not result.stopped_early
    limit = 0.5 * space.total_macs
    assert result.meta["limit"] == limit and result.meta["constraint"] == f"macs <= {limit:,.0f} MACs"
    for r in result.log:
        assert r["macs"] <= limit and r["feasible"] and r["latency_ms"] is None
        assert r["reward"] == pytest.approx(-(1 - r["accuracy"]))
        assert set(r) >= {"episode", "policy", "widths", "reward", "accuracy", "latency_ms", "macs", "params",
                          "wall_s", "latency_cache_hit", "strategy"}
    assert result.log[0]["strategy"] == {"sigma": 0.5, "warmup": True}
    assert result.log[-1]["strategy"]["sigma"] == pytest.approx(0.5 * 0.95 ** 4)
    assert result.best == max(result.log, key=lambda r: r["reward"])
    assert sorted(p.name for p in out.iterdir()) == ["best_policy.json", "search.png", "search_log.json",
                                                     "search_state.pt"]
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    again = read_search(out)
    assert again.best_policy == result.best_policy and again.best_policy.groups == space.names
    assert space.macs(result.best_policy) == result.best["macs"]
    assert json.loads((out / "best_policy.json").read_text())["widths"] == result.best["widths"]


def test_interrupted_search_resumes_to_the_same_result(space, tmp_path):
    straight = run_search("amc", space, fake_accuracy, FakeLatency(), "latency=0.7", episodes=7, seed=3,
                          out_dir=tmp_path / "a", progress=False, strategy_options=AMC)
    calls = {"n": 0}

    def interrupted(model):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return fake_accuracy(model)

    with pytest.raises(KeyboardInterrupt):
        run_search("amc", space, interrupted, FakeLatency(), "latency=0.7", episodes=7, seed=3,
                   out_dir=tmp_path / "b", progress=False, strategy_options=AMC)
    saved = torch.load(tmp_path / "b" / "search_state.pt", weights_only=True)
    assert len(saved["log"]) == 4  # the last finished episode's checkpoint is there
    torch.manual_seed(1234)  # whatever happened to the global RNG in between
    resumed = run_search("amc", space, fake_accuracy, FakeLatency(), "latency=0.7", episodes=7, seed=3,
                         out_dir=tmp_path / "b", resume=True, progress=False, strategy_options=AMC)
    assert _strip(resumed.log) == _strip(straight.log)
    a = torch.load(tmp_path / "a" / "search_state.pt", weights_only=True)["strategy"]
    b = torch.load(tmp_path / "b" / "search_state.pt", weights_only=True)["strategy"]
    assert all(torch.equal(a["actor"][k], b["actor"][k]) for k in a["actor"])
    assert torch.equal(a["buffer"]["s"], b["buffer"]["s"]) and a["rng"] == b["rng"]
    # a finished search continues with a larger episode count
    longer = run_search("amc", space, fake_accuracy, FakeLatency(), "latency=0.7", episodes=9, seed=3,
                        out_dir=tmp_path / "a", resume=True, progress=False, strategy_options=AMC)
    assert len(longer.log) == 9 and _strip(longer.log[:7]) == _strip(straight.log)


def test_latency_budget_probes_measures_and_counts_cache_hits(space, tmp_path):
    source = FakeLatency()
    result = run_search("random", space, fake_accuracy, source, "latency=0.6", episodes=6, seed=0,
                        out_dir=tmp_path / "r", progress=False)
    meta = result.meta
    assert meta["latency_probes"] == len(space) + 2 == 14
    assert meta["base_latency_ms"] == pytest.approx(0.2 + space.total_macs * 1e-7)
    assert meta["limit"] == pytest.approx(0.6 * meta["base_latency_ms"])
    assert source.calls == 1 + 14 + 6  # base model, probes, one per candidate
    for r in result.log:
        assert r["latency_ms"] == pytest.approx(0.2 + r["macs"] * 1e-7)
        assert r["feasible"] == (r["latency_ms"] <= meta["limit"])
        assert r["latency_cache_hit"] in (True, False)
    assert sum(r["feasible"] for r in result.log) >= 5  # the clamp's linear estimate is close to the truth
    assert result.best["feasible"]


class SlowerThanProbed(FakeLatency):
    """The device runs candidates 15% slower than during the probes (e.g. it warmed up)."""

    def __init__(self, probes: int) -> None:
        super().__init__()
        self.probes = probes

    def latency_ms(self, model, input_shape) -> float:
        ms = super().latency_ms(model, input_shape)
        return ms * 1.15 if self.calls > self.probes else ms


def test_candidates_measured_over_a_hard_budget_get_the_worst_reward(space):
    source = SlowerThanProbed(probes=len(space) + 3)  # base + the latency model's probes
    result = run_search("amc", space, fake_accuracy, source, "latency=0.7", episodes=12, seed=0, progress=False,
                        strategy_options=AMC)
    over = [r for r in result.log if not r["feasible"]]
    assert over, "the clamp's first estimates should miss the slower device"
    assert all(r["reward"] == -1.0 for r in over)
    assert all(r["reward"] == pytest.approx(-(1 - r["accuracy"])) for r in result.log if r["feasible"])
    # The correction learns the device is slower: the last candidates fit again.
    assert all(r["feasible"] for r in result.log[-4:])
    assert result.best["feasible"] and result.best["latency_ms"] <= result.meta["limit"]


def test_baselines_share_the_loop(space, capsys):
    uniform = run_search("uniform", space, fake_accuracy, None, "macs=0.5", episodes=10, progress=False)
    assert uniform.stopped_early and len(uniform.log) == 1  # MACs are exact: one candidate
    assert uniform.log[0]["macs"] <= 0.5 * space.total_macs
    evo = run_search("evolution", space, fake_accuracy, None, "params=0.4", episodes=8, seed=0, progress=True,
                     strategy_options={"population": 4, "sample": 2})
    assert len(evo.log) == 8 and all(r["params"] <= 0.4 * space.total_params for r in evo.log)
    lines = capsys.readouterr().err.splitlines()  # not a terminal: a plain line per tenth of the run
    assert len(lines) == 8 and lines[-1].startswith("search evolution 8/8: best R -0.")
    run_search("random", space, fake_accuracy, None, "params=0.4", episodes=2, progress="always")
    assert "search random" in capsys.readouterr().err  # the rich bar
    assert list_strategies() == ["amc", "evolution", "random", "uniform"]
    a = run_search("random", space, fake_accuracy, None, "macs=0.5", episodes=3, seed=4, progress=False)
    b = run_search("random", space, fake_accuracy, None, "macs=0.5", episodes=3, seed=4, progress=False)
    assert _strip(a.log) == _strip(b.log)


def test_soft_mnasnet_reward(space):
    source = FakeLatency()
    result = run_search("random", space, fake_accuracy, source, "latency=0.5", episodes=4, seed=0,
                        progress=False, reward="mnasnet")
    limit = result.meta["limit"]
    assert "latency_probes" not in result.meta  # no clamp, no latency model
    for r in result.log:
        assert r["reward"] == pytest.approx(r["accuracy"] * (r["latency_ms"] / limit) ** -0.07)
    assert result.best == max(result.log, key=lambda r: r["reward"])


def test_errors(space, tmp_path):
    with pytest.raises(UserError, match="unknown search strategy 'amx' \\(did you mean amc\\?\\); "
                                        "valid: amc, evolution, random, uniform"):
        run_search("amx", space, fake_accuracy, None, "macs=0.5", episodes=3, progress=False)
    with pytest.raises(UserError, match="episodes = 0: a search needs at least 1 episode"):
        run_search("amc", space, fake_accuracy, None, "macs=0.5", episodes=0, progress=False)
    floor = space.cost_units([g.choices[0] for g in space.groups])
    with pytest.raises(UserError, match=f"below the reachable minimum: every group at its narrowest gives "
                                        f"{floor:,.0f} MACs \\(0.132 of the model\\)"):
        run_search("amc", space, fake_accuracy, None, "macs=0.1", episodes=3, progress=False)
    with pytest.raises(UserError, match="'mnasnet' reward needs a budget"):
        run_search("random", space, fake_accuracy, None, None, episodes=3, progress=False, reward="mnasnet")
    with pytest.raises(UserError, match="'error_log_macs' reward takes no budget"):
        run_search("random", space, fake_accuracy, None, "macs=0.5", episodes=3, progress=False,
                   reward="error_log_macs")
    with pytest.raises(UserError, match="budget latency=0.5 needs a latency source"):
        run_search("random", space, fake_accuracy, None, "latency=0.5", episodes=3, progress=False)
    with pytest.raises(UserError, match="search budget: target metric 'flops' must be one of"):
        run_search("random", space, fake_accuracy, None, "flops=0.5", episodes=3, progress=False)
    with pytest.raises(UserError, match="nothing to resume"):
        run_search("random", space, fake_accuracy, None, "macs=0.5", episodes=3, out_dir=tmp_path / "none",
                   resume=True, progress=False)

    def broken(model):
        raise RuntimeError("CUDA out of memory\nmore")

    with pytest.raises(UserError, match=r"the accuracy function failed on candidate policy \[\d\.\d\d, .*\] "
                                        r"\(RuntimeError: CUDA out of memory more\)"):
        run_search("random", space, broken, None, "macs=0.5", episodes=3, progress=False)
    with pytest.raises(UserError, match="returned 87.0 for policy"):
        run_search("random", space, lambda m: 87.0, None, "macs=0.5", episodes=3, progress=False)
    out = tmp_path / "once"
    run_search("random", space, fake_accuracy, None, "macs=0.5", episodes=2, out_dir=out, progress=False)
    with pytest.raises(UserError, match="already holds a search"):
        run_search("random", space, fake_accuracy, None, "macs=0.5", episodes=2, out_dir=out, progress=False)
    with pytest.raises(UserError, match="it was a search with budget 'macs=0.5', this one has 'macs=0.6'"):
        run_search("random", space, fake_accuracy, None, "macs=0.6", episodes=2, out_dir=out, resume=True,
                   progress=False)
    error_log = run_search("random", space, fake_accuracy, None, None, episodes=2, progress=False,
                           reward="error_log_macs")
    assert error_log.log[0]["reward"] < 0 and error_log.best is not None


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.69), (0.5, 0.1), (2.0, 0.6)]
    assert pareto_front(pts) == [4, 0, 1]


@pytest.fixture(scope="module")
def joint(space) -> SearchSpace:
    return SearchSpace.from_model(space.model, SHAPE, lowrank="spatial-svd")


@pytest.mark.parametrize("strategy,options", [("amc", AMC), ("evolution", {"population": 3, "sample": 2}),
                                              ("random", {})])
def test_joint_search_meets_a_macs_budget_and_factorizes(joint, tmp_path, strategy, options):
    from edgecompress.lowrank import LowRank
    from edgecompress.search.space import Policy

    out = tmp_path / strategy
    # Pruning alone reaches 0.132 of the MACs at best, factorizing too 0.084: every candidate must factorize.
    pruned_only = joint.cost_units([g.choices[0] for g in joint.groups])
    assert pruned_only > 0.12 * joint.total_macs > joint.macs(joint.min_policy())
    result = run_search(strategy, joint, fake_accuracy, None, "macs=0.12", episodes=5, seed=0, out_dir=out,
                        progress=False, strategy_options=options)
    limit = 0.12 * joint.total_macs
    assert result.meta["lowrank"] == "spatial-svd" and result.meta["rank_layers"] == 18
    assert all(r["feasible"] and r["macs"] <= limit and len(r["rank"]) == 18 for r in result.log)
    best = result.best_policy
    assert best.rank == tuple(result.best["rank"]) and best.lowrank == "spatial-svd"
    model = joint.apply(best)
    assert analyze(model, SHAPE).total_macs == result.best["macs"] == joint.macs(best) <= limit
    assert any(isinstance(m, LowRank) for m in model.modules())  # at least one layer factorized
    assert Policy.load(out / "best_policy.json") == best == read_search(out).best_policy


def test_interrupted_joint_search_resumes_to_the_same_result(joint, tmp_path):
    args = dict(episodes=5, seed=1, progress=False, strategy_options=AMC)
    straight = run_search("amc", joint, fake_accuracy, None, "macs=0.4", out_dir=tmp_path / "a", **args)
    calls = {"n": 0}

    def interrupted(model):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return fake_accuracy(model)

    with pytest.raises(KeyboardInterrupt):
        run_search("amc", joint, interrupted, None, "macs=0.4", out_dir=tmp_path / "b", **args)
    resumed = run_search("amc", joint, fake_accuracy, None, "macs=0.4", out_dir=tmp_path / "b", resume=True, **args)
    assert _strip(resumed.log) == _strip(straight.log) and resumed.best_policy == straight.best_policy
    # the joint space is another space: a pruning-only search cannot resume it
    with pytest.raises(UserError, match="cannot resume .* with space"):
        run_search("amc", SearchSpace.from_model(joint.model, SHAPE), fake_accuracy, None, "macs=0.4",
                   out_dir=tmp_path / "b", resume=True, **args)
