"""The `quantize` recipe step (edgecompress/quantize/steps.py): validation, the plan it records, QAT, apply_plan."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.export import export_model
from edgecompress.export.runtimes import run_onnx, run_tflite
from edgecompress.pipeline.steps import StepContext
from edgecompress.quantize.api import apply_plan
from edgecompress.quantize.steps import PLAN_KEY, _check_order, _validate, plan_from_records, quantize_params, quantize_step

SHAPE = (1, 28, 28)



def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def _ctx(tmp_path: Path, model: nn.Module, seed: int = 0) -> StepContext:
    g = torch.Generator().manual_seed(0)
    split = lambda n: TensorDataset(torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    splits = SimpleNamespace(train=split(400), val=split(64), test=split(64))
    return StepContext(input_shape=SHAPE, seed=seed, splits=splits, device=None, work_dir=tmp_path / "work",
                       original=copy.deepcopy(model))


@pytest.mark.parametrize("params,match", [
    ({"mdoe": "int8-static"}, r"unknown quantize parameter 'mdoe' \(did you mean mode"),
    ({"mode": "int4"}, r"mode 'int4' must be one of int8-static, int8-dynamic, fp16, qat"),
    ({"mode": "int8-statc"}, r"\(did you mean int8-static"),
    ({"method": "minmx"}, r"method 'minmx' must be one of .*\(did you mean minmax"),
    ({"calib_batches": 0}, r"calib_batches = 0 must be an integer >= 1"),
    ({"calib_batches": 2.5}, r"calib_batches = 2.5"),
    ({"formats": ["onnx", "tflit"]}, r"formats: 'tflit' is not a format.*\(did you mean tflite"),
    ({"formats": "onnx"}, r"formats = 'onnx' must be a list"),
    ({"budget": -0.1}, r"budget -0.1 must be"),
    ({"scheme": "qdq-u8s8-per-chanel"}, r"scheme 'qdq-u8s8-per-chanel' does not fit .*\(did you mean qdq-u8s8-per-channel"),
    ({"mode": "int8-dynamic", "scheme": "qdq-u8s8-per-channel"}, r"does not fit mode 'int8-dynamic'; use auto, dynamic-range-int8"),
    ({"mode": "fp16", "formats": ["onnx"]}, r"fp16 is TFLite-only"),
    ({"method": "entropy"}, r"'entropy' is ONNX-only .* or formats \[onnx\]"),
    ({"qat": {"epochs": 1}}, r"qat settings are for mode qat, not 'int8-static'"),
    ({"val_samples": 0}, r"val_samples = 0 must be a positive integer"),
    ({"mode": "int8-dynamic", "scheme": "profile"}, r"scheme 'profile' does not fit mode 'int8-dynamic'"),
    ({"mode": "qat", "qat": {"epoch": 2}}, r"unknown quantize.qat parameter 'epoch' \(did you mean epochs"),
    ({"mode": "qat", "qat": {"lr": 0}}, r"qat: TrainConfig.lr = 0 must be > 0"),
    ({"mode": "qat", "qat": {"kd": {"alpha": 2}}}, r"qat.kd: DistillConfig.alpha = 2"),
    ({"mode": "qat", "qat": {"train_samples": 0}}, r"qat.train_samples = 0"),
])
def test_validator_names_the_bad_parameter(params, match):
    with pytest.raises(ValueError, match=match):
        _validate(params)


def test_defaults_and_accepted_parameters():
    p = quantize_params({})
    assert p == {"mode": "int8-static", "method": "minmax", "calib_batches": 8, "formats": None, "budget": 0.005,
                 "scheme": "auto", "val_samples": 2000, "qat": None}
    assert quantize_params({"method": "entropy", "formats": ["onnx"]})["formats"] == ["onnx"]
    assert quantize_params({"mode": "fp16", "formats": ["tflite", "onnx"]})["formats"] == ["tflite", "onnx"]
    qat = quantize_params({"mode": "qat", "qat": {"epochs": 2, "kd": False}})["qat"]
    assert qat == {"epochs": 2, "lr": 3e-4, "batch_size": 128, "kd": False, "train_samples": None}


def test_quantize_must_be_the_last_step_and_only_one():
    _check_order([("prune", {}), ("finetune", {}), ("quantize", {})])
    _check_order([("prune", {})])
    with pytest.raises(ValueError, match=r"steps\[0\] quantize must be the last step \('finetune' comes after it\)"):
        _check_order([("quantize", {}), ("finetune", {})])
    with pytest.raises(ValueError, match=r"steps\[1\] quantize: only one quantize step"):
        _check_order([("quantize", {}), ("quantize", {})])


def test_post_training_step_plans_and_leaves_the_model_alone(tmp_path):
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = _ctx(tmp_path, model, seed=3)
    params = {"mode": "int8-static", "calib_batches": 3, "budget": 0.01, "formats": ["onnx"]}
    assert quantize_step(model, params, ctx) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    plan = plan_from_records(ctx.records)
    assert plan["mode"] == "int8-static" and plan["formats"] == ["onnx"] and plan["budget"] == 0.01
    assert plan["scheme"] == "auto" and plan["method"] == "minmax" and plan["qat_model"] is None and plan["seed"] == 3
    assert plan["calibration"].shape == (96, *SHAPE)
    # the images come from the training split, drawn with the run's seed
    train_x = ctx.splits.train.tensors[0]
    assert all(any(torch.equal(img, t) for t in train_x) for img in plan["calibration"][:5])
    again = _ctx(tmp_path, model, seed=3)
    quantize_step(model, params, again)
    assert torch.equal(plan_from_records(again.records)["calibration"], plan["calibration"])
    # the public record is JSON-able; the plan is private ("_" key)
    assert PLAN_KEY.startswith("_") and ctx.records["quantize"][0]["calibration_images"] == 96
    assert ctx.notes[0].startswith("quantize (int8-static, minmax calibration on 96 training images, scheme auto")
    assert plan_from_records({}) is None and plan_from_records(None) is None


def test_plan_applied_to_the_exported_files(tmp_path):
    model = _net()
    ctx = _ctx(tmp_path, model)
    quantize_step(model, {"scheme": "qdq-u8s8-per-channel", "calib_batches": 4, "formats": ["onnx"]}, ctx)
    plan = plan_from_records(ctx.records)
    fp32 = {r.format: r.path for r in export_model(model, torch.zeros(1, *SHAPE), tmp_path / "bundle", formats=["onnx"])}
    entries = apply_plan(plan, model, fp32, tmp_path / "bundle" / "int8", input_shape=SHAPE)
    entry = entries["onnx"]
    assert Path(entry["path"]) == tmp_path / "bundle" / "int8" / "model_int8.onnx"
    assert entry["scheme"] == "qdq-u8s8-per-channel" and entry["calibration"]["images"] == 128
    x = plan["calibration"][:16].numpy()
    ref, got = run_onnx(fp32["onnx"], x), run_onnx(entry["path"], x)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max() + 1e-3


def test_qat_step_trains_a_qat_model_and_the_plan_exports_it(tmp_path):
    from edgecompress.quantize.qat import QATModel

    model = _net()
    ctx = _ctx(tmp_path, model)
    params = {"mode": "qat", "calib_batches": 1, "qat": {"epochs": 1, "train_samples": 64, "batch_size": 32,
                                                         "kd": {"temperature": 2.0, "alpha": 0.5}}}
    assert quantize_step(model, params, ctx) is model
    plan = plan_from_records(ctx.records)
    assert isinstance(plan["qat_model"], QATModel) and not plan["qat_model"].training
    record = ctx.records["quantize"][0]["qat"]
    assert record["train"]["epochs"] == 1 and record["distill"] == {"temperature": 2.0, "alpha": 0.5}
    assert record["train_images"] == 64
    assert (tmp_path / "work" / "qat-1").is_dir()  # resumable checkpoints live in the step's work dir

    entries = apply_plan(plan, model, {"onnx": None, "tflite": None}, tmp_path / "int8", input_shape=SHAPE)
    assert entries["onnx"]["mode"] == entries["tflite"]["mode"] == "qat"
    assert entries["tflite"]["scheme"] == "full-int8" and entries["onnx"]["scheme"] == "qdq-s8s8-per-channel"
    x = plan["calibration"][:8].numpy()
    with torch.no_grad():
        ref = plan["qat_model"](torch.from_numpy(x)).numpy()
    for entry, run in ((entries["onnx"], run_onnx), (entries["tflite"], run_tflite)):
        assert Path(entry["path"]).stat().st_size == entry["size_bytes"]
        out = run(entry["path"], x)
        assert out.shape == (8, 10) and np.abs(out - ref).max() < 0.25 * np.abs(ref).max() + 0.05


def test_quantize_command_qat_mode(tmp_path, monkeypatch):
    """`edgecompress quantize --mode qat` end to end, on a 256-image training split to stay fast."""
    import edgecompress.data.fashion_mnist as fm
    from edgecompress.models.loading import LoadedModel
    from edgecompress.quantize.api import quantize_command

    real = fm.fashion_mnist_splits

    def small_splits(*args, **kwargs):
        splits = real(*args, **kwargs)
        return SimpleNamespace(train=torch.utils.data.Subset(splits.train, range(256)), val=None, test=splits.test)

    monkeypatch.setattr(fm, "fashion_mnist_splits", small_splits)
    out = tmp_path / "q"
    report = quantize_command(LoadedModel(_net(), "tiny", SHAPE, None), SHAPE, mode="qat", calib_batches=1, out=out,
                              test_samples=64, threads=(1,), runs=2, warmup=0, trials=1)
    assert sorted(p.name for p in out.iterdir()) == ["model_fp32.onnx", "model_fp32.tflite", "model_int8.onnx",
                                                     "model_int8.tflite", "quant.json"]
    for fmt in ("onnx", "tflite"):
        f = report["formats"][fmt]
        assert f["mode"] == "qat" and f["calibration"] == {"method": "qat"}
        assert f["quantized"]["size_bytes"] == (out / "model_int8").with_suffix(f".{fmt}").stat().st_size
    assert report["formats"]["tflite"]["size_ratio"] < 1.0  # a tiny net: file overhead dominates the int8 saving
    assert not (tmp_path / ".q.work").exists()  # QAT checkpoints are removed once the output is complete


def test_a_forked_baseline_is_not_quantized(tmp_path):
    model = _net()
    ctx = _ctx(tmp_path, model).fork("uniform", policy=None)
    assert quantize_step(model, {"calib_batches": 1}, ctx) is model
    assert plan_from_records(ctx.records) is None and "quantize" not in ctx.records
    assert ctx.notes == ["quantize: the uniform baseline is compared in fp32; only the main model is quantized"]


def _device_with_profile(**int8):
    from edgecompress.devices import LocalDevice
    from edgecompress.devices.profiles import DeviceProfile

    device = LocalDevice()
    device.profile = DeviceProfile(name="bench-board", connection="host", runtimes=("onnxruntime",), threads=(1,),
                                   int8=int8)
    return device


def test_scheme_profile_takes_the_profiles_answer_without_timing(tmp_path):
    model = _net()
    ctx = _ctx(tmp_path, model)
    quantize_step(model, {"scheme": "profile", "calib_batches": 4, "formats": ["onnx"]}, ctx)
    fp32 = {r.format: r.path for r in export_model(model, torch.zeros(1, *SHAPE), tmp_path / "fp32", formats=["onnx"])}
    device = _device_with_profile(onnx="qdq-s8s8-per-channel", why="measured on this board, 2026-12-01")
    entry = apply_plan(plan_from_records(ctx.records), model, fp32, tmp_path / "int8", input_shape=SHAPE,
                       device=device)["onnx"]
    assert entry["scheme"] == "qdq-s8s8-per-channel" and entry["scheme_choice"]["measured"] is None
    assert entry["scheme_choice"]["requested"] == "profile"
    assert entry["scheme_choice"]["reason"] == ("stated by the device profile 'bench-board' (not measured in this run): "
                                                "measured on this board, 2026-12-01")
    from edgecompress.errors import UserError

    with pytest.raises(UserError, match=r"'bench-board' \(\) states no int8 scheme for ONNX; add int8: \{onnx: SCHEME"):
        apply_plan(plan_from_records(ctx.records), model, fp32, tmp_path / "again", input_shape=SHAPE,
                   device=_device_with_profile(tflite="full-int8", why="published"))
    assert not (tmp_path / "again").exists()
