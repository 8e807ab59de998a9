"""Smoke run of tools/bench_search.py: AMC and uniform, 3 candidates each, tiny data; then its resume."""

from __future__ import annotations

import json

import pytest
import torch
from support import load_tool

# latency=0.8, not the benchmark's 0.5: three candidates must land within the budget even on a loaded machine.
ARGS = ["--target", "latency=0.8", "--strategies", "amc,uniform", "--episodes", "3", "--runtime", "onnxruntime", "--val-samples", "100",
        "--train-limit", "128", "--test-limit", "128", "--trials", "1", "--runs", "5", "--measure-threads", "1", "--formats", "onnx"]


@pytest.mark.slow
def test_bench_search_smoke_and_resume(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    tool = load_tool("bench_search")
    out = tmp_path / "bench"
    assert tool.main([*ARGS, "--out", str(out)]) == 0
    report = json.loads((out / "bench_search.json").read_text())
    assert report["complete"] and set(report["searches"]) == {"amc", "uniform", "amc_macs"}
    amc, macs = report["searches"]["amc"], report["searches"]["amc_macs"]
    assert amc["episodes"] == 3 and amc["best"]["latency_ms"] > 0
    # AMC-for-MACs gets the MACs the latency-searched AMC ended with, and no latency in its loop.
    assert macs["budget"] == f"macs={amc['macs_ratio'] * (1 + 1e-6):.6f}" and macs["latency_source"] is None
    assert macs["best"]["macs"] <= amc["best"]["macs"] * (1 + 1e-6)
    # Every candidate is either timed or served by the run's own latency cache.
    cache = amc["latency_cache"]
    assert cache["hits"] + cache["misses"] + cache["reused"] == 3
    for name in ("original", "amc", "uniform", "amc_macs"):
        lat = report["latency"][name]
        assert set(lat) == {"onnxruntime:1"} and all(v["p50_ms"] > 0 for v in lat.values())
        assert 0 <= report["finetuned"][name]["test_top1"] <= 1
    names = [t["target"] for t in report["targets"]]
    assert "AMC (measured-latency reward) more accurate than uniform at the same budget" in names
    assert "AMC targeted at latency is faster than AMC targeted at MACs (same MACs)" in names
    assert sum(n.startswith("search ") for n in names) == 3
    md = (out / "bench_search.md").read_text()
    assert "| amc | `latency=0.8` | 3 |" in md and "host CPU, not a phone" in md and "## Targets" in md
    for name in ("amc", "uniform", "amc_macs"):
        assert (out / name / "search.png").is_file()
    # A second run resumes every search from its checkpoint and fine-tuning from its last epoch.
    capsys.readouterr()
    assert tool.main([*ARGS, "--out", str(out)]) == 0
    again = json.loads((out / "bench_search.json").read_text())
    assert all(s.get("resumed") for s in again["searches"].values())
    assert again["searches"]["amc"]["best"] == amc["best"]


def test_bench_search_refuses_bad_arguments(capsys) -> None:
    tool = load_tool("bench_search")
    for argv, fragment in ((["--strategies", "amc,ppo"], "choose from amc, uniform, random, evolution"),
                           (["--episodes", "0"], "--episodes 0 must be >= 1"),
                           (["--measure-threads", "one"], "comma-separated integers")):
        with pytest.raises(SystemExit) as info:
            tool.parse_args(argv)
        assert info.value.code == 2 and fragment in capsys.readouterr().err
