"""TAS (edgecompress/search/tas.py) and the gradient-search loop (edgecompress/search/gradient.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from support import interrupted_on_call

from edgecompress.errors import UserError
from edgecompress.graph.cost import analyze
from edgecompress.models import create_model
from edgecompress.search.gradient import Budget, SearchData, run_gradient_search
from edgecompress.search.tas import TASConfig, TASStrategy, build, find_stages

SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("resnet20", in_channels=1, input_size=16, width_mult=0.5).eval()


def data(n: int = 64, batch: int = 16) -> SearchData:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *SHAPE, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return SearchData(TensorDataset(x[: n // 2], y[: n // 2]), TensorDataset(x[n // 2:], y[n // 2:]), batch)


def strategy(model, **options) -> TASStrategy:
    tas = TASStrategy(model, SHAPE, TASConfig(**options))
    tas.setup(data(), Budget("macs", 0.5, 1.0))
    return tas


def test_stages_of_a_cifar_resnet(resnet) -> None:
    stages = find_stages(resnet, SHAPE)
    # stage 1 follows the stem (a plain conv): at least one of its 3 blocks stays;
    # stages 2 and 3 start with a downsampling block that always stays, then 2 optional
    assert [(s.blocks, s.depths) for s in stages] == [
        (("features.1", "features.2", "features.3"), (1, 2, 3)),
        (("features.5", "features.6"), (0, 1, 2)),
        (("features.8", "features.9"), (0, 1, 2)),
    ]


def test_expected_cost_of_a_one_hot_distribution_is_the_derived_networks(resnet) -> None:
    tas = strategy(resnet)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lg in tas.width_logits:
            lg[torch.randint(0, lg.numel(), (1,), generator=gen)] = 50.0
        for lg in tas.depth_logits:
            lg[0] = 50.0  # the shallowest depth everywhere
    derived = tas.derive()
    assert derived.arch["depths"] == {"stage0": 1, "stage1": 0, "stage2": 0}
    assert derived.removed == ["features.2", "features.3", "features.5", "features.6", "features.8", "features.9"]
    macs = analyze(derived.model, SHAPE).total_macs
    whole = analyze(resnet, SHAPE).total_macs
    assert float(tas._cost.expected_fraction().detach()) == pytest.approx(macs / whole, rel=1e-4)
    assert tas._cost.argmax_fraction() == pytest.approx(macs / whole, rel=1e-4)
    widths = [tas.choices[i][int(lg.argmax())] for i, lg in enumerate(tas.width_logits)]
    assert derived.arch["units"] == widths
    assert derived.model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_expected_cost_gradient_matches_finite_differences(resnet) -> None:
    tas = strategy(resnet)
    with torch.no_grad():
        for lg in [*tas.width_logits, *tas.depth_logits]:
            lg.copy_(torch.randn(lg.shape, generator=torch.Generator().manual_seed(lg.numel())))
    logit = tas.width_logits[4]
    e = tas._cost.expected_fraction()
    (grad,) = torch.autograd.grad(e, logit)
    eps = 1e-3
    for j in range(logit.numel()):
        with torch.no_grad():
            logit[j] += eps
            up = float(tas._cost.expected_fraction())
            logit[j] -= 2 * eps
            down = float(tas._cost.expected_fraction())
            logit[j] += eps
        assert float(grad[j]) == pytest.approx((up - down) / (2 * eps), abs=2e-4)
    # wider widths cost more: the gradient wrt the widest candidate's logit is the largest
    assert int(grad.argmax()) == logit.numel() - 1
    (depth_grad,) = torch.autograd.grad(tas._cost.expected_fraction(), tas.depth_logits[0])
    assert depth_grad[0] < 0 < depth_grad[-1]  # deeper costs more


def test_width_sites_interpolate_the_most_important_channels_first(resnet) -> None:
    tas = strategy(resnet)
    site = next(s for s in tas._sites if s.module.endswith("features.1.conv1.bn"))
    assert sorted(site.order.tolist()) == list(range(8)) and site.widths[-1] == 8
    # the full width everywhere (each group's last candidate only) reproduces the network
    tas.net.eval()
    ref = resnet(torch.ones(1, *SHAPE))
    tas._width_sample = [(torch.tensor([len(c) - 1]), torch.ones(1)) for c in tas.choices]
    tas._depth_sample = [torch.nn.functional.one_hot(torch.tensor(len(s.depths) - 1), len(s.depths)).float()
                         for s in tas.stages]
    assert torch.allclose(tas.net(torch.ones(1, *SHAPE)), ref, atol=1e-5)
    # a narrower sample changes the output, and the output still has the full shape
    tas._width_sample = [(torch.tensor([0]), torch.ones(1)) for _ in tas.choices]
    assert not torch.allclose(tas.net(torch.ones(1, *SHAPE)), ref, atol=1e-3)


def test_search_runs_logs_and_resumes_exactly(resnet, tmp_path, capsys) -> None:
    def run(out, resume=False, evaluate=lambda m: 0.5):
        torch.manual_seed(0)
        tas = TASStrategy(resnet, SHAPE, TASConfig())
        return tas, run_gradient_search(tas, data(), evaluate, reference=resnet, input_shape=SHAPE,
                                        budget="macs=0.5", epochs=2, out_dir=out, resume=resume, progress=False)

    interrupted = interrupted_on_call(2)  # Ctrl-C while the second epoch's child is scored

    whole, straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", evaluate=interrupted)
    assert "search interrupted after 1 epochs; continue it with resume=True" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "b" / "search_log.json").read_text())["episodes"]) == 1
    again, resumed = run(tmp_path / "b", resume=True)
    for x, y in zip(whole.width_logits + whole.depth_logits, again.width_logits + again.depth_logits):
        assert torch.equal(x, y)
    assert [r["arch"] for r in straight.log] == [r["arch"] for r in resumed.log]
    log = json.loads((tmp_path / "a" / "search_log.json").read_text())
    assert [r["epoch"] for r in log["episodes"]] == [1, 2]
    rec = log["episodes"][-1]
    assert rec["macs"] == analyze(straight.model, SHAPE).total_macs and rec["accuracy"] == 0.5
    assert log["meta"]["limit"] == pytest.approx(0.5 * analyze(resnet, SHAPE).total_macs)
    assert {"search.png", "best_arch.json", "search_state.pt"} <= {p.name for p in (tmp_path / "a").iterdir()}
    with pytest.raises(UserError, match="cost_weight"):
        tas = TASStrategy(resnet, SHAPE, TASConfig(cost_weight=3.0))
        run_gradient_search(tas, data(), lambda m: 0.5, reference=resnet, input_shape=SHAPE, budget="macs=0.5",
                            epochs=2, out_dir=tmp_path / "b", resume=True, progress=False)


def test_nan_loss_stops_with_the_last_good_checkpoint(resnet, tmp_path) -> None:
    tas = TASStrategy(resnet, SHAPE, TASConfig(lr=1e30))
    with pytest.raises(UserError, match=r"tas diverged: the .* loss is nan at epoch 1, step 1.*holds no finished epoch"):
        run_gradient_search(tas, data(), lambda m: 0.5, reference=resnet, input_shape=SHAPE, budget="macs=0.5",
                            epochs=1, out_dir=tmp_path / "n", progress=False)
    assert (tmp_path / "n" / "search_state.pt").is_file()


def test_bad_options_and_targets(resnet) -> None:
    with pytest.raises(UserError, match="unknown TAS option 'cost_wieght'.*cost_weight"):
        build({"cost_wieght": 1}, reference=resnet, input_shape=SHAPE)
    with pytest.raises(UserError, match="width_ratios"):
        build({"width_ratios": [1.5]}, reference=resnet, input_shape=SHAPE)
    tas = TASStrategy(resnet, SHAPE)
    with pytest.raises(UserError, match="lut=PATH"):
        tas.setup(data(), Budget("latency", 1.0, 2.0))
    with pytest.raises(UserError, match="needs a target"):
        tas.setup(data(), None)


def test_search_cli_tas_writes_a_loadable_child(tmp_path, capsys) -> None:
    from support import zoo_checkpoint

    from edgecompress.cli import main
    from edgecompress.models.loading import load_model

    model = zoo_checkpoint(tmp_path, "resnet20", in_channels=1, input_size=28, width_mult=0.5)
    out = tmp_path / "s"
    args = ["search", model, "--strategy", "tas", "--target", "macs=0.6", "--latency", "macs", "--epochs", "1",
            "--search-images", "256", "--batch-size", "64", "--val-samples", "100", "--runtime", "onnxruntime",
            "--out", str(out), "--option", "cost_weight=4", "--option", "width_ratios=[0.5, 0.75, 1.0]"]
    assert main(args) == 0
    summary = json.loads((out / "search.json").read_text())
    assert summary["strategy"] == "tas" and summary["epochs"] == 1 and summary["options"]["cost_weight"] == 4
    child = load_model(str(out / "child.pt"))
    assert analyze(child.model, (1, 28, 28)).total_macs == summary["best"]["macs"]
    assert summary["best_measured"]["best_p50_ms"] > 0
    capsys.readouterr()
    assert main(args[:-4] + ["--force", "--option", "cost_wieght=4"]) == 2
    assert "unknown TAS option 'cost_wieght' (did you mean cost_weight" in capsys.readouterr().err
    assert main(args[:-4] + ["--force", "--option", "cost_weight"]) == 2
    assert "must be KEY=VALUE" in capsys.readouterr().err
    assert (out / "child.pt").is_file()  # a refused --force run leaves the previous search alone


def _table(model, path, drop: str | None = None):
    """A latency table with one entry per kernel kind the model uses (ms = 1 us per 1k MACs or
    elements), which every lookup scales from: enough to check the expected-latency algebra."""
    from edgecompress.latency.lut import LatencyLUT, LutEntry
    from edgecompress.latency.predictor import decompose

    lut = LatencyLUT({"id": "test"}, "onnxruntime", 1)
    seen = set()
    for k in decompose(model, SHAPE, "onnxruntime", 1).kernels:
        if k.sig.op in seen or k.sig.op == drop:
            continue
        seen.add(k.sig.op)
        ops, nbytes = k.sig.work()
        lut.add(LutEntry(k.sig, (ops + nbytes) * 1e-6, (ops + nbytes) * 1e-6, 0.0))
    lut.save(path)
    return str(path)


def test_latency_cost_from_the_devices_table(resnet, tmp_path) -> None:
    from edgecompress.latency.lut import LatencyLUT
    from edgecompress.latency.predictor import decompose

    lut = _table(resnet, tmp_path / "lut.json")
    tas = TASStrategy(resnet, SHAPE, TASConfig(lut=lut))
    tas.setup(data(), Budget("latency", 0.5, 1.0))
    with torch.no_grad():
        for lg in [*tas.width_logits, *tas.depth_logits]:
            lg[-1] = 50.0  # everything at full width and depth
    assert tas._cost.argmax_fraction() == pytest.approx(1.0, rel=1e-6)
    with torch.no_grad():
        for lg in [*tas.width_logits, *tas.depth_logits]:
            lg[-1], lg[0] = 0.0, 50.0  # narrowest and shallowest
    child = tas.derive().model
    table = LatencyLUT.load(lut)
    child_sum = sum(table.lookup(k.sig) for k in decompose(child, SHAPE, "onnxruntime", 1).kernels)
    # conv/linear entries are exact per candidate; pooling/add kernels are charged at their full
    # width (times their block's survival), so at the narrowest everything the estimate is high
    estimate, exact = tas._cost.argmax_fraction(), child_sum / tas._cost._lat.full
    assert exact < estimate < 1.2 * exact
    with torch.no_grad():
        for lg in [*tas.width_logits, *tas.depth_logits]:
            lg.zero_()
    (grad,) = torch.autograd.grad(tas._cost.expected_fraction(), tas.width_logits[0])
    assert grad[-1] > 0 > grad[0]  # the widest candidate costs the most latency
    missing = _table(resnet, tmp_path / "no_add.json", drop="add")
    with pytest.raises(UserError, match=r"no 'add' blocks.*edgecompress profile"):
        TASStrategy(resnet, SHAPE, TASConfig(lut=missing)).setup(data(), Budget("latency", 0.5, 1.0))


def test_derivation_steps_down_to_the_budget_by_least_likelihood_lost(resnet) -> None:
    tas = strategy(resnet)  # budget: half the MACs
    with torch.no_grad():
        for i, lg in enumerate(tas.width_logits):
            lg.copy_(torch.linspace(0.0, 1.0 + i, lg.numel()))  # the widest most likely; later groups surer
        for lg in tas.depth_logits:
            lg.copy_(torch.linspace(0.0, 20.0, lg.numel()))  # every block kept, surely
    assert tas._cost.argmax_fraction() == pytest.approx(1.0)
    derived = tas.derive()
    whole = analyze(resnet, SHAPE).total_macs
    macs = analyze(derived.model, SHAPE).total_macs
    assert macs <= 0.5 * whole and derived.arch["steps_to_budget"] > 0
    assert derived.arch["derived_cost"] == pytest.approx(macs / whole, rel=1e-4)
    # the least sure groups (the first ones) gave up more of their width than the surest
    keep = derived.arch["keep"]
    assert keep[0] < 1.0 and keep[-1] == 1.0
    assert derived.removed == []  # giving up a block would cost far more likelihood


def test_a_budget_below_the_smallest_architecture_is_refused(resnet) -> None:
    tas = TASStrategy(resnet, SHAPE)
    with pytest.raises(UserError, match=r"budget \(0.010 of the model's macs\) is below the smallest architecture"):
        tas.setup(data(), Budget("macs", 0.01, 1.0))
