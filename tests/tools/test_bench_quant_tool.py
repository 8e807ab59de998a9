"""Smoke run of tools/bench_quant.py: the demo model and its pruned copy, ONNX, tiny data; then its resume."""

from __future__ import annotations

import json

import pytest
import torch
from support import load_tool

ARGS = ["--quick", "--threads", "1", "--train-limit", "256", "--test-limit", "256", "--val-samples", "200",
        "--choice-runs", "5", "--runs", "10", "--trials", "2"]


def test_bench_quant_smoke_and_resume(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    tool = load_tool("bench_quant")
    out = tmp_path / "bench"
    assert tool.main([*ARGS, "--out", str(out)]) == 0
    report = json.loads((out / "bench_quant.json").read_text())
    assert report["complete"] and list(report["models"]) == ["demo", "demo_pruned"]
    assert report["device"]["name"] == "host" and report["device"]["fingerprint"]["id"]
    assert report["versions"]["onnxruntime"] and "ai_edge_quantizer" in report["versions"]
    demo = report["models"]["demo"]["files"]
    assert set(demo) == {"onnx:fp32", "onnx:int8-static", "onnx:int8-dynamic"}  # fp16 is TFLite-only
    for model in report["models"].values():
        for key, f in model["files"].items():
            assert 0 <= f["test_top1"] <= 1 and (out / f["file"]).is_file()
            lat = f["latency"]["1"]
            assert lat["p50_ms"] > 0 and len(lat["trial_p50s_ms"]) == 2 and f["speedup_vs_fp32"]["1"] > 0
    static = demo["onnx:int8-static"]
    assert static["size_bytes"] < demo["onnx:fp32"]["size_bytes"] / 2
    # The scheme choice measured both static candidates and kept one of them.
    candidates = {c["scheme"]: c for c in static["scheme_choice"]["candidates"]}
    assert set(candidates) == {"qdq-u8s8-per-channel", "qdq-s8s8-per-channel"}
    assert static["scheme"] in candidates and all(c["speedup"]["1"] > 0 for c in candidates.values())
    pruned = report["models"]["demo_pruned"]
    assert 0.4 < pruned["prune"]["macs_ratio"] <= 0.5 + 1e-6 and pruned["finetune"]["train_images"] == 256
    combined = pruned["vs_original_fp32"]["onnx:int8-static"]
    assert 0 < combined["size_ratio"] < 0.5 and combined["speedup"]["1"] > 0
    assert combined["latency_ratio"]["1"] == pytest.approx(1 / combined["speedup"]["1"])
    names = [t["target"] for t in report["targets"]]
    assert names == ["demo onnx int8 top-1 within 0.5 point of fp32"]
    md = (out / "bench_quant.md").read_text()
    assert "host CPU, not a phone" in md and "## Targets" in md and "## Run conditions" in md
    assert "| demo | ONNX Runtime | int8-static | qdq-" in md and "| model | runtime | file | scheme | size KB |" in md
    assert "## Pruned + int8 demo model, against the ORIGINAL fp32 files" in md
    # A second run reuses both stages (same files) and only measures again.
    capsys.readouterr()
    assert tool.main([*ARGS, "--out", str(out)]) == 0
    again = json.loads((out / "bench_quant.json").read_text())
    assert all(m.get("reused") for m in again["models"].values())
    assert again["models"]["demo"]["files"]["onnx:int8-static"]["test_top1"] == static["test_top1"]
    # Other build settings in the same folder: refused, with what differs.
    assert tool.main([*ARGS, "--budget", "0.01", "--out", str(out)]) == 2
    assert "budget: 0.005 -> 0.01" in capsys.readouterr().err


def test_bench_quant_judges_the_torchvision_targets() -> None:
    tool = load_tool("bench_quant")

    def file(fmt: str, mode: str, p50: float) -> dict:
        return {"file": f"x/{fmt}-{mode}", "format": fmt, "runtime": tool.RUNTIME_OF[fmt], "mode": mode,
                "scheme": "qdq-u8s8-per-channel" if fmt == "onnx" and mode != "fp32" else mode, "size_bytes": 1,
                "latency": {"1": {"p50_ms": p50}}}

    report = {"settings": {"threads": [1], "formats": ["onnx", "tflite"], "budget": 0.005}, "models": {
        "mobilenet_v2": {"random_init": True, "files": {
            "onnx:fp32": file("onnx", "fp32", 10.0), "onnx:int8-static": file("onnx", "int8-static", 6.0),
            "tflite:fp32": file("tflite", "fp32", 8.0), "tflite:int8-static": file("tflite", "int8-static", 10.0)}},
        "resnet18": {"random_init": True, "files": {
            "onnx:fp32": file("onnx", "fp32", 30.0), "onnx:int8-static": file("onnx", "int8-static", 20.0)}}}}
    tool.derive(report)
    targets = {t["target"]: t for t in tool.judge(report)}
    assert targets["ONNX Runtime int8 (scheme auto) >= 1.45x fp32 on MobileNetV2, 1 thread"]["met"] is True
    assert targets["ONNX Runtime int8 (scheme auto) >= 1.9x fp32 on ResNet-18, 1 thread"]["met"] is False
    lite = targets["LiteRT full int8 vs fp32 on MobileNetV2: reported as measured (no target on this host)"]
    assert lite["met"] is None and "0.80x at 1 thread(s)" in lite["figures"]


def test_bench_quant_refuses_bad_arguments(capsys) -> None:
    tool = load_tool("bench_quant")
    for argv, fragment in ((["--models", "demo,resnet50"], "--models resnet50: choose from demo, demo_pruned"),
                           (["--models", "demo_pruned"], "demo_pruned needs demo too"),
                           (["--formats", "onnx,coreml"], "--formats coreml: choose from onnx, tflite"),
                           (["--threads", "one"], "comma-separated integers"),
                           (["--trials", "0"], "--trials 0 must be >= 1"),
                           (["--budget", "5"], "--budget 5.0 must be a top-1 drop as a fraction in [0, 1)"),
                           (["--prune-target", "latency=0.5"], "fraction of the original's MACs or params")):
        with pytest.raises(SystemExit) as info:
            tool.parse_args(argv)
        assert info.value.code == 2 and fragment in capsys.readouterr().err
