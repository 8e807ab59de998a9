from __future__ import annotations

import copy
import gzip
import io
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.errors import UserError
from edgecompress.prune.unstructured import (
    GMPConfig,
    GradualMagnitudePruner,
    gzip_size,
    magnitude_masks,
    prunable_weights,
    prune_magnitude_,
    sparsity_at,
    sparsity_report,
)
from edgecompress.train import TrainConfig, train

SCHED = dict(initial=0.0, final=0.8, begin_step=0, end_step=100, frequency=10)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 4),
    )


def expected_zeros(sparsity: float, n: int) -> int:
    return math.floor(sparsity * n + 0.5)


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),
        (9, 0.0),  # still on the step-0 update
        (10, 0.8 * (1 - 0.9**3)),  # 0.2168
        (50, 0.7),  # 0.8 * (1 - 0.5**3)
        (55, 0.7),  # rounded down to the update at 50
        (99, 0.8 * (1 - 0.1**3)),  # 0.7992, update at 90
        (100, 0.8),
        (1000, 0.8),
    ],
)
def test_schedule_hand_values(step, expected):
    assert sparsity_at(step, **SCHED) == pytest.approx(expected, abs=1e-12)


def test_schedule_with_initial_sparsity_and_late_begin():
    kw = dict(initial=0.2, final=0.9, begin_step=20, end_step=60, frequency=20)
    assert sparsity_at(0, **kw) == 0.2
    assert sparsity_at(19, **kw) == 0.2
    assert sparsity_at(20, **kw) == pytest.approx(0.2)
    assert sparsity_at(45, **kw) == pytest.approx(0.9 - 0.7 * 0.5**3)  # update at 40: 0.8125
    assert sparsity_at(60, **kw) == pytest.approx(0.9)
    # end_step need not be on the frequency grid: the last partial interval ends at s_f.
    kw2 = dict(initial=0.0, final=0.5, begin_step=0, end_step=25, frequency=10)
    assert sparsity_at(24, **kw2) == pytest.approx(0.5 * (1 - (1 - 20 / 25) ** 3))
    assert sparsity_at(25, **kw2) == 0.5


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (dict(initial=-0.1), "initial_sparsity"),
        (dict(final=1.0), "final_sparsity"),
        (dict(initial=0.9, final=0.5), "initial_sparsity"),
        (dict(begin_step=-1), "begin_step"),
        (dict(begin_step=100, end_step=100), "end_step"),
        (dict(end_step=50.5), "end_step"),
        (dict(frequency=0), "frequency"),
    ],
)
def test_schedule_validation_names_field(override, field):
    with pytest.raises(ValueError, match=field):
        sparsity_at(0, **{**SCHED, **override})


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="scope"):
        GMPConfig(scope="globl")
    with pytest.raises(ValueError, match="include"):
        GMPConfig(include=["conv("])
    with pytest.raises(ValueError, match="final_sparsity"):
        GMPConfig(final_sparsity=1.2)
    with pytest.raises(ValueError, match="frequency"):
        GMPConfig(frequency=0)
    with pytest.raises(ValueError, match="did you mean final_sparsity"):
        GMPConfig.from_dict({"final_sparsty": 0.5})

    cfg = GMPConfig(final_sparsity=0.75, begin_step=10, end_step=None, frequency=5, scope="global", include=["conv"], ignore="^fc$")
    assert cfg.include == ("conv",) and cfg.ignore == ("^fc$",)
    assert GMPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    filled = cfg.with_total_steps(100)
    assert filled.end_step == 99 and filled.sparsity_at(99) == 0.75 and filled.sparsity_at(5) == 0.0
    with pytest.raises(ValueError, match="total_steps"):
        cfg.with_total_steps(11)  # last step 10 == begin_step
    with pytest.raises(ValueError, match="total_steps"):
        GradualMagnitudePruner(tiny_model(), cfg)


# ---------------------------------------------------------------- one-shot masks


def test_layer_scope_hits_each_layer():
    model = tiny_model()
    report = prune_magnitude_(model, 0.6, scope="layer")
    sizes = {"0.weight": 54, "3.weight": 270, "7.weight": 80}
    assert {x.name: x.params for x in report.layers} == sizes
    for x in report.layers:
        assert x.zeros == expected_zeros(0.6, x.params)  # 32, 162, 48
        assert abs(x.zeros - 0.6 * x.params) <= 1
    assert report.zeros == 32 + 162 + 48 and report.params == 404
    # the zeros are the smallest magnitudes: every survivor is >= every pruned original value
    fresh = dict(tiny_model().named_parameters())
    for name, w in prunable_weights(model).items():
        orig = fresh[name].detach().abs()
        assert orig[w == 0].max() <= orig[w != 0].min()
    assert model[1].weight.eq(1).all()  # BN untouched


def two_linears() -> nn.Module:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(1.0, 2.0, 100).view(10, 10))  # large magnitudes
        model[1].weight.copy_(-torch.linspace(0.01, 1.5, 100).view(10, 10))  # mostly small, raw sign ignored
    return model


def test_global_scope_prunes_small_layer_more():
    model = two_linears()
    report = prune_magnitude_(model, 0.5, scope="global")
    assert report.zeros == 100 and report.sparsity == 0.5
    # one threshold (~1.2) over both: |w| in [1.0, 1.19] of layer 0 (20 values), [0.01, 1.20] of layer 1 (80)
    assert [x.zeros for x in report.layers] == [20, 80]
    original = torch.cat([w.detach().abs().flatten() for w in prunable_weights(two_linears()).values()])
    pruned = torch.cat([w.detach().flatten() == 0 for w in prunable_weights(model).values()])
    assert original[pruned].max() <= original[~pruned].min()
    # layer scope on the same weights prunes half of each
    assert [x.zeros for x in prune_magnitude_(two_linears(), 0.5, scope="layer").layers] == [50, 50]


def test_include_ignore_and_empty_selection():
    model = tiny_model()
    assert list(prunable_weights(model, ignore=[r"^7$"])) == ["0.weight", "3.weight"]
    assert list(prunable_weights(model, include=["^3$", "^7$"])) == ["3.weight", "7.weight"]
    report = prune_magnitude_(model, 0.5, include=["^3$"])
    assert [x.name for x in report.layers] == ["3.weight"] and report.zeros == 135
    assert sparsity_report(model).zeros == 135  # the other weights are still dense
    with pytest.raises(UserError, match="no Conv2d/Linear weights"):
        prune_magnitude_(model, 0.5, include=["nothing"])
    with pytest.raises(ValueError, match="sparsity"):
        prune_magnitude_(model, 1.0)


def test_masks_only_grow_despite_ties():
    w = {"a": torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0])}
    prev = {"a": torch.tensor([True, True, False, False, True, True, True, True])}
    masks = magnitude_masks(w, 0.25, "layer", previous=prev)
    assert masks["a"].tolist() == prev["a"].tolist()  # the two already-pruned zeros, not other tied zeros


def test_resnet20_one_shot():
    from edgecompress.models import create_model

    torch.set_num_threads(1)
    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    report = prune_magnitude_(model, 0.7)
    assert len(report.layers) == 22  # stem + 9 blocks x 2 convs + 2 shortcut 1x1 convs + classifier
    assert report.params == 270_608  # 272,474 params minus BN and the classifier bias
    assert report.zeros == sum(expected_zeros(0.7, x.params) for x in report.layers)
    assert report.sparsity == pytest.approx(0.7, abs=1e-3)
    assert all(abs(x.zeros - 0.7 * x.params) <= 1 for x in report.layers)
    assert sparsity_report(model).zeros == report.zeros
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# ---------------------------------------------------------------- gradual pruning


def sgd_steps(model, pruner, opt, steps, first_step=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    for step in range(first_step, first_step + steps):
        x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.after_backward(model, step)
        opt.step()
        pruner.after_step(model, step)


def test_masks_survive_sgd_with_momentum():
    model = tiny_model()
    pruner = GradualMagnitudePruner(model, GMPConfig(final_sparsity=0.5, begin_step=2, end_step=8, frequency=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    seen = []
    for step in range(12):
        masks_at_backward = dict(pruner.masks)
        sgd_steps(model, pruner, opt, 1, first_step=step, seed=step)
        seen.append(pruner.sparsity_report().sparsity)
        for name, w in prunable_weights(model).items():
            if name in pruner.masks:
                assert (w[~pruner.masks[name]] == 0).all()
            if name in masks_at_backward:
                # entries already pruned at backward time get no gradient (clipping and momentum see live weights only)
                assert (w.grad[~masks_at_backward[name]] == 0).all()
    # dense before begin_step, then updates at 2, 4, 6 and s_f from 8 on
    s = lambda t: 0.5 * (1 - (1 - (t - 2) / 6) ** 3)  # noqa: E731
    targets = [0, 0, s(2), s(2), s(4), s(4), s(6), s(6)] + [0.5] * 4
    for got, want in zip(seen, targets):
        assert abs(got - want) <= 3 / 404  # each of 3 layers is within half an element
    assert pruner.last_update_step == 8
    final = {x.name: x.zeros for x in pruner.sparsity_report().layers}
    assert final == {"0.weight": 27, "3.weight": 135, "7.weight": 40}
    # the weights really move while staying masked: survivors changed after the last update
    before = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    masks_before = {k: v.clone() for k, v in pruner.masks.items()}
    sgd_steps(model, pruner, opt, 3, first_step=12)
    for name, w in prunable_weights(model).items():
        assert torch.equal(pruner.masks[name], masks_before[name])
        assert torch.equal(w == 0, ~masks_before[name])
        assert not torch.equal(w, before[name])


def test_state_dict_round_trip_resumes_identically():
    cfg = GMPConfig(final_sparsity=0.8, end_step=10, frequency=2, scope="global")
    model = tiny_model()
    pruner = GradualMagnitudePruner(model, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sgd_steps(model, pruner, opt, 5, seed=1)

    buf = io.BytesIO()
    torch.save(pruner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # how the training checkpoint reads it

    model2 = copy.deepcopy(model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the momentum tensors
    pruner2 = GradualMagnitudePruner(model2, cfg)
    pruner2.load_state_dict(state)
    assert pruner2.last_update_step == 4 and pruner2.sparsity == pytest.approx(cfg.sparsity_at(4))
    assert all(torch.equal(pruner.masks[k], pruner2.masks[k]) for k in pruner.masks)

    sgd_steps(model, pruner, opt, 7, first_step=5, seed=2)
    sgd_steps(model2, pruner2, opt2, 7, first_step=5, seed=2)
    assert all(torch.equal(pruner.masks[k], pruner2.masks[k]) for k in pruner.masks)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert pruner.sparsity_report().zeros == expected_zeros(0.8, 404)

    with pytest.raises(UserError, match="other settings"):
        GradualMagnitudePruner(tiny_model(), GMPConfig(final_sparsity=0.5, end_step=10)).load_state_dict(state)
    bad = {**state, "masks": {**state["masks"], "0.weight": torch.ones(3, dtype=torch.bool)}}
    with pytest.raises(UserError, match="shape"):
        GradualMagnitudePruner(tiny_model(), cfg).load_state_dict(bad)


def test_finalize_leaves_plain_zeros():
    model = tiny_model()
    pruner = GradualMagnitudePruner(model, GMPConfig(final_sparsity=0.5, end_step=1, frequency=1))
    pruner.after_step(model, 1)
    report = pruner.finalize()
    assert pruner.masks == {} and report.zeros == 27 + 135 + 40
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not hasattr(m, "parametrizations") for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())  # no mask buffers added


# ---------------------------------------------------------------- export and size


def test_onnx_export_keeps_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = tiny_model().eval()
    report = prune_magnitude_(model, 0.6)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (torch.randn(1, 1, 6, 6),), str(path), dynamo=False)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    matrices = [w for w in weights if w.ndim >= 2]  # conv kernels and the Linear matrix (BN folding keeps zeros)
    assert sorted(w.size for w in matrices) == [54, 80, 270]
    assert sum(int((w == 0).sum()) for w in matrices) == report.zeros == 32 + 162 + 48


def test_gzip_size_of_sparse_state_is_much_smaller(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 128))
    sparse = copy.deepcopy(dense)
    prune_magnitude_(sparse, 0.9)
    dense_path, sparse_path = tmp_path / "dense.pt", tmp_path / "sparse.pt"
    torch.save(dense.state_dict(), dense_path)
    torch.save(sparse.state_dict(), sparse_path)
    raw = dense_path.stat().st_size
    assert raw > 4 * (256 * 256 + 256 * 128)
    dense_gz, sparse_gz = gzip_size(dense_path), gzip_size(sparse_path)
    assert dense_gz > 0.85 * raw  # random float32 hardly compresses
    assert sparse_gz < 0.35 * dense_gz
    # same bytes as gzip.compress at level 9, however the file is chunked
    data = sparse_path.read_bytes()
    assert gzip_size(sparse_path, chunk_bytes=4096) == sparse_gz == len(gzip.compress(data, compresslevel=9, mtime=0))


# ---------------------------------------------------------------- through train()


def random_loader(n: int = 64, batch: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


TRAIN_CFG = TrainConfig(epochs=2, lr=0.05, batch_size=16, seed=0, restore_best=False)


def test_train_reaches_final_sparsity():
    torch.set_num_threads(1)
    model = tiny_model()
    loader = random_loader()
    total = TRAIN_CFG.epochs * len(loader)  # 8 steps
    pruner = GradualMagnitudePruner(model, GMPConfig(final_sparsity=0.75, frequency=2), total_steps=total)
    assert pruner.config.end_step == 7
    seen = []
    record = lambda r: seen.append(sparsity_report(model).sparsity)  # noqa: E731
    train(model, loader, None, TRAIN_CFG, progress=False, hooks=[pruner], on_epoch_end=record)
    expected = {"0.weight": 41, "3.weight": 203, "7.weight": 60}  # 0.75 * (54, 270, 80), halves rounded up
    assert {x.name: x.zeros for x in pruner.sparsity_report().layers} == expected
    assert pruner.last_update_step == 7
    # after epoch 1 (steps 0-3) the masks are at the step-2 target 0.75 * (1 - (5/7)**3)
    assert seen[0] == pytest.approx(0.75 * (1 - (5 / 7) ** 3), abs=3 / 404)
    assert seen[1] == pytest.approx(304 / 404)


def test_train_resume_restores_masks(tmp_path):
    torch.set_num_threads(1)
    cfg = GMPConfig(final_sparsity=0.6, frequency=1)

    def run(checkpoint_dir, stop_after=None):
        model = tiny_model()
        pruner = GradualMagnitudePruner(model, cfg, total_steps=8)

        def stop(record):
            if record.epoch == stop_after:
                raise KeyboardInterrupt

        train(model, random_loader(), None, TRAIN_CFG, checkpoint_dir=checkpoint_dir, progress=False, hooks=[pruner], on_epoch_end=stop)
        return model, pruner

    full_model, full_pruner = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop_after=1)
    resumed_model, resumed_pruner = run(tmp_path / "cut")
    assert resumed_pruner.last_update_step == full_pruner.last_update_step == 7
    assert all(torch.equal(full_pruner.masks[k], resumed_pruner.masks[k]) for k in full_pruner.masks)
    assert all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()))
    assert full_pruner.sparsity_report().zeros == sum(expected_zeros(0.6, n) for n in (54, 270, 80))
