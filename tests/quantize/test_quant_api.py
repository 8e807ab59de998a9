"""The one-call quantization API (edgecompress/quantize/api.py): quantize_files and quantize_command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.devices.base import LatencyResult
from edgecompress.errors import UserError
from edgecompress.export import export_model
from edgecompress.export.runtimes import run_onnx, run_tflite
from edgecompress.models.loading import load_model
from edgecompress.quantize.api import calibration_tensor, quantize_command, quantize_files
from edgecompress.quantize.tflite_quant import tflite_op_types

SHAPE = (1, 28, 28)
U8, S8 = "qdq-u8s8-per-channel", "qdq-s8s8-per-channel"
DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "fmnist_mobilenetv2.pt"



class SmallNet(nn.Module):
    """Two convs, pooling and a linear `fc` (the layer the fake evaluator calls fragile)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.pool(self.mix(self.stem(x))).flatten(1))


class ScriptedDevice:
    """A device whose p50 (ms) for a file is looked up by the file's name."""

    name = "scripted"

    def __init__(self, p50_by_name: dict[str, float]):
        self.p50_by_name = p50_by_name

    def fingerprint(self) -> dict:
        return {"id": "scripted"}

    def measure(self, artifact, runtime=None, threads=1, runs=50, warmup=10, trials=3) -> LatencyResult:
        p50 = self.p50_by_name[Path(artifact).name]
        return LatencyResult(
            p50_ms=p50, p90_ms=p50, mean_ms=p50, std_ms=0.0, min_ms=p50, runs=runs, warmup=warmup, trials=trials,
            threads=threads, runtime="onnxruntime", runtime_version="x", artifact=str(artifact), artifact_sha256="0",
            device=self.name, trial_p50s_ms=[p50] * trials, samples_ms=[p50] * (runs * trials),
        )


def _fc_is_int8(path: Path) -> bool:
    """Whether the file computes the `fc` layer in int8 (ONNX: its weight is dequantized; TFLite: int8 activations)."""
    if path.suffix == ".onnx":
        graph = onnx.load(str(path)).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        fc = next(n for n in graph.node if n.op_type in ("Gemm", "MatMul") and "fc" in n.name)
        return producer.get(fc.input[1]) == "DequantizeLinear"
    return next(op for op in tflite_op_types(path) if op.op == "FULLY_CONNECTED").activation == "int8"


def fragile_fc(path) -> float:
    """A top-1 that loses 10 points whenever `fc` runs in int8 and nothing otherwise."""
    return 0.80 if _fc_is_int8(Path(path)) else 0.90


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """SmallNet with its fp32 ONNX and TFLite files, and 128 calibration images."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    folder = tmp_path_factory.mktemp("small")
    calib = torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(1))
    results = export_model(model, calib[:1], folder, basename="model_fp32", parity_inputs=calib[:8])
    return model, {r.format: r.path for r in results}, calib


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


def test_sensitive_layer_kept_float_in_onnx_and_then_excluded_in_tflite(small, tmp_path):
    model, fp32, calib = small
    out = tmp_path / "int8"
    entries = quantize_files(model, fp32, calib, out, input_shape=SHAPE, scheme=U8, evaluate=fragile_fc, budget=0.02)

    onnx_entry, tfl = entries["onnx"], entries["tflite"]
    assert Path(onnx_entry["path"]) == out / "model_int8.onnx" and Path(tfl["path"]) == out / "model_int8.tflite"
    # full u8s8 lost 10 points; mixed precision kept exactly fc float and got back within the budget
    mixed = onnx_entry["mixed_precision"]
    assert mixed["path"][0]["drop"] == pytest.approx(0.10) and mixed["within_budget"]
    assert mixed["sensitivity"][0]["label"] == "fc" and mixed["sensitivity"][0]["drop"] == pytest.approx(0.10)
    kept = {name: why for name, why in onnx_entry["float_layers"].items() if why.startswith("kept float")}
    assert list(kept) == ["/fc/Gemm"] and "drop 10.00 points" in kept["/fc/Gemm"]
    assert onnx_entry["accuracy"]["drop"] == pytest.approx(0.0) and onnx_entry["accuracy"]["within_budget"]
    assert not _fc_is_int8(out / "model_int8.onnx")
    assert any("dropped 10.00 points, over the budget 2.00: kept float by sensitivity: /fc/Gemm" in n for n in onnx_entry["notes"])
    # TFLite full-int8 lost the same 10 points; re-quantized with ONNX's sensitive layer excluded
    assert tfl["scheme"] == "full-int8" and tfl["accuracy"]["quantized"] == pytest.approx(0.90)
    assert "excluded" in tfl["float_layers"]["fc"]
    assert any("kept float the layers ONNX sensitivity found (fc): drop now 0.00 points, now within budget" in n
               for n in tfl["notes"])
    assert not _fc_is_int8(out / "model_int8.tflite")
    assert sorted(p.name for p in out.iterdir()) == ["model_int8.onnx", "model_int8.tflite"]
    assert _partials(tmp_path) == []
    for entry in entries.values():  # sizes describe the files as moved into out
        assert entry["size_bytes"] == Path(entry["path"]).stat().st_size
    json.dumps(entries)  # JSON-able as it is


def test_auto_keeps_int8_but_says_loudly_when_fp32_is_faster(small, tmp_path):
    model, fp32, calib = small
    device = ScriptedDevice({"model_fp32.onnx": 1.0, f"model.{U8}.onnx": 1.25, f"model.{S8}.onnx": 1.6})
    entries = quantize_files(model, {"onnx": fp32["onnx"]}, calib, tmp_path / "q", input_shape=SHAPE, formats=["onnx"],
                             device=device, evaluate=lambda p: 0.9, runs=3, trials=1)
    entry = entries["onnx"]
    assert list(entries) == ["onnx"] and entry["fp32_faster"] is True and entry["scheme"] == U8
    choice = entry["scheme_choice"]
    assert choice["requested"] == "auto" and choice["chosen"] == U8
    assert choice["reason"].startswith(f"{U8} kept although: int8 is not faster than fp32 on scripted at 1 thread")
    assert choice["measured"]["fp32"]["p50_ms"] == {1: 1.0}
    assert [c["speedup"][1] for c in choice["measured"]["candidates"]] == pytest.approx([0.8, 0.625])
    assert any(n.startswith("WARNING: fp32 is faster than int8 on scripted") for n in entry["notes"])
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["model_int8.onnx"]  # candidates not kept


def test_explicit_dynamic_scheme_and_tflite_fp16_with_onnx_skipped(small, tmp_path):
    model, fp32, calib = small
    # no fp32 ONNX given: exported from the model and kept beside the quantized file
    dyn = quantize_files(model, {}, None, tmp_path / "dyn", input_shape=SHAPE, mode="int8-dynamic", formats=["onnx"])
    assert dyn["onnx"]["scheme"] == "dynamic-range-int8" and dyn["onnx"]["accuracy"] is None
    assert sorted(p.name for p in (tmp_path / "dyn").iterdir()) == ["model_fp32.onnx", "model_int8.onnx"]
    assert dyn["onnx"]["fp32_file"] == str(tmp_path / "dyn" / "model_fp32.onnx")
    x = calib[:4].numpy()
    np.testing.assert_allclose(run_onnx(dyn["onnx"]["fp32_file"], x), run_onnx(fp32["onnx"], x), atol=1e-5)
    assert "/fc/Gemm" not in dyn["onnx"]["float_layers"]  # the linear layer is the one dynamic int8 takes
    fp16 = quantize_files(model, fp32, None, tmp_path / "fp16", input_shape=SHAPE, mode="fp16", basename="model_fp16")
    assert list(fp16) == ["onnx", "tflite"] and "TFLite-only" in fp16["onnx"]["skipped"]
    assert fp16["tflite"]["scheme"] == "fp16" and Path(fp16["tflite"]["path"]).name == "model_fp16.tflite"
    np.testing.assert_allclose(run_tflite(fp16["tflite"]["path"], x), run_tflite(fp32["tflite"], x), atol=2e-2)


def test_bad_inputs_raise_and_write_nothing(small, tmp_path):
    model, fp32, calib = small
    out = tmp_path / "q"
    quantized = quantize_files(model, fp32, calib, tmp_path / "first", input_shape=SHAPE, scheme=U8, formats=["onnx"])
    cases = [
        (dict(fp32={"onnx": quantized["onnx"]["path"]}, formats=["onnx"]), "is already quantized"),
        (dict(mode="int8-statik"), r"mode 'int8-statik' must be one of .* \(did you mean int8-static"),
        (dict(mode="qat"), "mode 'qat' needs training"),
        (dict(mode="fp16", formats=["onnx"]), "fp16 is TFLite-only"),
        (dict(method="entropy"), "'entropy' is ONNX-only"),
        (dict(scheme="qdq-u8s8"), r"scheme 'qdq-u8s8' does not fit mode 'int8-static' \(did you mean"),
        (dict(budget=1.5), "budget 1.5 must be"),
        (dict(fp32={"onnx": tmp_path / "missing.onnx"}, formats=["onnx"]), "does not exist"),
    ]
    for kwargs, match in cases:
        args = {"fp32": fp32, **kwargs}
        with pytest.raises(UserError, match=match):
            quantize_files(model, args.pop("fp32"), calib, out, input_shape=SHAPE, **args)
        assert not out.exists() and _partials(tmp_path) == []
    with pytest.raises(UserError, match="images of shape"):  # calibration of the wrong shape
        quantize_files(model, fp32, torch.randn(8, 3, 28, 28), out, input_shape=SHAPE, scheme=U8)
    assert not out.exists() and _partials(tmp_path) == []


def test_calibration_tensor_is_seeded_and_sized():
    ds = torch.utils.data.TensorDataset(torch.randn(500, *SHAPE), torch.randint(0, 10, (500,)))
    a, b = calibration_tensor(ds, 3, seed=1), calibration_tensor(ds, 3, seed=1)
    assert a.shape == (96, *SHAPE) and torch.equal(a, b) and not torch.equal(a, calibration_tensor(ds, 3, seed=2))
    with pytest.raises(UserError, match="calib_batches 0 must be an integer >= 1"):
        calibration_tensor(ds, 0)


# --- the demo model and the command ------------------------------------------------------


@pytest.mark.slow
def test_demo_model_both_formats_with_scheme_chosen_on_this_host(tmp_path):
    from edgecompress.data.fashion_mnist import fashion_mnist_splits
    from edgecompress.devices import get_device

    loaded = load_model(str(DEMO))
    splits = fashion_mnist_splits(SHAPE)
    calib = calibration_tensor(splits.train, 7)[:200]
    fp32 = {r.format: r.path for r in export_model(loaded.model, calib[:1], tmp_path / "fp32", parity_inputs=calib[:8])}
    entries = quantize_files(loaded.model, fp32, calib, tmp_path / "int8", input_shape=SHAPE,
                             device=get_device("host"), runs=20, trials=1)

    x, y = next(iter(torch.utils.data.DataLoader(splits.test, batch_size=300)))
    for fmt, run in (("onnx", run_onnx), ("tflite", run_tflite)):
        entry = entries[fmt]
        assert entry["calibration"]["images"] == 200 and Path(entry["path"]).stat().st_size == entry["size_bytes"]
        assert entry["size_bytes"] < 0.5 * Path(fp32[fmt]).stat().st_size
        top1 = float((run(entry["path"], x.numpy()).argmax(1) == y.numpy()).mean())
        assert top1 > 0.85, (fmt, top1)  # the fp32 model has 92.4 %
    choice = entries["onnx"]["scheme_choice"]
    assert choice["requested"] == "auto" and choice["chosen"] in (U8, S8) and choice["reason"]
    measured = choice["measured"]
    assert measured["device"] == "host" and measured["fp32"]["p50_ms"][1] > 0
    assert [c["scheme"] for c in measured["candidates"]] == [U8, S8]
    assert all(c["p50_ms"][1] > 0 for c in measured["candidates"])
    # without labels, candidates are scored by agreement with the fp32 file
    assert "agreement with the fp32 file" in entries["onnx"]["accuracy"]["source"]
    assert entries["onnx"]["accuracy"]["fp32"] == 1.0


def _resnet20():
    return load_model("zoo:resnet20", in_channels=1, input_size=28, num_classes=10)


def test_quantize_command_writes_consistent_quant_json(tmp_path):
    out = tmp_path / "q"
    report = quantize_command(_resnet20(), SHAPE, mode="int8-dynamic", calib_batches=2, out=out, test_samples=256,
                              threads=(1,), runs=5, warmup=1, trials=1)
    assert json.loads((out / "quant.json").read_text()) == json.loads(json.dumps(report))
    assert report["schema"] == "edgecompress.quant/1" and report["mode"] == "int8-dynamic"
    assert report["calibration"]["images"] == 64 and report["evaluation"]["n"] == 256
    assert sorted(p.name for p in out.iterdir()) == ["model_fp32.onnx", "model_fp32.tflite", "model_int8.onnx",
                                                     "model_int8.tflite", "quant.json"]
    assert len(report["summary"]) == 2
    for fmt, line in zip(("onnx", "tflite"), report["summary"]):
        f = report["formats"][fmt]
        for side in ("fp32", "quantized"):
            assert f[side]["size_bytes"] == (out / f[side]["file"]).stat().st_size
            assert 0.0 <= f[side]["top1"] <= 1.0 and 0 < f[side]["latency"]["1"]["p50_ms"] <= f[side]["latency"]["1"]["p90_ms"]
        assert f["speedup"]["1"] == pytest.approx(f["fp32"]["latency"]["1"]["p50_ms"] / f["quantized"]["latency"]["1"]["p50_ms"])
        assert f["drop"] == pytest.approx(f["fp32"]["top1"] - f["quantized"]["top1"])
        assert f["scheme"] == "dynamic-range-int8" and f["scheme_reason"]
        assert line.startswith(f"{fmt}: fp32 {f['fp32']['top1']:.2%}") and f"{f['speedup']['1']:.2f}x at 1 thread on host" in line
    assert report["device"]["name"] == "host" and report["device"]["fingerprint"]
    assert report["versions"]["onnxruntime"] and report["versions"]["ai_edge_quantizer"]
    # the TFLite dynamic-range file stores int8 weights: much smaller than fp32
    assert report["formats"]["tflite"]["size_ratio"] < 0.5


def test_quantize_command_bad_inputs_write_nothing(tmp_path):
    loaded = _resnet20()
    out = tmp_path / "q"
    common = dict(out=out, test_samples=16, threads=(1,), runs=1, warmup=0, trials=1)
    with pytest.raises(UserError, match="--calib-batches 0 must be an integer >= 1"):
        quantize_command(loaded, SHAPE, mode="int8-static", calib_batches=0, **common)
    with pytest.raises(UserError, match=r"mode 'int8_static' must be one of .*\(did you mean int8-static"):
        quantize_command(loaded, SHAPE, mode="int8_static", calib_batches=4, **common)
    observed = nn.Sequential(nn.Conv2d(1, 4, 3), torch.ao.quantization.MinMaxObserver(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(UserError, match="already quantized"):
        quantize_command(loaded.__class__(observed, "observed", SHAPE, None), SHAPE, mode="int8-static",
                         calib_batches=4, **common)
    assert not out.exists() and _partials(tmp_path) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        quantize_command(loaded, SHAPE, mode="int8-dynamic", calib_batches=4, **common)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _partials(tmp_path) == []


def test_few_calibration_batches_warn(tmp_path):
    from edgecompress.quantize.base import CalibrationWarning

    with pytest.warns(CalibrationWarning, match="only 64 images"):
        report = quantize_command(_resnet20(), SHAPE, mode="int8-static", calib_batches=2, out=tmp_path / "q",
                                  formats="onnx", scheme=U8, budget=0.5, test_samples=64, val_samples=64, threads=(1,), runs=2,
                                  warmup=0, trials=1)
    assert list(report["formats"]) == ["onnx"] and report["formats"]["onnx"]["calibration"]["images"] == 64
