"""End to end: `run_compress` on a small zoo model writes a complete, verifiable bundle."""

import json
import shutil

import pytest
from support import zoo_checkpoint
import yaml

from edgecompress.errors import UserError
from edgecompress.export.bundle import verify_bundle
from edgecompress.graph import analyze
from edgecompress.models.loading import load_model
from edgecompress.pipeline import recipe_from_dict, run_compress

SMALL = {
    "name": "tiny",
    "seed": 0,
    "evaluate": {"split": "test", "max_samples": 128, "batch_size": 64},
    "export": {"formats": ["onnx", "tflite"], "parity_samples": 8},
    "measure": {"threads": [1], "runs": 5, "warmup": 1, "trials": 2},
}
ARCH = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width_mult": 0.5}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return zoo_checkpoint(tmp_path_factory.mktemp("ckpt"), "resnet20", **ARCH)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("compress") / "bundle"
    report = run_compress(checkpoint, recipe_from_dict(SMALL), device="host", out=out)
    return out, report


def test_bundle_is_complete_and_verifies(bundle, tmp_path):
    out, report = bundle
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "model.onnx", "model.pt", "model.tflite", "recipe.yaml", "report.json", "report.md"]
    assert verify_bundle(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert manifest["seed"] == 0 and manifest["device"]["fingerprint"]["id"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["measure"]["runs"] == 5
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "model.onnx").write_bytes(b"tampered")
    (copy / "report.md").unlink()
    assert verify_bundle(copy) == ["model.onnx: content differs from the manifest", "report.md: missing"]


def test_report_figures_are_consistent(bundle, checkpoint):
    out, report = bundle
    assert json.loads((out / "report.json").read_text())["schema"] == "edgecompress.report/1"
    before = report["variants"]["before"]
    model = load_model(report["model"]["spec"]).model
    cost = analyze(model, (1, 28, 28))
    assert before["params"] == cost.total_params and before["macs"] == cost.total_macs
    assert before["accuracy"]["n"] == 128 and 0.0 <= before["accuracy"]["top1"] <= 1.0
    for fmt in ("onnx", "tflite"):
        art = before["artifacts"][fmt]
        assert art["parity"]["passed"] and art["parity"]["top1_agreement"] == 1.0
        assert art["size_bytes"] == (out / art["file"]).stat().st_size
        # the file's own accuracy agrees with PyTorch's on these 128 images to within one image
        assert abs(art["accuracy"]["top1"] - before["accuracy"]["top1"]) <= 1 / 128
        (lat,) = art["latency"]
        assert lat["threads"] == 1 and lat["trials"] == 2 and len(lat["trial_p50s_ms"]) == 2
        assert 0 < lat["p50_ms"] <= lat["p90_ms"]
    assert report["steps_applied"] == [] and report["variants"]["after"] == before
    md = (out / "report.md").read_text()
    assert "| MACs |" in md and "host CPU" in md


def test_existing_bundle_is_not_overwritten(bundle, checkpoint):
    out, _ = bundle
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="--force"):
        run_compress(checkpoint, recipe_from_dict(SMALL), out=out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_device_or_data_writes_nothing(tmp_path, checkpoint):
    out = tmp_path / "b"
    with pytest.raises(UserError, match="phone9"):
        run_compress(checkpoint, recipe_from_dict(SMALL), device="phone9", out=out)
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        run_compress(checkpoint, recipe_from_dict(SMALL), out=out, data_dir=tmp_path / "nodata")
    assert list(tmp_path.iterdir()) == []
