"""`edgecompress factorize` and the recipe step `factorize` (edgecompress/lowrank/steps.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from support import zoo_checkpoint

from edgecompress.graph import analyze
from edgecompress.lowrank import LowRank
from edgecompress.models.loading import load_model, save_checkpoint
from edgecompress.pipeline import recipe_from_dict, run_compress

torch.set_num_threads(1)
ARCH = {"num_classes": 10, "in_channels": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return zoo_checkpoint(tmp_path_factory.mktemp("ckpt"), "resnet20", **ARCH)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True, timeout=600)


def test_checkpoint_of_a_factorized_model_reloads_to_the_same_outputs(tmp_path):
    from edgecompress.lowrank import LowRankConfig, factorize_
    from edgecompress.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", **ARCH).eval()
    factorize_(model, LowRankConfig(method="cp", rank=0.25), input_shape=(1, 28, 28))
    save_checkpoint(model, tmp_path / "m.pt", arch_spec="zoo:resnet20", arch_kwargs=ARCH, input_shape=(1, 28, 28))
    loaded = load_model(str(tmp_path / "m.pt")).model
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert {n for n, m in loaded.named_modules() if isinstance(m, LowRank)} == \
        {n for n, m in model.named_modules() if isinstance(m, LowRank)}


def test_cli_factorizes_times_each_layer_and_writes_a_loadable_model(tmp_path, checkpoint):
    out = tmp_path / "f"
    r = _cli("factorize", checkpoint, "--method", "spatial-svd", "--target", "macs=0.6", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "factorize (spatial-svd, macs=0.6" in r.stdout and f"written: {out}/model.pt" in r.stdout
    report = json.loads((out / "factorize.json").read_text())
    record = report["factorize"]
    assert record["latency_check"] == "onnxruntime" and record["achieved"] <= 0.6
    timed = [p for p in record["layers"] if p["latency_before_ms"] is not None]
    assert timed and all(p["latency_after_ms"] > 0 for p in timed)
    model = load_model(str(out / "model.pt")).model
    assert analyze(model, (1, 28, 28)).total_macs == record["macs_after"]


@pytest.mark.parametrize("args,fragment", [
    (["--rank", "0"], "rank = 0.0 must be a ratio of the full rank in (0, 1]"),
    (["--rank", "1.5"], "rank = 1.5 must be a ratio"),
    (["--method", "tuker2", "--rank", "0.5"], "did you mean tucker2"),
    (["--target", "macs=0.02", "--latency-check", "none"], "cannot be reached by factorization alone"),
    (["--target", "macs=0.5", "--latency-check", "tvm"], "latency_check = 'tvm' must be onnxruntime, litert or false"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, checkpoint, args, fragment):
    out = tmp_path / "f"
    r = _cli("factorize", checkpoint, *args, "--out", str(out))
    assert r.returncode == 2 and fragment in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".f*"))


@pytest.mark.slow
def test_prune_then_factorize_then_int8_in_one_recipe(tmp_path, checkpoint):
    recipe = recipe_from_dict({
        "name": "prune-factorize-int8", "seed": 0,
        "evaluate": {"split": "test", "max_samples": 256, "batch_size": 128},
        "export": {"formats": ["onnx", "tflite"], "parity_samples": 8},
        "measure": {"threads": [1], "runs": 5, "warmup": 1, "trials": 1},
        "steps": [
            {"prune": {"target": "macs=0.7"}},
            {"factorize": {"method": "spatial-svd", "target": "macs=0.7", "latency_check": False}},
            {"finetune": {"epochs": 1, "train_samples": 256, "batch_size": 64}},
            {"quantize": {"calib_batches": 2, "val_samples": 128}},
        ]})
    out = tmp_path / "bundle"
    report = run_compress(checkpoint, recipe, device="host", out=out)
    fac = report["steps"]["factorize"][0]
    assert fac["macs_ratio"] <= 0.7 and report["variants"]["after"]["macs"] == fac["macs_after"]
    assert report["variants"]["after"]["macs"] <= 0.7 * 0.7 * report["variants"]["before"]["macs"] * 1.01
    for fmt in ("onnx", "tflite"):
        assert report["variants"]["after"]["artifacts"][fmt]["parity"]["passed"]
    assert report["variants"]["int8"]["quantized"]["mode"] == "int8-static"
    assert set(report["variants"]["int8"]["artifacts"]) == {"onnx", "tflite"}
    md = (out / "report.md").read_text()
    assert "## Step factorize #1: spatial-svd, macs=0.7" in md and "| `features.1.conv1.conv` | Conv2d 3x3 |" in md
    reloaded = load_model(str(out / "model.pt")).model
    assert analyze(reloaded, (1, 28, 28)).total_macs == report["variants"]["after"]["macs"]
