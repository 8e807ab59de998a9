"""Latency predictor (edgecompress/latency/predictor.py): decomposition, correction fit, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.latency.lut import BlockSig, LatencyLUT, LutEntry
from edgecompress.latency.predictor import (
    GROUPS,
    Correction,
    Decomposition,
    LatencyPredictor,
    decompose,
    fit_correction,
    group_sums,
)
from edgecompress.models import create_model

torch.set_num_threads(1)
FP = {"id": "aaaa00001111", "kind": "host", "cpu_model": "Fake CPU 9000"}


class Small(nn.Module):
    """conv+bn+relu, depthwise+bn+relu6, 1x1 conv+bn, residual add, pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.pw_bn(self.pw(nn.functional.relu6(self.dw_bn(self.dw(x)))))
        return self.fc(torch.flatten(self.pool(x + y), 1))


def test_decomposition_fuses_conv_bn_act_and_finds_each_kernel() -> None:
    dec = decompose(Small(), (3, 8, 8))
    sigs = [k.sig for k in dec.kernels]
    assert [s.op for s in sigs] == ["conv", "dwconv", "conv", "add", "gap", "linear"]
    stem, dw, pw, add, gap, fc = dec.kernels
    assert stem.nodes == ("stem_0", "stem_1", "stem_2")  # conv + bn + relu: one kernel
    assert (stem.sig.cin, stem.sig.cout, stem.sig.k, stem.sig.act, stem.sig.h) == (3, 16, 3, "relu", 8)
    assert dw.sig == BlockSig("dwconv", 16, 16, k=3, groups=16, h=8, w=8, act="relu6")
    assert len(dw.nodes) == 3  # conv, bn and the functional relu6
    assert pw.sig.act == "none" and len(pw.nodes) == 2
    assert add.sig == BlockSig("add", 16, 16, h=8, w=8)
    assert gap.sig == BlockSig("gap", 16, 16, h=8, w=8)
    assert fc.sig == BlockSig("linear", 16, 10)
    assert dec.unknown == () and dec.input_shape == (3, 8, 8)


def test_decomposition_of_zoo_models() -> None:
    res = decompose(create_model("resnet20", num_classes=10, in_channels=3, input_size=32), (3, 32, 32))
    assert res.counts() == {"conv": 21, "add": 9, "gap": 1, "linear": 1}
    # the stem and every block's first conv end in ReLU; the block's ReLU after the add goes with the add
    assert sum(k.sig.op == "conv" and k.sig.act == "relu" for k in res.kernels) == 10
    assert sum(k.sig.op == "add" and k.sig.act == "relu" for k in res.kernels) == 9
    shuffle = decompose(create_model("shufflenet_v2", num_classes=10, in_channels=3, input_size=32), (3, 32, 32),
                        runtime="litert", threads=4)
    counts = shuffle.counts()
    assert counts["split"] == 13 and counts["shuffle"] == 16 and counts["concat"] == 16
    assert all(k.sig.runtime == "litert" and k.sig.threads == 4 for k in shuffle.kernels)
    sq = decompose(create_model("squeezenet", num_classes=10, in_channels=3, input_size=32), (3, 32, 32))
    assert sq.counts()["maxpool"] == 3 and sq.counts()["concat"] == 8


def test_unknown_ops_are_listed_and_untraceable_models_refused() -> None:
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    dec = decompose(Odd(), (4, 2, 2))
    assert dec.unknown == ("cumsum",) and dec.kernels[0].sig.op == "act"

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UserError, match="torch.fx could not trace"):
        decompose(Branchy(), (4, 2, 2))


def _ms(sig: BlockSig) -> float:
    ops, nbytes = sig.work()
    return 0.001 + 2e-8 * ops + 1e-8 * nbytes


def lut_for(models_and_shapes) -> LatencyLUT:
    """A synthetic table holding exactly the kernels of the given models."""
    entries = {}
    for model, shape in models_and_shapes:
        for k in decompose(model, shape).kernels:
            entries[k.sig.key] = LutEntry(k.sig, _ms(k.sig), _ms(k.sig), 0.0)
    return LatencyLUT(FP, "onnxruntime", 1, entries=entries.values())


def _sums(conv: float, dwconv: float, other: float, kernels: float = 10.0, conv_kernels: float = 8.0,
          conv_act_mb: float = 0.5, weight_mb: float = 1.0, mb: float = 2.0) -> dict:
    return {"conv": conv, "dwconv": dwconv, "other": other, "total": conv + dwconv + other, "kernels": kernels,
            "mb": mb, "conv_kernels": conv_kernels, "conv_act_mb": conv_act_mb, "weight_mb": weight_mb}


def test_linear_correction_recovers_alpha_and_beta() -> None:
    sums = [_sums(t, 0.0, 0.0) for t in (0.5, 1.0, 2.0, 3.0)]
    measured = [0.9 * s["total"] + 0.02 for s in sums]
    c = fit_correction(sums, measured, "linear")
    assert c.scales == {g: pytest.approx(0.9) for g in GROUPS} and c.intercept_ms == pytest.approx(0.02)
    assert c.offsets == {} and c.apply(sums[1]) == pytest.approx(measured[1])
    auto = fit_correction(sums, measured, "auto")  # every mode fits exactly: the simplest is kept
    assert auto.mode == "linear" and set(auto.cv_mape) == {"linear", "bytes", "per_kind"}


def test_per_kind_correction_recovers_scales_and_offsets_on_synthetic_data() -> None:
    rng = np.random.default_rng(0)
    sums, measured = [], []
    for _ in range(40):
        s = _sums(rng.uniform(0.2, 2.0), rng.uniform(0.1, 1.0), 0.0, conv_kernels=float(rng.integers(20, 120)),
                  conv_act_mb=rng.uniform(0.1, 2.0), weight_mb=rng.uniform(0.5, 12.0))
        sums.append(s)
        measured.append(0.8 * s["conv"] + 1.5 * s["dwconv"] - 0.002 * s["conv_kernels"] - 0.01 * s["conv_act_mb"]
                        + 0.02 * s["weight_mb"] + 0.3)
    c = fit_correction(sums, measured, "per_kind")
    assert c.scales["conv"] == pytest.approx(0.8, rel=0.02)
    assert c.scales["dwconv"] == pytest.approx(1.5, rel=0.02)
    assert c.offsets["conv_kernels"] == pytest.approx(-0.002, rel=0.05)  # offsets may be negative
    assert c.offsets["conv_act_mb"] == pytest.approx(-0.01, rel=0.1)
    assert c.offsets["weight_mb"] == pytest.approx(0.02, rel=0.05)
    assert c.scales["other"] == 1.0  # absent from the data: left at 1
    assert max(abs(c.apply(s) - y) / y for s, y in zip(sums, measured)) < 0.01
    auto = fit_correction(sums, measured, "auto")
    assert auto.mode == "per_kind" and auto.cv_mape["per_kind"] < 1.0 < auto.cv_mape["linear"]
    assert Correction.from_dict(auto.to_dict()).apply(sums[3]) == pytest.approx(auto.apply(sums[3]))
    with pytest.raises(UserError, match="at least 2 measured models"):
        fit_correction(sums[:1], measured[:1])
    with pytest.raises(ValueError, match="mode"):
        fit_correction(sums, measured, "quadratic")


def test_group_sums_features() -> None:
    dec = decompose(Small(), (3, 8, 8))
    lut = lut_for([(Small(), (3, 8, 8))])
    sums = group_sums(lut, dec)
    assert sums["kernels"] == 6 and sums["conv_kernels"] == 3
    weights = 16 * 3 * 9 + 16 * 9 + 16 * 16  # stem, depthwise, pointwise (elements)
    assert sums["weight_mb"] == pytest.approx(4 * (weights + 16 * 10) / 1e6)
    assert sums["conv_act_mb"] == pytest.approx(4 * (3 * 64 + 16 * 64 + 4 * 16 * 64) / 1e6)
    assert sums["total"] == pytest.approx(sum(_ms(k.sig) for k in dec.kernels))


def test_fit_predict_save_load(tmp_path) -> None:
    shape = (3, 16, 16)
    models = [create_model("resnet20", num_classes=10, in_channels=3, input_size=16, width_mult=w) for w in (0.5, 1.0)]
    lut = lut_for([(m, shape) for m in models])
    raw = [group_sums(lut, decompose(m, shape))["total"] for m in models]
    measured = [1.1 * t + 0.05 for t in raw]
    predictor = LatencyPredictor(lut).fit(models, measured, shape, mode="linear")
    assert predictor.predict(models[0], shape) == pytest.approx(measured[0], rel=1e-6)
    dec = predictor.decompose(models[1], shape)
    assert isinstance(dec, Decomposition) and predictor.predict(dec) == pytest.approx(measured[1], rel=1e-6)

    path = predictor.save(tmp_path / "predictor.json")
    again = LatencyPredictor.load(path, fingerprint=FP)
    assert again.predict(models[1], shape) == pytest.approx(predictor.predict(models[1], shape))
    assert isinstance(again.correction, Correction) and again.correction.fitted_on == 2
    with pytest.raises(UserError) as info:
        LatencyPredictor.load(path, fingerprint={"id": "bbbb22223333", "cpu_model": "Other CPU"})
    assert "aaaa00001111" in str(info.value) and "bbbb22223333" in str(info.value)
