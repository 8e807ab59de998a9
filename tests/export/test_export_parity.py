"""Parity figures, and export_model's all-or-nothing behaviour around them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.export import ExportResult, ParityWarning, export_model
from edgecompress.export.parity import DEFAULT_ATOL, check_parity, compare_logits


class DivergentNet(nn.Module):
    """Computes something else while being exported: what a broken conversion looks like."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        logits = self.fc(self.conv(x).mean((2, 3))) * 20
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            return logits.flip(1)
        return logits


class Spectrum(nn.Module):
    """Exports to ONNX (through the dynamo exporter) but not to TFLite (2-D FFT)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.fft.rfft2(self.conv(x)).abs().mean((2, 3))


def test_compare_logits_figures():
    expected = np.array([[10.0, 2.0, -3.0], [0.5, 4.0, 1.0]], dtype=np.float32)
    same = compare_logits(expected, expected.copy(), fmt="onnx", runtime="x", atol=1e-3)
    assert (same.max_abs_diff, same.mean_abs_diff, same.top1_agreement, same.passed) == (0.0, 0.0, 1.0, True)
    assert same.logit_scale == 10.0 and same.tolerance == pytest.approx(1e-2)

    got = expected.copy()
    got[1, 2] = 9.0  # second sample now picks class 2: off by 8 logits
    off = compare_logits(expected, got, fmt="tflite", runtime="x", atol=1e-3)
    assert off.max_abs_diff == pytest.approx(8.0)
    assert off.mean_abs_diff == pytest.approx(8.0 / 6)
    assert off.top1_agreement == 0.5
    assert not off.passed
    assert "max abs diff 8 > atol 0.01" in off.summary()


def test_near_tie_counts_as_agreement_and_small_logits_use_absolute_scale():
    expected = np.array([[0.3, 0.3 + 2e-4, -0.1]], dtype=np.float32)  # two best within tolerance 1e-3
    got = np.array([[0.3 + 3e-4, 0.3, -0.1]], dtype=np.float32)  # picks the other one of the tie
    result = compare_logits(expected, got, fmt="onnx", runtime="x", atol=1e-3)
    assert result.logit_scale == 1.0  # max |logit| < 1: the tolerance stays absolute
    assert result.top1_agreement == 1.0
    assert result.passed


def test_nan_and_shape_mismatch_fail():
    expected = np.zeros((2, 3), dtype=np.float32)
    nan = compare_logits(expected, np.full((2, 3), np.nan, np.float32), fmt="onnx", runtime="x", atol=1e-3)
    assert math.isinf(nan.max_abs_diff) and not nan.passed
    shape = compare_logits(expected, np.zeros((2, 4), np.float32), fmt="onnx", runtime="x", atol=1e-3)
    assert math.isinf(shape.max_abs_diff) and shape.top1_agreement == 0.0 and not shape.passed


def test_check_parity_against_a_different_model_fails(tmp_path, nets, trained_like):
    torch.manual_seed(0)
    a = trained_like(nets["TinyNet"](), (3, 16, 16))
    b = trained_like(nets["TinyNet"](), (3, 16, 16), seed=1)
    (result,) = export_model(a, torch.randn(1, 3, 16, 16), tmp_path, formats="onnx")
    assert result.parity.passed and result.parity.atol == DEFAULT_ATOL["onnx"] == 1e-3
    wrong = check_parity(b, result.path, torch.randn(16, 3, 16, 16))
    assert not wrong.passed
    assert wrong.max_abs_diff > 1.0  # logits of ~10 from unrelated weights
    assert wrong.top1_agreement < 0.9


def test_broken_export_raises_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        export_model(DivergentNet().eval(), torch.randn(1, 3, 16, 16), out, formats=["onnx"])
    message = str(err.value)
    assert message.startswith("onnx parity failed: max abs diff ")
    assert "pass --allow-mismatch to keep the file anyway" in message
    assert not out.exists()


def test_allow_mismatch_keeps_file_with_warning(tmp_path):
    with pytest.warns(ParityWarning, match="parity failed"):
        (result,) = export_model(DivergentNet().eval(), torch.randn(1, 3, 16, 16), tmp_path, formats="onnx", allow_mismatch=True)
    assert result.path == tmp_path / "model.onnx" and result.path.is_file()
    assert not result.parity.passed
    assert result.parity.top1_agreement < 0.5


def test_export_model_writes_both_formats(tmp_path, nets, trained_like):
    model = trained_like(nets["TinyNet"](), (3, 16, 16))
    parity_inputs = torch.randn(12, 3, 16, 16)
    results = export_model(model, torch.randn(1, 3, 16, 16), tmp_path / "out", formats="onnx, tflite", basename="tiny", parity_inputs=parity_inputs)
    assert [r.format for r in results] == ["onnx", "tflite"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny.onnx", "tiny.tflite"]
    for r in results:
        assert isinstance(r, ExportResult)
        assert r.size_bytes == r.path.stat().st_size > 1000
        assert r.seconds > 0
        assert r.parity.n_samples == 12 and r.parity.passed
        assert r.parity.max_abs_diff < 1e-3 * r.parity.logit_scale
    record = json.loads(json.dumps([r.to_dict() for r in results]))
    assert record[1]["parity"]["format"] == "tflite" and record[1]["path"].endswith("tiny.tflite")


def test_one_failing_format_leaves_out_dir_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="TFLite export of Spectrum failed"):
        export_model(Spectrum().eval(), torch.randn(1, 3, 16, 16), out, formats=("onnx", "tflite"))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the good .onnx was not kept either


def test_unknown_format_lists_valid_ones(tmp_path, nets):
    with pytest.raises(UserError, match=r"unknown export format 'onxx' \(did you mean onnx\?\); valid formats: onnx, tflite"):
        export_model(nets["TinyNet"](), torch.randn(1, 3, 16, 16), tmp_path / "o", formats="onxx")
    assert not (tmp_path / "o").exists()


def test_check_parity_rejects_unknown_suffix_and_bad_atol(tmp_path, nets):
    with pytest.raises(UserError, match="unknown suffix '.pt'"):
        check_parity(nets["TinyNet"](), tmp_path / "m.pt", torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="atol"):
        check_parity(nets["TinyNet"](), tmp_path / "m.onnx", torch.randn(2, 3, 16, 16), atol=0.0)
