"""Smoke test of tools/bench_prune.py: the demo model, quick mode, tiny data, one thread count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import load_tool

MACS_TOLERANCE = 0.005  # bisection and rounding land at or just under the budget


@pytest.mark.slow
def test_bench_prune_demo_quick(tmp_path, capsys):
    pytest.importorskip("torch_pruning")
    from edgecompress.data.fashion_mnist import resolve_data_dir
    from edgecompress.errors import UserError

    try:
        resolve_data_dir()
    except UserError as e:
        pytest.skip(str(e))
    torch.set_num_threads(1)
    out = tmp_path / "bench"
    argv = ["--models", "demo", "--quick", "--out", str(out), "--threads", "1", "--trials", "1", "--runs", "20",
            "--train-limit", "256", "--val-limit", "200", "--test-limit", "500", "--progress", "never"]
    tool = load_tool("bench_prune")
    assert tool.main(argv) == 0

    report = json.loads((out / "bench_prune.json").read_text())
    md = (out / "bench_prune.md").read_text()
    assert report["complete"] is True and report["settings"]["quick"] is True
    assert report["settings"]["epochs"] == 1 and report["settings"]["threads"] == [1]
    assert report["versions"]["torch-pruning"] and report["host"]["id"]
    assert "--quick" in report["command"]
    demo = report["models"]["demo"]
    assert demo["input_shape"] == [1, 28, 28]
    assert set(demo["variants"]) == {"dense", "ours", "tp", "tp_rounded"}
    assert demo["finetune"]["train_images"] == 256 and demo["finetune"]["test_images"] == 500

    variants = demo["variants"]
    assert variants["dense"]["macs_ratio"] == 1.0
    for name in ("ours", "tp", "tp_rounded"):
        v = variants[name]
        assert 0.3 < v["macs_ratio"] <= 0.5 + MACS_TOLERANCE, (name, v["macs_ratio"])
        assert 0 < v["params_ratio"] < 1
        acc = v["accuracy"]
        assert 0 <= acc["test_top1_pruned"] <= 1 and 0 <= acc["test_top1_finetuned"] <= 1
        assert acc["dense_test_top1"] > 0.85  # the bundled demo model is trained
    # Both pruners that round leave no more odd widths than the dense model has (the demo's
    # 8-channel layers cannot become multiples of 16); Torch-Pruning's plain call leaves many.
    dense_odd = variants["dense"]["convs_out_not_multiple"]
    assert variants["ours"]["convs_out_not_multiple"] <= dense_odd
    assert variants["tp_rounded"]["convs_out_not_multiple"] <= dense_odd
    assert variants["tp"]["convs_out_not_multiple"] > dense_odd

    for name, v in variants.items():
        for fmt in ("onnx", "tflite"):
            artifact = Path(v["artifacts"][fmt]["path"])
            assert artifact.is_file() and artifact.stat().st_size == v["artifacts"][fmt]["size_bytes"]
            assert v["artifacts"][fmt]["parity"]["passed"]
        for runtime in ("onnxruntime", "litert"):
            latency = v["latency"][runtime]["1"]
            assert latency["p50_ms"] > 0 and latency["p90_ms"] >= latency["p50_ms"]
            assert latency["runs"] == 20 and latency["trials"] == 1
            assert v["speedup"][runtime]["1"] > 0
        if name == "dense":
            assert v["speedup"]["onnxruntime"]["1"] == 1.0

    assert "## demo" in md and "| tp_rounded |" in md and "top-1 fine-tuned" in md
    assert "| tp_rounded |" in capsys.readouterr().out


def test_bench_prune_rejects_bad_options(tmp_path, capsys):
    tool = load_tool("bench_prune")
    assert tool.main(["--models", "resnet19", "--out", str(tmp_path)]) == 2
    assert "resnet18" in capsys.readouterr().err  # the suggestion
    assert tool.main(["--models", "demo", "--macs", "1.5", "--out", str(tmp_path)]) == 2
    assert "--macs 1.5" in capsys.readouterr().err
    assert tool.main(["--models", "demo", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "bench_prune.json").exists()
