"""`compress` with a quantize step: the int8 files in the bundle, evaluated as files, timed with the rest."""

import json

import pytest
from support import zoo_checkpoint

from edgecompress.export.bundle import comparison_header, verify_bundle
from edgecompress.export.runtimes import run_tflite
from edgecompress.pipeline import recipe_from_dict, run_compress

BASE = {
    "name": "tiny-int8",
    "seed": 0,
    "data": {"val_size": 500},
    "evaluate": {"split": "test", "max_samples": 256, "batch_size": 64},
    "export": {"formats": ["onnx", "tflite"], "parity_samples": 8},
    "measure": {"threads": [1], "runs": 5, "warmup": 1, "trials": 2},
}


@pytest.fixture(scope="module")
def pruned_int8(tmp_path_factory):
    ckpt = zoo_checkpoint(tmp_path_factory.mktemp("ckpt"), "resnet20", num_classes=10, in_channels=1, input_size=28,
                          width_mult=0.5)
    recipe = {**BASE, "steps": [{"prune": {"ratio": 0.5}}, {"quantize": {"calib_batches": 4, "val_samples": 200}}]}
    out = tmp_path_factory.mktemp("compress") / "bundle"
    return out, run_compress(ckpt, recipe_from_dict(recipe), device="host", out=out)


def test_int8_files_are_in_the_bundle_and_described(pruned_int8):
    out, report = pruned_int8
    assert {"model_int8.onnx", "model_int8.tflite", "model.onnx", "model.tflite"} <= {p.name for p in out.iterdir()}
    assert verify_bundle(out) == []
    assert json.loads((out / "report.json").read_text())["variants"]["int8"]["quantized"] == {"mode": "int8-static",
                                                                                              "from": "after"}
    variants = report["variants"]
    assert list(variants) == ["before", "after", "int8"]
    int8, after = variants["int8"], variants["after"]
    assert int8["macs"] == after["macs"] and int8["params"] == after["params"] and int8["accuracy"] is None
    onnx, tflite = int8["artifacts"]["onnx"], int8["artifacts"]["tflite"]
    assert onnx["quantization"]["scheme"] in ("qdq-u8s8-per-channel", "qdq-s8s8-per-channel")
    assert onnx["quantization"]["scheme_choice"]["requested"] == "auto"
    assert len(onnx["quantization"]["scheme_choice"]["measured"]["candidates"]) == 2  # u8s8 and s8s8 timed
    assert tflite["quantization"]["scheme"] == "full-int8"
    for fmt, art in int8["artifacts"].items():
        assert art["size_bytes"] == (out / art["file"]).stat().st_size < after["artifacts"][fmt]["size_bytes"]
        assert 0.0 <= art["accuracy"]["top1"] <= 1.0 and art["accuracy"]["n"] == 256  # the file, over the eval split
        assert art["parity"]["n_samples"] == 8 and art["parity"]["atol"] == 0.1
        assert [lat["threads"] for lat in art["latency"]] == [1] and art["latency"][0]["p50_ms"] > 0
    assert any(n.startswith("quantize (int8-static, minmax calibration on 128 training images") for n in report["notes"])


def test_table_compares_int8_with_before_and_with_the_fp32_it_came_from(pruned_int8):
    out, report = pruned_int8
    assert comparison_header(report) == ["metric", "before", "after", "int8", "after vs before", "int8 vs before",
                                         "int8 vs after"]
    md = (out / "report.md").read_text()
    assert "| metric | before | after | int8 | after vs before | int8 vs before | int8 vs after |" in md
    assert "## Quantized ONNX (int8): `model_int8.onnx`" in md and "## Quantized TFLite (int8): `model_int8.tflite`" in md
    assert "| qdq-u8s8-per-channel |" in md and "| qdq-s8s8-per-channel |" in md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| size, ONNX")}
    size = report["variants"]
    ratio = size["int8"]["artifacts"]["onnx"]["size_bytes"] / size["before"]["artifacts"]["onnx"]["size_bytes"]
    assert f"| {ratio:.2f}x |" in rows["size, ONNX"]


def test_run_tflite_reads_the_int8_file(pruned_int8):
    import numpy as np

    out, _ = pruned_int8
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    ref, got = run_tflite(out / "model.tflite", x), run_tflite(out / "model_int8.tflite", x)
    assert got.shape == ref.shape == (3, 10)
