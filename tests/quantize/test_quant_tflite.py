"""TFLite quantization (ai-edge-quantizer on litert-torch's fp32 file): every mode, real accuracy, bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.export.runtimes import run_tflite
from edgecompress.export.tflite_export import export_tflite
from edgecompress.models import create_model, list_models
from edgecompress.quantize.base import CalibrationWarning
from edgecompress.quantize.tflite_quant import is_quantized_tflite, quantize_tflite, tflite_op_types

SHAPE = (1, 28, 28)



class SmallNet(nn.Module):
    """Conv-BN-ReLU, depthwise conv, a residual add, 1x1 conv, pooling, linear: converts in ~2 s."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.mix = nn.Conv2d(8, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.stem(x)
        return self.fc(self.pool(self.mix(h + self.dw(h))).flatten(1))


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """SmallNet, its fp32 .tflite, and its full-int8 file made from the module (not the file)."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    folder = tmp_path_factory.mktemp("small")
    fp32 = export_tflite(model, torch.zeros(1, *SHAPE), folder / "fp32.tflite")
    int8 = quantize_tflite(model, _images(128, 1), folder / "int8.tflite", input_shape=SHAPE)
    return model, fp32, int8


# --- every zoo model, every mode ----------------------------------------------------------


def _trained_like(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """BatchNorm statistics from real images and logits scaled to std 4, as for a trained classifier."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(calib[:64])
        model.eval()
        last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        scale = 4.0 / float(model(calib[:64]).std())
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
    return model


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def _int8_weight_sensitivity(model: nn.Module, x: torch.Tensor, ref: np.ndarray) -> float:
    """How far PyTorch's own logits move (rel. max error) when every weight gets int8-rounding-sized
    noise: uniform in +-half a per-channel int8 step. Random-init nets amplify such noise
    a lot (MobileNets ~0.3-0.4, ResNets ~0.02), so closeness is judged against it."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            if p.dim() > 1:
                step = p.abs().amax(dim=tuple(range(1, p.dim())), keepdim=True) / 127
                p.add_((torch.rand(p.shape, generator=generator) - 0.5) * step)
        return _rel_err(noisy(x).numpy(), ref)


# Bounds as multiples of that sensitivity; measured worst case over the zoo (2026-11-23):
# full-int8 3.6x (resnet56), dynamic-range 1.3x (resnet20), fp16 0.11x (mobilenet_v1).
BOUND = {"int8-static": 6.0, "int8-dynamic": 2.5, "fp16": 0.25}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_quantizes_in_every_mode(name, tmp_path, fashion):
    calib, x = fashion["calib"][:128], fashion["test_x"][:32]
    torch.manual_seed(0)
    model = _trained_like(create_model(name, num_classes=10, in_channels=1, input_size=28, width_mult=0.5), calib)
    with torch.no_grad():
        ref = model(x).numpy()
    sensitivity = _int8_weight_sensitivity(model, x, ref)
    fp32 = export_tflite(model, torch.zeros(1, *SHAPE), tmp_path / "fp32.tflite")
    # int8 weights save up to 3 of every 4 weight bytes, less the per-channel scales and zero
    # points; the rest of the file (graph, biases, weightless ops) stays. A bound on the saving,
    # not a ratio of the file, fits every model: darts_net at width 0.5 (35k weights in many
    # small convs) saves 0.4 of its weight bytes and its int8 file is 0.8x of fp32.
    weight_bytes = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    int8_ceiling = fp32.stat().st_size - 0.3 * weight_bytes
    for mode in ("int8-static", "int8-dynamic", "fp16"):
        art = quantize_tflite(fp32, calib, tmp_path / f"{mode}.tflite", input_shape=SHAPE, mode=mode)
        y = run_tflite(art.path, x.numpy())
        assert np.isfinite(y).all()
        err = _rel_err(y, ref)
        assert err <= BOUND[mode] * sensitivity, f"{name} {mode}: rel err {err:.4f}, sensitivity {sensitivity:.4f}"
        ops = [op for op in tflite_op_types(art.path) if op.op not in ("QUANTIZE", "DEQUANTIZE")]
        # layers with weights (a MUL by a constant, e.g. hardswish's 1/6, keeps its scalar float)
        weighted = [op for op in ops if op.weights is not None
                    and op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")]
        assert weighted, f"{name}: no op with weights found"
        if mode == "int8-static":
            assert art.float_layers == {}, art.float_layers
            assert all(op.activation == "int8" for op in ops), [op for op in ops if op.activation != "int8"]
            assert art.size_bytes < int8_ceiling
        elif mode == "int8-dynamic":
            assert all(op.weights == "int8" and op.activation == "float32" for op in weighted)
            assert art.size_bytes < int8_ceiling
        else:
            assert all(op.weights == "float16" for op in weighted)
            # fp16 saves up to half of every weight byte (small tensors may stay fp32)
            assert fp32.stat().st_size - 0.5 * weight_bytes - 4096 < art.size_bytes < fp32.stat().st_size - 0.2 * weight_bytes


@pytest.fixture(scope="module")
def fashion():
    """Real Fashion-MNIST: 200 stratified calibration images (train) and 500 test images."""
    from edgecompress.data.calibration import calibration_subset
    from edgecompress.data.fashion_mnist import fashion_mnist_splits

    splits = fashion_mnist_splits(SHAPE)
    calib = torch.stack([splits.train[i][0] for i in calibration_subset(splits.train, 200, seed=0).indices])
    test = calibration_subset(splits.test, 500, seed=1).indices
    return {
        "calib": calib,
        "test_x": torch.stack([splits.test[i][0] for i in test]),
        "test_y": np.array([splits.test[i][1] for i in test]),
    }


# --- the demo model on real data ------------------------------------------------------


@pytest.mark.slow
def test_demo_model_accuracy_in_every_mode(tmp_path, fashion):
    from edgecompress.models.loading import load_model

    model = load_model("models/demo/fmnist_mobilenetv2.pt").model.eval()
    x, y = fashion["test_x"], fashion["test_y"]
    with torch.no_grad():
        fp32_top1 = float((model(x).argmax(1).numpy() == y).mean())
    assert fp32_top1 > 0.90  # 92.4 % on the whole test set
    fp32 = export_tflite(model, torch.zeros(1, *SHAPE), tmp_path / "fp32.tflite")
    # Measured on these 500 images: fp32 93.0 %; full-int8 minmax 92.8 %, percentile 93.0 %,
    # dynamic range 92.8 %, fp16 93.0 %. Allowed drops leave room for library updates.
    allowed = {("int8-static", "minmax"): 0.015, ("int8-static", "percentile"): 0.015,
               ("int8-dynamic", "minmax"): 0.01, ("fp16", "minmax"): 0.004}
    for (mode, method), drop in allowed.items():
        art = quantize_tflite(fp32, fashion["calib"], tmp_path / f"{mode}-{method}.tflite", input_shape=SHAPE,
                              mode=mode, method=method)
        top1 = float((run_tflite(art.path, x.numpy()).argmax(1) == y).mean())
        assert top1 >= fp32_top1 - drop, f"{mode}/{method}: top-1 {top1:.3f} vs fp32 {fp32_top1:.3f}"
        assert art.float_layers == {}
        if mode == "int8-static":
            assert art.calibration == {"method": method, "images": 200, "batches": 200,
                                       **({"percentile": 99.99} if method == "percentile" else {})}
            assert any("input int8" in n and "output int8" in n for n in art.notes), art.notes


# --- exclusion, reporting -------------------------------------------------------------


def test_full_int8_from_module_is_int8_end_to_end(small):
    model, fp32, art = small
    assert (art.format, art.mode, art.scheme) == ("tflite", "int8-static", "full-int8")
    assert art.size_bytes == art.path.stat().st_size
    assert art.float_layers == {}
    ops = tflite_op_types(art.path)
    assert {op.op for op in ops} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"}
    assert all(op.dtype == "int8" for op in ops), ops
    assert {op.layer for op in ops if op.op == "FULLY_CONNECTED"} == {"fc"}
    x = _images(16, 2)
    with torch.no_grad():
        ref = model(x).numpy()
    # Random-init SmallNet is well conditioned: int8 stays within 5 % of the largest logit.
    assert _rel_err(run_tflite(art.path, x.numpy()), ref) < 0.05


def test_exclude_keeps_the_layer_float_and_says_why(small, tmp_path):
    _, fp32, _ = small
    art = quantize_tflite(fp32, _images(128, 1), tmp_path / "q.tflite", input_shape=SHAPE, exclude=["fc"])
    assert list(art.float_layers) == ["fc"]
    assert "excluded" in art.float_layers["fc"]
    by_op = {op.op: op for op in tflite_op_types(art.path)}
    assert by_op["FULLY_CONNECTED"].dtype == "float32"
    assert by_op["CONV_2D"].dtype == by_op["DEPTHWISE_CONV_2D"].dtype == "int8"
    assert any("output float32" in n for n in art.notes)


def test_is_quantized_tflite_and_weight_dtypes(small, tmp_path):
    _, fp32, int8 = small
    assert not is_quantized_tflite(fp32)
    assert is_quantized_tflite(int8.path)
    dyn = quantize_tflite(fp32, None, tmp_path / "dyn.tflite", input_shape=SHAPE, mode="int8-dynamic")
    half = quantize_tflite(fp32, _images(8, 1), tmp_path / "fp16.tflite", input_shape=SHAPE, mode="fp16")
    assert (dyn.scheme, half.scheme) == ("dynamic-range-int8", "fp16")
    assert dyn.calibration == half.calibration == {}
    assert any("not used" in n for n in half.notes)
    for art, dtype in ((dyn, "int8-weights"), (half, "float16-weights")):
        assert is_quantized_tflite(art.path)
        conv = [op for op in tflite_op_types(art.path) if op.op == "CONV_2D"]
        assert [op.dtype for op in conv] == [dtype]


def test_percentile_clips_ranges_inside_minmax(small, tmp_path):
    _, fp32, _ = small
    calib = _images(128, 1)
    calib[0, 0, 0, 0] = 100.0  # one outlier pixel: minmax widens the input range to it, percentile does not
    scales = {}
    for method in ("minmax", "percentile"):
        art = quantize_tflite(fp32, calib, tmp_path / f"{method}.tflite", input_shape=SHAPE, method=method)
        from ai_edge_litert.interpreter import Interpreter

        (inp,) = Interpreter(model_path=str(art.path)).get_input_details()
        scales[method] = inp["quantization"][0]
    assert scales["percentile"] < 0.2 * scales["minmax"]


# --- bad input -------------------------------------------------------------------------


def test_wrong_calibration_shape_and_dtype(small, tmp_path):
    _, fp32, _ = small
    with pytest.raises(UserError, match=r"shape \(3, 28, 28\) do not match"):
        quantize_tflite(fp32, torch.randn(128, 3, 28, 28), tmp_path / "q.tflite", input_shape=SHAPE)
    with pytest.raises(UserError, match="must be floating point"):
        quantize_tflite(fp32, torch.zeros(128, *SHAPE, dtype=torch.uint8), tmp_path / "q.tflite", input_shape=SHAPE)
    with pytest.raises(UserError, match="needs calibration images"):
        quantize_tflite(fp32, None, tmp_path / "q.tflite", input_shape=SHAPE)
    with pytest.raises(UserError, match=r"takes inputs of shape \(1, 28, 28\), not \(1, 32, 32\)"):
        quantize_tflite(fp32, torch.randn(128, 1, 32, 32), tmp_path / "q.tflite", input_shape=(1, 32, 32))
    assert not (tmp_path / "q.tflite").exists()


def test_few_calibration_images_warn_but_work(small, tmp_path):
    _, fp32, _ = small
    with pytest.warns(CalibrationWarning, match="only 20 images"):
        art = quantize_tflite(fp32, [_images(10, 1), _images(10, 2)], tmp_path / "q.tflite", input_shape=SHAPE)
    assert art.calibration["images"] == 20
    assert art.path.is_file()


def test_already_quantized_inputs_are_refused(small, tmp_path):
    from torch.ao.quantization import FakeQuantize

    _, _, int8 = small
    with pytest.raises(UserError, match="already quantized"):
        quantize_tflite(int8.path, _images(128, 1), tmp_path / "q.tflite", input_shape=SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        faked = nn.Sequential(nn.Conv2d(1, 4, 3), FakeQuantize(), nn.Flatten())
    with pytest.raises(UserError, match=r"module '1' is FakeQuantize"):
        quantize_tflite(faked, _images(128, 1), tmp_path / "q.tflite", input_shape=SHAPE)
    assert not (tmp_path / "q.tflite").exists()


def test_bad_mode_method_and_layer_names(small, tmp_path):
    _, fp32, _ = small
    calib = _images(128, 1)
    with pytest.raises(UserError, match="entropy.*not available for TFLite.*minmax or percentile"):
        quantize_tflite(fp32, calib, tmp_path / "q.tflite", input_shape=SHAPE, method="entropy")
    with pytest.raises(UserError, match="did you mean minmax"):
        quantize_tflite(fp32, calib, tmp_path / "q.tflite", input_shape=SHAPE, method="minmaxx")
    with pytest.raises(UserError, match="did you mean int8-static"):
        quantize_tflite(fp32, calib, tmp_path / "q.tflite", input_shape=SHAPE, mode="int8_static")
    with pytest.raises(UserError, match="qat_finetune"):
        quantize_tflite(fp32, calib, tmp_path / "q.tflite", input_shape=SHAPE, mode="qat")
    with pytest.raises(UserError, match=r"'fcc' matches no op.*did you mean fc"):
        quantize_tflite(fp32, calib, tmp_path / "q.tflite", input_shape=SHAPE, exclude=["fcc"])
    assert not (tmp_path / "q.tflite").exists()
