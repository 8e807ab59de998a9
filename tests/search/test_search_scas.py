"""SCAS (edgecompress/search/scas.py) and its child network zoo:darts_net (edgecompress/models/darts.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.errors import UserError
from edgecompress.models import create_model, load_model, save_checkpoint
from edgecompress.models.darts import FactorizedReduce, SepConv, Zero
from edgecompress.prune.unstructured import sparsity_at
from edgecompress.search.gradient import Budget, SearchData, run_gradient_search
from edgecompress.search.scas import (DEFAULT_OPS, MixedOp, build, dense_twin, derive_cell, sparse_costs,
                                      sparse_finetune_hooks)

torch.set_num_threads(1)
SHAPE = (1, 28, 28)
# 3 cells (normal, reduce, reduce: 28 -> 14 -> 7), 2 nodes, C = 4; 4 steps per epoch of batch 8
TINY = {"cells": 3, "nodes": 2, "C": 4, "prune_frequency": 1, "prune_begin": 0.25, "prune_end": 0.75}
OP = {op: k for k, op in enumerate(DEFAULT_OPS)}


def reference() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def search_data(n: int = 64, *, nan: bool = False) -> SearchData:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *SHAPE, generator=g)
    if nan:
        x[:, 0, 0, 0] = float("nan")
    return SearchData.halves(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size=8)


def make(options=None):
    return build({**TINY, **(options or {})}, reference=reference(), input_shape=SHAPE)


def conv_linear(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.fixture(scope="module")
def searched():
    """A 2-epoch search pruned 0 -> 0.5 over weight steps 2..6 of 8, sparsity and masks recorded after each step."""
    torch.manual_seed(0)
    strategy = make({"final_sparsity": 0.5})
    strategy.setup(search_data(), None)
    records = []

    def tick(done, info):
        weights = strategy._prunable
        records.append({"target": strategy.sparsity,
                        "zeros": sum(int((w == 0).sum()) for w in weights.values()),
                        "pruned": {k: (w == 0).clone() for k, w in weights.items()}})

    for epoch in range(2):
        strategy.train_epoch(epoch, 2, tick)
    return strategy, records


def test_mixed_op_is_the_alpha_weighted_sum_of_its_ops():
    torch.manual_seed(0)
    for stride in (1, 2):
        mixed = MixedOp(4, stride, DEFAULT_OPS)
        x, w = torch.randn(2, 4, 9, 9), F.softmax(torch.randn(len(DEFAULT_OPS)), dim=0)
        expected = sum(w[k] * op(x) for k, op in enumerate(mixed.ops))
        out = mixed(x, w)
        assert isinstance(mixed.ops[OP["none"]], Zero) and OP["none"] not in mixed.live
        assert out.shape == (2, 4, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
        assert torch.allclose(out, expected, atol=1e-6)


def test_genotype_takes_the_two_strongest_edges_ignoring_none():
    w = torch.full((5, len(DEFAULT_OPS)), 0.01)  # edges: node 2 <- s0, s1; node 3 <- s0, s1, node 2
    w[0, OP["sep_conv_3x3"]] = 0.5
    w[1, OP["none"]], w[1, OP["skip_connect"]] = 0.9, 0.05
    w[2, OP["avg_pool_3x3"]] = 0.2
    w[3, OP["none"]] = 0.95  # the strongest weight of node 3, but "none" does not count
    w[4, OP["sep_conv_5x5"]] = 0.6
    assert derive_cell(w, DEFAULT_OPS, 2) == [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                                              [["sep_conv_5x5", 2], ["avg_pool_3x3", 0]]]
    w[4, OP["sep_conv_5x5"]] = 0.2  # a tie with edge 2: the lower input wins, the earlier op on ties
    w[4, OP["dil_conv_3x3"]] = 0.2
    assert derive_cell(w, DEFAULT_OPS, 2)[1] == [["avg_pool_3x3", 0], ["sep_conv_5x5", 2]]


def test_child_inherits_the_weights_and_computes_what_the_supernet_does():
    torch.manual_seed(0)
    strategy = make()
    strategy.setup(search_data(), None)
    net = strategy.net
    # equal strengths: the lower input comes first
    wanted = {"normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]], [["sep_conv_5x5", 0], ["dil_conv_3x3", 2]]],
              "reduce": [[["sep_conv_3x3", 0], ["skip_connect", 1]], [["dil_conv_3x3", 1], ["sep_conv_5x5", 2]]]}
    first = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3, (1, 2): 4}  # (node, input) -> edge
    with torch.no_grad():
        for kind, alpha in (("normal", net.alphas_normal), ("reduce", net.alphas_reduce)):
            alpha.zero_()
            alpha[:, OP["none"]] = 40.0  # edges the genotype drops carry (almost) nothing
            for n, node in enumerate(wanted[kind]):
                for op, j in node:
                    alpha[first[n, j], OP["none"]] = 0.0
                    alpha[first[n, j], OP[op]] = 40.0
        net.train()(torch.randn(16, *SHAPE))  # non-trivial BN statistics
    derived = strategy.derive()
    assert derived.arch["genotype"] == wanted and derived.kwargs["genotype"] == wanted
    child = derived.model
    assert isinstance(child.features.cells[0].ops[0], SepConv)
    assert isinstance(child.features.cells[1].ops[1], FactorizedReduce)  # skip_connect in a reduction cell
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(child(x), net.eval()(x), atol=1e-5)


def test_sparsity_follows_the_cubic_schedule_and_pruned_weights_stay_zero(searched):
    strategy, records = searched
    assert strategy.steps_per_epoch() == 4 and strategy.schedule(8) == (2, 6)
    targets = [r["target"] for r in records]
    assert targets == [0.0, 0.0, 0.0, 0.2890625, 0.4375, 0.4921875, 0.5, 0.5]
    for step, target in enumerate(targets[2:], start=2):
        assert target == sparsity_at(step, initial=0.0, final=0.5, begin_step=2, end_step=6, frequency=1)
    sizes = [w.numel() for w in strategy._prunable.values()]
    for r in records:  # per tensor, round(target * n) weights are exactly zero
        assert r["zeros"] == sum(math.floor(r["target"] * n + 0.5) for n in sizes)
    for before, after in zip(records, records[1:]):  # a later weight step never revives a pruned weight
        for name, pruned in before["pruned"].items():
            assert not (pruned & ~after["pruned"][name]).any(), name


def test_derived_child_counts_nonzero_params_and_sparse_macs(searched):
    strategy, _ = searched
    derived = strategy.derive()
    child, arch = derived.model, derived.arch
    layers = conv_linear(child)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros == sum(math.floor(0.5 * m.weight.numel() + 0.5) for m in layers)  # inherited masks: 50 % each
    dense = sum(p.numel() for p in child.parameters())
    assert arch["dense_params"] == dense and arch["nonzero_params"] == derived.params == dense - zeros
    macs = {}

    def count(m, _inputs, out):  # output elements x weights per output (in/groups x kh x kw, or in_features)
        macs[m] = out[0].numel() * m.weight[0].numel()

    handles = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        child(torch.zeros(1, *SHAPE))
    for h in handles:
        h.remove()
    assert arch["dense_macs"] == sum(macs.values())
    sparse = sum(v * int(torch.count_nonzero(m.weight)) / m.weight.numel() for m, v in macs.items())
    assert arch["sparse_macs"] == derived.macs == round(sparse)
    assert arch["sparsity"] == round(zeros / sum(m.weight.numel() for m in layers), 6)
    assert arch["target_sparsity"] == arch["final_sparsity"] == 0.5
    assert set(arch["alphas"]) == {"normal", "reduce"} and len(arch["alphas"]["normal"]) == 5


def test_child_checkpoint_reloads_with_the_same_outputs(searched, tmp_path):
    derived = searched[0].derive()
    path = save_checkpoint(derived.model, tmp_path / "child.pt", arch_spec=derived.spec, arch_kwargs=derived.kwargs,
                           input_shape=SHAPE)
    loaded = load_model(str(path))
    assert loaded.arch == {"spec": "zoo:darts_net", "kwargs": derived.kwargs} and loaded.input_shape == SHAPE
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), derived.model(x))
    assert sparse_costs(loaded.model, SHAPE) == sparse_costs(derived.model, SHAPE)


def test_sparse_finetune_keeps_the_zeros_and_the_dense_twin_regrows_them(searched):
    derived = searched[0].derive()
    twin = dense_twin(derived)
    assert twin.kwargs == derived.kwargs and twin.arch["genotype"] == derived.arch["genotype"]
    assert twin.params == derived.arch["dense_params"] and twin.macs == derived.arch["dense_macs"]
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    with torch.no_grad():
        assert torch.equal(twin.model(x), derived.model(x))
    sparse = derived.model.train()
    hooks = sparse_finetune_hooks(sparse)
    zeros_before = {n: (p == 0) for n, p in sparse.named_parameters() if p.dim() > 1}
    for model, hook_list in ((sparse, hooks), (twin.model.train(), [])):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for hook in hook_list:
                hook.after_backward(model, step)
            opt.step()
            for hook in hook_list:
                hook.after_step(model, step)
    for name, p in sparse.named_parameters():
        if name in zeros_before:
            assert torch.equal(p == 0, zeros_before[name]), name  # the same zeros, no others
    twin_weights = dict(twin.model.named_parameters())
    regrown = sum(int(((twin_weights[n] != 0) & zeros).sum()) for n, zeros in zeros_before.items())
    assert regrown > 0.9 * sum(int(z.sum()) for z in zeros_before.values())


def test_resume_continues_exactly(tmp_path):
    def run(out, evaluate, resume=False):
        strategy = make()
        result = run_gradient_search(strategy, search_data(32), evaluate, reference=reference(), input_shape=SHAPE,
                                     epochs=2, out_dir=out, resume=resume, progress=False)
        return strategy, result

    full, full_result = run(None, lambda m: 0.5)
    calls = []

    def interrupt_second(model):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.5

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", interrupt_second)
    resumed, result = run(tmp_path / "cut", lambda m: 0.5, resume=True)
    assert torch.equal(resumed.net.alphas_normal, full.net.alphas_normal)
    assert torch.equal(resumed.net.alphas_reduce, full.net.alphas_reduce)
    for (name, a), b in zip(full.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.masks.keys() == full.masks.keys() and all(torch.equal(full.masks[k], resumed.masks[k])
                                                             for k in full.masks)
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in result.log]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in full_result.log]
    # the log counts the sparse child: nonzero params and sparse MACs
    assert result.best["params"] == result.best["arch"]["nonzero_params"] < result.best["arch"]["dense_params"]
    assert result.best["macs"] == result.best["arch"]["sparse_macs"] < result.best["arch"]["dense_macs"]


def test_params_budget_sets_the_final_sparsity():
    probe = make()
    probe.setup(search_data(), None)
    dense = probe.derive().arch["dense_params"]
    limit = int(0.6 * dense)
    result = run_gradient_search(make(), search_data(32), lambda m: 0.5, reference=reference(), input_shape=SHAPE,
                                 budget=f"params={limit}", epochs=2, progress=False)  # 2 x 2 steps, pruned 1..3
    arch = result.best["arch"]
    assert result.best["feasible"] and result.best["params"] == arch["nonzero_params"] <= limit
    assert 0.2 < arch["final_sparsity"] < 0.95 and arch["sparsity_capped"] is False
    with pytest.raises(UserError, match=r"params <= 100 is out of reach.*max_sparsity = 0.95"):
        run_gradient_search(make(), search_data(), lambda m: 0.5, reference=reference(), input_shape=SHAPE,
                            budget="params=100", epochs=1, progress=False)
    with pytest.raises(UserError, match="both fix the final sparsity"):
        make({"final_sparsity": 0.5}).setup(search_data(), Budget("macs", 1e5, 2e5))


def test_latency_budget_is_refused():
    class Latency:
        name = "fake"

        def latency_ms(self, model, shape):
            return 1.0

    with pytest.raises(UserError, match="do not get faster from zeros"):
        run_gradient_search(make(), search_data(), lambda m: 0.5, reference=reference(), input_shape=SHAPE,
                            budget="latency=0.5", latency_source=Latency(), epochs=1, progress=False)


def test_non_finite_loss_stops_the_search():
    with pytest.raises(UserError, match=r"search scas diverged: the architecture loss is nan at epoch 1, step 1"):
        run_gradient_search(make(), search_data(nan=True), lambda m: 0.5, reference=reference(), input_shape=SHAPE,
                            epochs=1, progress=False)


def test_bad_options_name_the_option():
    with pytest.raises(UserError, match=r"unknown SCAS option 'final_sparsty' \(did you mean final_sparsity"):
        make({"final_sparsty": 0.5})
    with pytest.raises(UserError, match=r"prune_end = 1.5"):
        make({"prune_end": 1.5})
    with pytest.raises(UserError, match=r"ops = \['none', 'conv_7x7'\]"):
        make({"ops": ["none", "conv_7x7"]})
    with pytest.raises(UserError, match=r"final_sparsity = 0.99 must be a number in \[initial_sparsity"):
        make({"final_sparsity": 0.99})


def test_darts_net_checks_its_genotype():
    good = {"normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]]],
            "reduce": [[["max_pool_3x3", 0], ["skip_connect", 1]]]}
    assert create_model("darts_net", genotype=good, C=4, layers=3, in_channels=1, input_size=28)(
        torch.zeros(1, *SHAPE)).shape == (1, 10)
    with pytest.raises(UserError, match=r"op 'none' must be one of"):
        create_model("darts_net", genotype={**good, "normal": [[["none", 0], ["skip_connect", 1]]]})
    with pytest.raises(UserError, match=r"input 2 must be an int in \[0, 1\]"):
        create_model("darts_net", genotype={**good, "reduce": [[["max_pool_3x3", 2], ["skip_connect", 1]]]})
