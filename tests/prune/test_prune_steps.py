"""Pruning in the `compress` pipeline and the `edgecompress prune` command (edgecompress/prune/steps.py, api.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from support import zoo_checkpoint

from edgecompress.devices.local import host_round_to
from edgecompress.errors import UserError
from edgecompress.graph import analyze
from edgecompress.models.loading import load_model
from edgecompress.pipeline import recipe_from_dict, run_compress

torch.set_num_threads(1)

ARCH = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width_mult": 0.5}
BASE = {
    "name": "tiny-prune",
    "seed": 0,
    "evaluate": {"split": "test", "max_samples": 256, "batch_size": 128},
    "export": {"formats": ["onnx", "tflite"], "parity_samples": 8},
    "measure": {"threads": [1], "runs": 5, "warmup": 1, "trials": 1},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return zoo_checkpoint(tmp_path_factory.mktemp("ckpt"), "mobilenet_v2", **ARCH)


@pytest.mark.parametrize("steps,match", [
    ([{"prune": {"ratio": 1.5}}], r"steps\[0\] prune: PruneConfig.ratio = 1.5 must be in \[0, 1\)"),
    ([{"prune": {"target": "macs=0.5", "epochs": 2}}], r"steps\[0\] prune: unknown prune parameter 'epochs'"),
    ([{"finetune": {"epoch": 2}}], r"steps\[0\] finetune: unknown finetune parameter 'epoch' \(did you mean epochs"),
    ([{"finetune": {"kd": {"temperature": -1}}}], r"finetune: .*temperature"),
    ([{"sparsify": {"final_sparsity": 1.2}}], r"sparsify: .*final_sparsity"),
    ([{"slim": {"penalty": 0.1, "lr": -1}}], r"slim: TrainConfig.lr"),
])
def test_recipe_step_parameters_checked_when_read(steps, match) -> None:
    with pytest.raises(UserError, match=match):
        recipe_from_dict({**BASE, "steps": steps})


@pytest.mark.slow
def test_compress_prunes_finetunes_and_reloads(tmp_path, checkpoint) -> None:
    recipe = recipe_from_dict({**BASE, "steps": [
        {"prune": {"target": "macs=0.5"}},
        {"finetune": {"epochs": 1, "train_samples": 512, "batch_size": 64, "lr": 0.01}},
    ]})
    out = tmp_path / "bundle"
    report = run_compress(checkpoint, recipe, device="host", out=out)
    before, after = report["variants"]["before"], report["variants"]["after"]
    pruned = report["steps"]["prune"][0]
    assert pruned["macs_ratio"] <= 0.5 and after["macs"] == pruned["macs_after"] and before["macs"] == pruned["macs_before"]
    assert pruned["config"]["round_to"] == host_round_to()  # device_profiles/host.yaml says auto
    assert report["steps"]["finetune"][0]["distill"] == {"temperature": 4.0, "alpha": 0.9}
    assert len(report["steps"]["finetune"][0]["history"]["epochs"]) == 1
    assert any(n.startswith("prune (macs=0.5") for n in report["notes"])
    for fmt in ("onnx", "tflite"):
        art = after["artifacts"][fmt]
        assert art["parity"]["passed"] and 0 < art["gzip_bytes"] < art["size_bytes"]
        assert art["size_bytes"] < before["artifacts"][fmt]["size_bytes"] * 0.75
    md = (out / "report.md").read_text()
    assert "## Step prune #1: macs=0.5" in md and "| `features.0.conv` | 16 |" in md
    assert "## Step finetune #1" in md and "| 1 |" in md
    reloaded = load_model(str(out / "model.pt"))
    assert analyze(reloaded.model, (1, 28, 28)).total_macs == after["macs"]
    assert not (tmp_path / ".bundle.work").exists()  # step checkpoints are dropped once the bundle is complete


@pytest.mark.slow
def test_sparsify_step_reports_zeros_and_gzip(tmp_path, checkpoint) -> None:
    recipe = recipe_from_dict({**BASE, "export": {"formats": ["onnx"], "parity_samples": 8}, "steps": [
        {"sparsify": {"final_sparsity": 0.8, "frequency": 2, "epochs": 1, "train_samples": 256, "batch_size": 64,
                      "kd": False}},
    ]})
    report = run_compress(checkpoint, recipe, device="host", out=tmp_path / "b")
    sp = report["steps"]["sparsify"][0]["sparsity"]
    assert sp["sparsity"] == pytest.approx(0.8, abs=0.01)
    onnx_before = report["variants"]["before"]["artifacts"]["onnx"]
    onnx_after = report["variants"]["after"]["artifacts"]["onnx"]
    assert onnx_after["gzip_bytes"] < 0.6 * onnx_before["gzip_bytes"]
    assert abs(onnx_after["size_bytes"] - onnx_before["size_bytes"]) < 0.01 * onnx_before["size_bytes"]  # zeros stay
    assert any("do not run faster on unstructured zeros" in n for n in report["notes"])
    md = (tmp_path / "b" / "report.md").read_text()
    assert "gzip size, ONNX" in md and "## Step sparsify #1: 80.0% of" in md


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_prune_writes_a_smaller_model(tmp_path) -> None:
    out = tmp_path / "p"
    r = _cli("prune", "zoo:resnet20", "--input-size", "1,28,28", "--target", "macs=0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "MACs 31,021,952 ->" in r.stdout
    doc = json.loads((out / "prune.json").read_text())
    assert doc["prune"]["macs_ratio"] <= 0.5 and doc["prune"]["config"]["importance"] == "l2"
    model = load_model(str(out / "model.pt"))
    assert analyze(model.model, (1, 28, 28)).total_macs == doc["prune"]["macs_after"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


@pytest.mark.parametrize("args,match", [
    (["--ratio", "1.5"], "ratio = 1.5 must be in [0, 1)"),
    (["--target", "macs=0.001"], "cannot be reached"),
    (["--target", "flops=0.5"], "must be one of macs, params, latency"),
    (["--importance", "l3", "--ratio", "0.2"], "did you mean"),
])
def test_cli_prune_bad_input_exits_2_and_writes_nothing(tmp_path, args, match) -> None:
    out = tmp_path / "p"
    r = _cli("prune", "zoo:resnet20", "--input-size", "1,28,28", *args, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
