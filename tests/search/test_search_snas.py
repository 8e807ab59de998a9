"""SNAS (edgecompress/search/snas.py): the expected cost and its gradient, inherited weights,
the derived child's checkpoint, latency calibration and tables, resume, divergence, options."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from support import TINY_SPACE, interrupted_on_call

from edgecompress.errors import UserError
from edgecompress.graph.cost import analyze
from edgecompress.latency.lut import LatencyLUT, LutEntry
from edgecompress.latency.predictor import decompose
from edgecompress.latency.source import LutLatency
from edgecompress.models import create_model, load_model, save_checkpoint
from edgecompress.models.searched import build_choice
from edgecompress.search.gradient import Budget, SearchData, run_gradient_search
from edgecompress.search.snas import SNASConfig, build, fit_calibration
from edgecompress.search.spaces import load_space

torch.set_num_threads(1)

SHAPE = (1, 16, 16)
TINY = TINY_SPACE
# one architecture per row, skip wherever the shape allows it in the first
ARCHS = [["skip", "shuffle", "mb_k5_e3_se", "skip"], ["mb_k3_e3", "skip", "shuffle", "mb_k5_e3_se"]]


@pytest.fixture(scope="module")
def space_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


@pytest.fixture(scope="module")
def reference(space_path):
    torch.manual_seed(0)
    return create_model("mobile_space_net", space=space_path, choices=["mb_k5_e3_se"] * 4, num_classes=3,
                        in_channels=1, input_size=16).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(64, *SHAPE, generator=g), torch.randint(0, 3, (64,), generator=g))
    return SearchData(images, images, batch_size=16)


@pytest.fixture
def make(space_path, reference):
    def make(options=None, source=None):
        return build({"space": space_path, **(options or {})}, reference=reference, input_shape=SHAPE,
                     num_classes=3, latency_source=source, seed=0)
    return make


def cost(strategy) -> float:
    return float(strategy.expected_cost().detach())


def peak(strategy, choices, height=40.0):
    """Logits so peaked that the distribution is one-hot to float precision."""
    index = torch.tensor([strategy.space.choices.index(c) for c in choices])
    with torch.no_grad():
        strategy.logits.copy_(height * F.one_hot(index, len(strategy.space.choices)).float())


def test_expected_cost_is_sum_of_p_times_cost_and_its_gradient(make, data, reference):
    s = make()
    s.setup(data, None)
    space = s.space
    # the table holds each candidate's MACs built standalone at its input shape; skip costs 0
    k5 = space.choices.index("mb_k5_e3_se")
    assert s.table[2, k5] == analyze(build_choice("mb_k5_e3_se", 8, 16, 2), (8, 8, 8)).total_macs
    assert s.table[3, k5] == analyze(build_choice("mb_k5_e3_se", 16, 16, 1), (16, 4, 4)).total_macs
    assert (s.table[:, space.choices.index("skip")] == 0).all()
    assert s.reference_cost == analyze(reference, SHAPE).total_macs and s.target is None
    torch.manual_seed(1)
    with torch.no_grad():
        s.logits.copy_(torch.randn_like(s.logits))
    expected = s.expected_cost()
    p = s.probabilities().detach().double()
    assert p[2, space.choices.index("skip")] == 0 and torch.allclose(p.sum(-1), torch.ones(4, dtype=torch.float64))
    manual = s.fixed + sum(float(p[b, c] * s.table[b, c]) for b in range(4) for c in range(len(space.choices)))
    assert float(expected.detach()) == pytest.approx(manual, rel=1e-9)
    expected.backward()
    # dE/dalpha_bc = p_bc (cost_bc - E_b[cost]); 0 for a choice a block may not take
    closed = p * (s.table - (p * s.table).sum(-1, keepdim=True))
    assert torch.allclose(s.logits.grad.double(), closed, rtol=1e-4, atol=1e-3 * float(closed.abs().max()))
    assert s.logits.grad[0, space.choices.index("skip")] != 0 and s.logits.grad[2, space.choices.index("skip")] == 0
    # and a central finite difference on one logit agrees
    eps = 1e-2
    with torch.no_grad():
        s.logits[2, k5] += eps
        up = cost(s)
        s.logits[2, k5] -= 2 * eps
        down = cost(s)
    assert (up - down) / (2 * eps) == pytest.approx(float(closed[2, k5]), rel=1e-3)


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("choices", ARCHS)
def test_one_hot_expected_cost_is_the_derived_childs(make, data, metric, choices):
    s = make({"penalty": metric})
    s.setup(data, None)
    peak(s, choices)
    derived = s.derive()
    assert derived.arch["choices"] == choices and derived.spec == "zoo:mobile_space_net"
    assert derived.removed == [f"features.{b + 1}" for b, c in enumerate(choices) if c == "skip"]
    assert derived.arch["probabilities"][0][choices[0]] == 1.0
    report = analyze(derived.model, SHAPE)
    actual = report.total_macs if metric == "macs" else report.total_params
    assert cost(s) == pytest.approx(actual, rel=0.01)
    assert derived.arch["expected_cost"] == pytest.approx(actual, rel=0.01)


def test_memory_cost_counts_activation_and_weight_bytes(make, data):
    s = make({"penalty": "memory"})
    s.setup(data, None)
    choices = ["mb_k3_e3", "shuffle", "mb_k5_e3_se", "mb_k3_e3"]  # no skip: analyze would charge an Identity's bytes
    peak(s, choices)
    child = s.derive().model
    weight_bytes = 4 * sum(p.numel() for p in child.parameters())
    assert cost(s) == pytest.approx(analyze(child, SHAPE).total_act_bytes + weight_bytes, rel=1e-6)


def test_hard_sampling_runs_only_the_sampled_candidates(make, data):
    s = make({"hard": True})
    s.setup(data, None)
    s.train_epoch(0, 2, lambda done, info: None)
    for block in s.net.blocks:  # gradients of the last step: one candidate per block ran
        ran = [name for name, op in block.ops.items()
               if any(p.grad is not None for p in op.parameters())]
        assert len(ran) <= 1
    assert s.logits.grad is not None and torch.isfinite(s.logits.grad).all()
    assert not torch.equal(s.logits, torch.zeros_like(s.logits))


def test_child_inherits_the_supernet_weights_and_reloads(make, data, tmp_path):
    s = make()
    s.setup(data, Budget("macs", 0.5 * s._reference_cost("macs"), s._reference_cost("macs")))
    stats = s.train_epoch(0, 1, lambda done, info: None)  # weights and BN statistics move off their init
    assert set(stats) >= {"loss", "ce", "penalty", "tau", "expected_cost", "expected_fraction"}
    assert stats["tau"] == pytest.approx(0.03)
    choices = ARCHS[0]
    peak(s, choices)
    derived = s.derive()
    s.net.eval()
    one_hot = F.one_hot(torch.tensor([s.space.choices.index(c) for c in choices]), len(s.space.choices)).float()
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        child = derived.model(x)
        only_chosen = s.net(x, one_hot, only_nonzero=True)
        all_weighted = s.net(x, one_hot)
    assert child.abs().max() > 1e-3 and child.std(0).max() > 1e-5  # not a constant output
    assert torch.allclose(child, only_chosen, atol=1e-5)
    assert torch.allclose(all_weighted, only_chosen, atol=1e-6)
    path = save_checkpoint(derived.model, tmp_path / "child.pt", arch_spec=derived.spec, arch_kwargs=derived.kwargs,
                           input_shape=SHAPE)
    loaded = load_model(str(path))
    assert loaded.arch == {"spec": "zoo:mobile_space_net", "kwargs": derived.kwargs}
    assert loaded.input_shape == SHAPE
    with torch.no_grad():
        assert torch.equal(loaded.model(x), child)


class FakeLatency:
    """0.005 ms per call (the invocation) + 1e-6 ms per MAC; counts its calls."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def latency_ms(self, model, input_shape) -> float:
        self.calls += 1
        return 0.005 + 1e-6 * analyze(model, tuple(input_shape)).total_macs


def test_latency_table_is_calibrated_on_whole_children(make, data, reference):
    source = FakeLatency()
    s = make(source=source)
    ref_ms = source.latency_ms(reference, SHAPE)
    s.setup(data, Budget("latency", 0.6 * ref_ms, ref_ms))
    cal = s.calibration
    assert [p["child"] for p in cal["points"]] == ["fastest", "slowest", "random"]
    assert cal["a"] > 0 and cal["b"] < 0  # blocks timed alone each pay the invocation a network pays once
    slowest = max(p["ms"] for p in cal["points"])
    for point in cal["points"]:
        fitted = cal["a"] * point["table_ms"] + cal["b"]
        assert abs(fitted - point["ms"]) < 0.02 * slowest
        assert abs(fitted - point["ms"]) < abs(point["table_ms"] - point["ms"])
    # the reference; 9 distinct (candidate, input shape) cells (blocks 0 and 1 share theirs), stem and head
    # timed standalone; 3 whole children
    assert source.calls == 1 + 9 + 2 + 3
    for choices in ARCHS:
        peak(s, choices)
        derived = s.derive()
        assert derived.arch["calibration"] == {"a": cal["a"], "b": cal["b"]}
        assert cost(s) == pytest.approx(source.latency_ms(derived.model, SHAPE), rel=0.05)
        assert derived.arch["expected_fraction"] == pytest.approx(cost(s) / ref_ms, rel=1e-5)
    assert fit_calibration([1.0, 2.0, 3.0], [2.5, 4.5, 6.5]) == pytest.approx((2.0, 0.5))
    assert fit_calibration([1.0, 1.0], [2.0, 4.0]) == (3.0, 0.0)  # no spread: proportional


def _lut_for(space_path, drop=()):
    """A table holding every kernel the tiny space's networks run (ms from their work)."""
    lut = LatencyLUT({"id": "test-device"}, "onnxruntime", 1)
    for kind in ("mb_k3_e3", "mb_k5_e3_se", "shuffle"):
        child = create_model("mobile_space_net", space=space_path, choices=[kind] * 4, num_classes=3, in_channels=1,
                             input_size=16)
        for kernel in decompose(child, SHAPE).kernels:
            ms = 1e-3 + 1e-8 * sum(kernel.sig.work())
            if kernel.sig.op not in drop:
                lut.add(LutEntry(kernel.sig, ms, ms, 0.0))
    return lut


def test_latency_from_a_lut_sums_the_blocks_kernels(make, data, space_path, tmp_path):
    lut = _lut_for(space_path)
    path = lut.save(tmp_path / "lut.json")
    s = make({"lut": str(path), "penalty": "latency"})
    s.setup(data, None)
    assert s.calibration is None  # no latency source to calibrate on: the table's own sums
    for choices in ARCHS:
        peak(s, choices)
        child = s.derive().model
        assert cost(s) == pytest.approx(LutLatency(lut).latency_ms(child, SHAPE), rel=1e-6)

    lut_path = _lut_for(space_path, drop=("dwconv",)).save(tmp_path / "no_dw.json")
    s = make({"lut": str(lut_path), "penalty": "latency"})
    with pytest.raises(UserError, match=r"has no 'dwconv' blocks, which candidate mb_k3_e3 of block 0 needs .*"
                                        r"profile them with `edgecompress profile`"):
        s.setup(data, None)


def test_resume_continues_exactly(make, data, reference, tmp_path):
    def search(out, resume=False, evaluate=lambda m: 0.5):
        strategy = make()
        result = run_gradient_search(strategy, data, evaluate, reference=reference, input_shape=SHAPE,
                                     budget="macs=0.5", latency_source=None, epochs=2, seed=0, out_dir=out,
                                     resume=resume, progress=False)
        return strategy, result

    interrupted = interrupted_on_call(2)  # Ctrl-C while the second epoch's child is scored

    whole, whole_result = search(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "b", evaluate=interrupted)
    assert len(json.loads((tmp_path / "b" / "search_log.json").read_text())["episodes"]) == 1
    resumed, resumed_result = search(tmp_path / "b", resume=True)
    assert torch.equal(whole.logits, resumed.logits)
    assert not torch.equal(whole.logits, torch.zeros_like(whole.logits))
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    assert whole.step == resumed.step == 8
    assert whole_result.best["arch"] == resumed_result.best["arch"]
    assert [r["train"] for r in whole_result.log] == [r["train"] for r in resumed_result.log]
    assert whole_result.meta["target_fraction"] == pytest.approx(0.5)
    assert whole_result.model is not None and whole_result.derived.spec == "zoo:mobile_space_net"


def test_a_diverging_loss_stops_with_a_user_error(make, data, reference):
    with pytest.raises(UserError, match=r"search snas diverged: the training loss is (nan|inf|-inf) at epoch 1"):
        run_gradient_search(make({"lr": 1e30}), data, lambda m: 0.5, reference=reference, input_shape=SHAPE,
                            budget="macs=0.5", epochs=1, progress=False)


def test_options_are_checked(make, data):
    with pytest.raises(UserError, match=r"snas: unknown SNAS option 'arch_rl' \(did you mean arch_lr"):
        make({"arch_rl": 0.1})
    with pytest.raises(UserError, match=r"snas: SNASConfig.tau_end = 0 must be a finite number > 0"):
        make({"tau_end": 0})
    with pytest.raises(UserError, match=r"SNASConfig.penalty = 'flops' must be one of macs, params, memory, latency"):
        make({"penalty": "flops"})
    with pytest.raises(UserError, match=r"unknown search space 'mobil' \(did you mean mobile"):
        make({"space": "mobil"})
    with pytest.raises(UserError, match="penalty 'params' is not the budget's metric"):
        make({"penalty": "params"}).setup(data, Budget("macs", 1e5, 2e5))
    with pytest.raises(UserError, match="a latency penalty needs a latency source"):
        make({"penalty": "latency"}).setup(data, None)
    assert SNASConfig().temperature.at(0, 10) == 5.0 and SNASConfig().temperature.at(9, 10) == pytest.approx(0.03)


def test_bundled_space_builds_a_supernet():
    reference = create_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28, width_mult=0.5)
    s = build({}, reference=reference, input_shape=(1, 28, 28), num_classes=10, seed=0)
    assert len(s.net.blocks) == 9 and len(s.net.blocks[1].ops) == 14 and len(s.net.blocks[0].ops) == 13
    assert s.config()["space"] == load_space("mobile").to_dict()


def test_a_budget_below_the_cheapest_child_is_refused(make, data, reference):
    s = make()
    s.setup(data, None)
    floor = s.cheapest_cost()
    peak(s, [min(s.space.allowed(slot), key=lambda c, b=b: float(s.table[b, s.space.choices.index(c)]))
             for b, slot in enumerate(s.space.blocks())])
    assert floor == pytest.approx(cost(s), rel=1e-6)  # the cheapest child, one-hot
    with pytest.raises(UserError, match=r"below the cheapest child of the space"):
        make().setup(data, Budget("macs", 0.5 * floor, float(s.reference_cost)))
