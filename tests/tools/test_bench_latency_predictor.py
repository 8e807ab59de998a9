"""Smoke run of tools/bench_latency_predictor.py: one architecture, a 7-block table, 5 model specs."""

from __future__ import annotations

import json

import torch
from support import load_tool

GRID = {"name": "tiny", "families": [
    {"op": "conv", "k": [3], "stride": [1], "channels": [8, 16], "res": [8], "act": ["relu"]},
    {"op": "conv", "k": [1], "stride": [2], "channels": [8], "cout_ratio": [2], "res": [8], "act": ["none"]},
    {"op": "add", "channels": [8, 16], "res": [8], "act": ["relu"]},
    {"op": "gap", "channels": [16], "res": [4]},
    {"op": "linear", "channels": [16], "cout": [10]},
]}


def test_bench_latency_predictor_smoke(tmp_path) -> None:
    torch.set_num_threads(1)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--archs", "resnet20", "--grid", str(grid), "--input-size", "16",
            "--fit-ratios", "0.2,0.6", "--random-fit-per-arch", "0", "--test-ratios", "0.6",
            "--random-per-arch", "2", "--runs", "10", "--warmup", "2", "--trials", "1", "--lut-runs", "5",
            "--progress", "never"]
    tool = load_tool("bench_latency_predictor")
    assert tool.main(argv) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["lut"]["entries"] == 7
    assert report["host"]["id"] and report["versions"]["onnxruntime"] and report["settings"]["threads"] == 1
    # the test ratio equals a fit ratio: the same network, so it is dropped, not scored
    assert report["not_measured"]["resnet20-test-r0.6"] == "resnet20-fit-r0.6"
    fit_keys = {m["arch_key"] for m in report["fit_models"]}
    assert len(fit_keys) == len(report["fit_models"]) == 2
    models = report["models"]
    assert 1 <= len(models) <= 2 and all(m["id"].startswith("resnet20-test-random") for m in models)
    for m in models:
        assert m["measured_ms"] > 0 and m["predictor_ms"] > 0 and m["macs_baseline_ms"] > 0 and m["macs"] > 0
        assert m["predictor_err"] == (m["predictor_ms"] - m["measured_ms"]) / m["measured_ms"]
    summary = report["results"]["summary"]
    for method in ("predictor", "predictor_linear", "lut_sum", "macs_baseline"):
        x = summary[method]
        assert x["n"] == len(models) and 0 <= x["within10"] <= 1 and x["rmse_ms"] >= 0 and x["mape"] >= 0
    md = (out / "report.md").read_text()
    assert f"| {models[0]['id']} | resnet20 | random per-group" in md and report["host"]["id"] in md
    assert (out / "predictor.json").is_file() and (out / "lut.json").is_file()

    # a second run without --resume refuses the folder; with it, nothing is measured again
    assert tool.main(argv) == 2
    before = json.loads((out / "models.json").read_text())
    assert tool.main([*argv, "--resume"]) == 0
    after = json.loads((out / "models.json").read_text())
    assert after == before
