"""tools/coverage_torchvision.py: a two-model sweep end to end, plus timeout/resume bookkeeping."""

from __future__ import annotations

import csv
import json

import pytest
from support import load_tool



@pytest.fixture(scope="module")
def cov():
    return load_tool("coverage_torchvision")


def test_two_models_pruned_and_exported_to_onnx(cov, tmp_path):
    out = tmp_path / "cov"
    argv = ["--models", "squeezenet1_1,mobilenet_v3_small", "--libs", "ours", "--formats", "onnx",
            "--timeout", "120", "--out", str(out), "--progress", "never"]
    assert cov.main(argv) == 0

    doc = json.loads((out / "coverage.json").read_text())
    assert doc["settings"]["formats"] == ["onnx"] and doc["environment"]["timeout_s"] == 120
    assert doc["environment"]["versions"]["torch"] and doc["environment"]["host_cpu"]
    assert [(r["model"], r["lib"]) for r in doc["records"]] == [("mobilenet_v3_small", "ours"), ("squeezenet1_1", "ours")]
    for r in doc["records"]:
        assert {k: v["status"] for k, v in r["stages"].items()} == {
            "build": "ok", "prune": "ok", "forward": "ok", "macs": "ok", "onnx": "ok"}
        assert r["input_shape"] == [3, 224, 224]
        # 30% of channels off both sides of most convs: MACs near 0.7^2, never above 0.8
        assert 0.3 < r["macs_ratio"] < 0.8
        assert r["macs_after"] < r["macs_before"] and r["params_after"] < r["params_before"]
        assert r["groups_cut"] > 10 and r["groups_cut"] + r["groups_whole"] == r["groups_total"]
        assert r["exports"]["onnx"]["parity_passed"] and r["exports"]["onnx"]["size_bytes"] > 100_000

    rows = list(csv.DictReader((out / "coverage.csv").open()))
    assert len(rows) == 2
    for row in rows:
        assert (row["prune"], row["forward"], row["macs"], row["onnx"]) == ("ok", "ok", "ok", "ok")
        assert float(row["macs_ratio"]) < 1 and row["error"] == ""

    md = (out / "coverage.md").read_text()
    assert "random weights" in md
    assert "| edgecompress | 2 | 2/2 | 2/2 | 2/2 | 2/2 |" in md
    assert "| `squeezenet1_1` | 224x224 | ok | ok | 0." in md
    assert not (out / ".work").exists()  # scratch exports removed

    # resume skips both pairs (nothing to run) and keeps the records
    assert cov.main([*argv, "--resume"]) == 0
    assert len(json.loads((out / "coverage.json").read_text())["records"]) == 2
    # without --resume or --force an existing sweep is not overwritten
    assert cov.main(argv) == 2


def test_timeout_marks_the_running_stage_and_skips_the_rest(cov):
    partial = {"model": "m", "lib": "tp", "stages": {"build": {"status": "ok"}, "prune": {"status": "ok"}}}
    r = cov.close_record(partial, "m", "tp", ["onnx", "tflite"], "timeout", "worker killed after 5 s")
    assert {k: v["status"] for k, v in r["stages"].items()} == {
        "build": "ok", "prune": "ok", "forward": "timeout", "macs": "skipped", "onnx": "skipped", "tflite": "skipped"}
    died = cov.close_record(None, "m", "ours", ["onnx"], "fail", "worker died: signal 9")
    assert died["stages"]["build"] == {"status": "fail", "error": "worker died: signal 9"}

    ok = {name: {"status": "ok"} for name in cov.stages_for(["onnx", "tflite"])}
    good = {"model": "a", "lib": "tp", "stages": ok, "macs_ratio": 0.5}
    onnx_only = {"model": "b", "lib": "tp", "stages": {**ok, "tflite": {"status": "fail", "error": "x"}}, "macs_ratio": 0.6}
    [t] = cov.totals([good, onnx_only, r], ["tp"], ["onnx", "tflite"])
    assert t == {"lib": "tp", "models": 3, "pruned": 2, "ran": 2, "onnx": 2, "tflite": 1, "all_formats": 1,
                 "median_macs_ratio": 0.6}
