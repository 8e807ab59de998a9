"""The `search` recipe step and `prune: {policy: ...}` in the compress pipeline (edgecompress/search/steps.py)."""

from __future__ import annotations

import json

import pytest
import torch
from support import zoo_checkpoint

from edgecompress.errors import UserError
from edgecompress.export.bundle import verify_bundle
from edgecompress.graph import analyze
from edgecompress.models.loading import load_model
from edgecompress.pipeline import recipe_from_dict, run_compress
from edgecompress.devices.local import host_round_to
from edgecompress.search.baselines import UniformStrategy
from edgecompress.search.space import Policy, SearchSpace

torch.set_num_threads(1)

ARCH = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width_mult": 1.0}
BASE = {
    "name": "tiny-search",
    "seed": 0,
    "evaluate": {"split": "test", "max_samples": 256, "batch_size": 128},
    "export": {"formats": ["onnx"], "parity_samples": 8},
    "measure": {"threads": [1], "runs": 5, "warmup": 1, "trials": 1},
}
SEARCH = {"strategy": "random", "target": "macs=0.6", "episodes": 4, "runtime": "onnxruntime", "val_samples": 200,
          "bn_batches": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return zoo_checkpoint(tmp_path_factory.mktemp("ckpt"), "mobilenet_v2", **ARCH)


@pytest.mark.parametrize("steps,match", [
    ([{"search": {"strategy": "amx", "target": "macs=0.5"}}, {"prune": {"policy": "search"}}],
     r"steps\[0\] search: strategy 'amx' must be one of amc, evolution, random, scas, snas, tas, uniform"),
    ([{"search": {"strategy": "amc"}}, {"prune": {"policy": "search"}}], r"search: target is required"),
    ([{"search": {"target": "macs=0.5", "episodes": 0}}, {"prune": {"policy": "search"}}], r"episodes = 0 must be"),
    ([{"search": {"target": "macs=2x"}}, {"prune": {"policy": "search"}}], r"search: target: "),
    ([{"search": {"target": "latency=0.5", "latency": "macs"}}, {"prune": {"policy": "search"}}],
     r"is a latency: use latency: measured or predictor"),
    ([{"search": {"target": "macs=0.5", "episode": 3}}, {"prune": {"policy": "search"}}],
     r"unknown search parameter 'episode' \(did you mean episodes"),
    ([{"prune": {"policy": "search"}}], r"steps\[0\] prune: policy 'search' needs a search step before it"),
    ([{"search": {"target": "macs=0.5"}}, {"finetune": {"epochs": 1}}],
     r"steps\[0\] search: nothing uses its result; add `- prune: \{policy: search\}`"),
    ([{"search": {"target": "macs=0.5"}}, {"prune": {"policy": "search", "target": "macs=0.5"}}],
     r"prune with a policy takes no other parameter \(got target\)"),
    ([{"prune": {"policy": "no/such/best_policy.json"}}], r"policy file 'no/such/best_policy.json' does not exist"),
    ([{"search": {"target": "macs=0.5", "compare_uniform": True}}, {"prune": {"policy": "search"}},
      {"search": {"target": "macs=0.5", "compare_uniform": True}}, {"prune": {"policy": "search"}}],
     r"only one search step may set compare_uniform"),
    ([{"search": {"strategy": "tas", "target": "macs=0.5", "compare_uniform": True}}],
     r"compare_uniform: the tas search replaces the model with its child"),
    ([{"search": {"strategy": "tas", "target": "macs=0.5"}}, {"prune": {"policy": "search"}}],
     r"steps\[1\] prune: policy 'search' needs a search step before it \(AMC, evolution, random or uniform; "
     r"a tas/snas/scas search leaves a network"),
    ([{"search": {"strategy": "snas", "target": "latency=0.5", "search_images": 100}}],
     r"search_images = 100 must be an integer >= 256"),
    ([{"search": {"target": "macs=0.5", "lowrank": "svdd"}}, {"prune": {"policy": "search"}}],
     r"steps\[0\] search: lowrank: 'svdd' is not a low-rank method \(did you mean svd\?\); valid: svd, "),
    ([{"search": {"strategy": "tas", "target": "macs=0.5", "lowrank": "svd"}}],
     r"lowrank: adds rank ratios to a candidate search \(amc, evolution, random, uniform\); tas trains"),
])
def test_search_recipes_are_checked_when_read(steps, match) -> None:
    with pytest.raises(UserError, match=match):
        recipe_from_dict({**BASE, "steps": steps})


@pytest.fixture(scope="module")
def searched(tmp_path_factory, checkpoint):
    """compress: search (random, 4 candidates, latency measured with ORT) + uniform baseline, prune, fine-tune."""
    recipe = recipe_from_dict({**BASE, "steps": [
        {"search": {**SEARCH, "compare_uniform": True}},
        {"prune": {"policy": "search"}},
        {"finetune": {"epochs": 1, "train_samples": 256, "batch_size": 64}},
    ]})
    out = tmp_path_factory.mktemp("search") / "bundle"
    return out, run_compress(checkpoint, recipe, device="host", out=out)


def test_search_step_prunes_to_the_best_policy_and_carries_the_uniform_baseline(searched) -> None:
    out, report = searched
    assert list(report["variants"]) == ["before", "uniform", "after"]
    run = report["steps"]["search"][0]
    limit = 0.6 * report["variants"]["before"]["macs"]
    assert run["searched"]["episodes"] == 4 and run["meta"]["limit"] == pytest.approx(limit)
    # The model that ships is the best candidate: the same widths, the same MACs as the search measured.
    assert report["variants"]["after"]["macs"] == run["searched"]["best"]["macs"] <= limit
    assert report["variants"]["uniform"]["macs"] == run["uniform"]["best"]["macs"] <= limit
    assert run["searched"]["best"]["latency_ms"] > 0
    hits = run["searched"]["latency_cache"]
    assert hits["hits"] + hits["misses"] == 4
    prune = report["steps"]["prune"][0]
    assert prune["config"]["from"] == "search step" and prune["config"]["policy"] == run["searched"]["best_policy"]
    uniform = report["steps"]["variants"]["uniform"]
    assert uniform["prune"][0]["config"]["from"] == "uniform baseline of the search step"
    assert len(uniform["finetune"][0]["history"]["epochs"]) == 1
    # The uniform variant is one shared ratio, rounded per group to whole multiples of round_to.
    log = json.loads((out / "search/uniform/search_log.json").read_text())
    ratio = log["best"]["strategy"]["ratio"]
    space = SearchSpace.from_model(load_model(report["model"]["spec"]).model, (1, 28, 28), round_to=host_round_to())
    assert uniform["prune"][0]["config"]["policy"] == UniformStrategy(space)._policy(ratio).to_dict()


def test_search_bundle_holds_the_log_plot_and_both_variants(searched) -> None:
    out, report = searched
    assert verify_bundle(out) == []
    for strategy in ("random", "uniform"):
        for name in ("search_log.json", "best_policy.json", "search.png"):
            assert (out / "search" / strategy / name).is_file(), (strategy, name)
        assert not (out / "search" / strategy / "search_state.pt").exists()
    log = json.loads((out / "search/random/search_log.json").read_text())
    assert len(log["episodes"]) == 4
    assert report["variants"]["uniform"]["artifacts"]["onnx"]["file"] == "uniform/model.onnx"
    assert (out / "uniform/model.onnx").is_file() and (out / "baseline/model.onnx").is_file()
    lat = report["variants"]["uniform"]["artifacts"]["onnx"]["latency"][0]
    assert lat["p50_ms"] > 0
    md = (out / "report.md").read_text()
    assert "| metric | before | uniform | after | after vs before | after vs uniform |" in md
    assert "## Step search #1: random, target macs=0.6" in md and "`search/random/search.png`" in md
    assert "## Step prune #1: policy from the search step" in md
    assert "## Variant uniform: step finetune #1" in md
    reloaded = load_model(str(out / "model.pt"))
    assert analyze(reloaded.model, (1, 28, 28)).total_macs == report["variants"]["after"]["macs"]


def test_prune_to_a_saved_policy_file(searched, checkpoint, tmp_path) -> None:
    out, report = searched
    recipe = recipe_from_dict({**BASE, "steps": [{"prune": {"policy": str(out / "search/random/best_policy.json")}}]})
    again = run_compress(checkpoint, recipe, device="host", out=tmp_path / "b")
    assert again["variants"]["after"]["macs"] == report["variants"]["after"]["macs"]
    # A policy for another model is refused with the group that differs.
    other = tmp_path / "other.json"
    other.write_text(Policy((0.5,) * 9, tuple(f"x{i}" for i in range(9))).to_json())
    bad = recipe_from_dict({**BASE, "steps": [{"prune": {"policy": str(other)}}]})
    with pytest.raises(UserError, match=r"policy has 9 keep ratios but the search space has \d+ groups"):
        run_compress(checkpoint, bad, device="host", out=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_interrupted_search_step_resumes_on_rerun(tmp_path, checkpoint, monkeypatch, capsys) -> None:
    from edgecompress.search import reward

    recipe = recipe_from_dict({**BASE, "steps": [{"search": {**SEARCH, "latency": "macs"}},
                                                 {"prune": {"policy": "search"}}]})
    calls = {"n": 0}
    original = reward.Evaluator.__call__

    def flaky(self, model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, model)

    monkeypatch.setattr(reward.Evaluator, "__call__", flaky)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        run_compress(checkpoint, recipe, device="host", out=out)
    assert not out.exists()
    assert list((tmp_path / ".bundle.work").glob("search-1-*/search_state.pt"))
    report = run_compress(checkpoint, recipe, device="host", out=out)
    assert "resuming from" in capsys.readouterr().out
    assert calls["n"] == 3 + 2  # episodes 1-2 came from the checkpoint: only 3 and 4 were scored again
    assert report["steps"]["search"][0]["searched"]["episodes"] == 4


def test_tas_step_hands_its_child_to_finetune_and_the_bundle(tmp_path) -> None:
    """compress: search with TAS (1 epoch, tiny data), KD fine-tune, export; model.pt rebuilds the child."""
    arch = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width_mult": 0.5}
    model = zoo_checkpoint(tmp_path, "resnet20", **arch)
    recipe = recipe_from_dict({**BASE, "steps": [
        {"search": {"strategy": "tas", "target": "macs=0.6", "epochs": 1, "search_images": 256, "batch_size": 64,
                    "val_samples": 100, "bn_batches": 1, "latency": "macs", "options": {"cost_weight": 4}}},
        {"finetune": {"epochs": 1, "train_samples": 128, "batch_size": 64}},
    ]})
    out = tmp_path / "bundle"
    report = run_compress(model, recipe, device="host", out=out)
    verify_bundle(out)
    (record,) = report["steps"]["search"]
    assert record["searched"]["strategy"] == "tas" and record["searched"]["epochs"] == 1
    after = report["variants"]["after"]
    child = load_model(str(out / "model.pt"))
    assert analyze(child.model, (1, 28, 28)).total_macs == after["macs"] == record["searched"]["best"]["macs"]
    assert {"search/tas/search_log.json", "search/tas/search.png", "search/tas/best_arch.json"} <= {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert any(n.startswith("search tas (macs=0.6, 1 epochs") for n in report["notes"])


def test_search_step_with_lowrank_then_prune_applies_the_joint_policy(tmp_path) -> None:
    """search (random, joint space) and `prune: {policy: search}` called directly: pruned, then factorized."""
    from types import SimpleNamespace

    from edgecompress.devices import get_device
    from edgecompress.lowrank import LowRank
    from edgecompress.models import create_model
    from edgecompress.pipeline.steps import StepContext
    from edgecompress.prune.steps import prune_step
    from edgecompress.search.steps import search_step

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    ctx = StepContext(input_shape=(1, 28, 28), seed=0, splits=SimpleNamespace(train=(x, y), val=(x, y)),
                      device=get_device("host"), work_dir=tmp_path)
    space = SearchSpace.from_model(model, (1, 28, 28), round_to=ctx.round_to() or 1, lowrank="spatial-svd")
    # A budget below what pruning alone reaches: every candidate has to factorize some layer.
    floor = space.cost_units([g.choices[0] for g in space.groups]), space.macs(space.min_policy())
    fraction = round(sum(floor) / 2 / space.total_macs, 4)
    params = {"strategy": "random", "target": f"macs={fraction}", "episodes": 3, "latency": "macs",
              "val_samples": 64, "bn_batches": 1, "lowrank": "spatial-svd"}
    assert search_step(model, params, ctx) is model
    policy = ctx.policy
    assert policy.lowrank == "spatial-svd" and policy.rank_layers == space.rank_names
    pruned = prune_step(model, {"policy": "search"}, ctx)
    record = ctx.records["prune"][0]
    assert record["config"]["policy"] == policy.to_dict() and record["config"]["from"] == "search step"
    replaced = {n for n, m in pruned.named_modules() if isinstance(m, LowRank)}
    assert replaced and replaced == {layer["name"] for layer in record["factorized"]["layers"]}
    searched = ctx.records["search"][0]
    assert analyze(pruned, (1, 28, 28)).total_macs == record["macs_after"] == searched["searched"]["best"]["macs"]
    assert record["macs_after"] <= fraction * space.total_macs
    assert searched["space"]["rank_layers"] == len(space.ranks)
    assert f"{len(replaced)} layers factorized with spatial-svd" in ctx.notes[-1]
