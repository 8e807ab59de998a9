"""Smoke run of tools/bench_lowrank.py: ResNet-20, pruning vs spatial SVD vs both, tiny data, ONNX only; then its resume."""

from __future__ import annotations

import json

import pytest
import torch
from support import load_tool

ARGS = ["--quick", "--models", "resnet20", "--methods", "spatial-svd", "--combined", "spatial-svd", "--formats", "onnx",
        "--train-limit", "128", "--test-limit", "128", "--val-samples", "64", "--sensitivity", "error"]


@pytest.mark.slow
def test_bench_lowrank_smoke_and_resume(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    tool = load_tool("bench_lowrank")
    out = tmp_path / "bench"
    assert tool.main([*ARGS, "--out", str(out)]) == 0
    report = json.loads((out / "bench_lowrank.json").read_text())
    assert report["complete"] and report["settings"]["macs"] == 0.5
    variants = report["models"]["resnet20"]["variants"]
    assert set(variants) == {"original", "prune", "spatial-svd", "prune+spatial-svd"}
    for name in ("prune", "spatial-svd", "prune+spatial-svd"):
        v = variants[name]
        assert 0.4 < v["macs_ratio"] <= 0.5 + 1e-6, (name, v["macs_ratio"])
        assert 0 <= v["test_top1"] <= 1 and v["latency"]["onnxruntime:1"]["p50_ms"] > 0
    assert variants["spatial-svd"]["layers_factorized"] >= 1 and variants["prune+spatial-svd"]["prune_macs_ratio"] <= 0.7
    md = (out / "bench_lowrank.md").read_text()
    assert "host CPU, not a phone" in md and "| spatial-svd | x0.4" in md and "AIMET" in md
    assert any("AIMET's ResNet-18" in t["target"] for t in report["targets"])
    # A second run reuses every fine-tuned variant and only measures again.
    capsys.readouterr()
    assert tool.main([*ARGS, "--out", str(out)]) == 0
    assert "fine-tuning" not in capsys.readouterr().err
    again = json.loads((out / "bench_lowrank.json").read_text())
    assert again["models"]["resnet20"]["variants"]["spatial-svd"]["test_top1"] == variants["spatial-svd"]["test_top1"]


def test_bench_lowrank_refuses_bad_arguments(capsys) -> None:
    tool = load_tool("bench_lowrank")
    for argv, fragment in ((["--models", "vgg"], "'vgg' is not one of demo, resnet20"),
                           (["--methods", "qr"], "'qr' is not one of svd, spatial-svd, tucker2, cp"),
                           (["--macs", "0.8"], "must satisfy 0 < macs < prune-part < 1")):
        with pytest.raises(SystemExit) as info:
            tool.parse_args(argv)
        assert info.value.code == 2 and fragment in capsys.readouterr().err
