"""ONNX static/dynamic int8 (edgecompress/quantize/onnx_quant.py): every zoo model, the trained
demo model on real Fashion-MNIST, and the bad inputs a user can give."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgecompress.data.calibration import calibration_subset
from edgecompress.data.fashion_mnist import fashion_mnist_splits
from edgecompress.errors import UserError
from edgecompress.export.onnx_export import export_onnx
from edgecompress.export.runtimes import run_onnx
from edgecompress.models import create_model, list_models, load_model
from edgecompress.models.registry import _REGISTRY
from edgecompress.quantize.base import CalibrationWarning
from edgecompress.quantize.onnx_quant import (
    NOT_QUANTIZED,
    _float_layer_nodes,
    is_quantized_onnx,
    layer_label,
    onnx_layers,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)

torch.set_num_threads(1)
SHAPE = (1, 28, 28)


def smooth_noise(n: int, seed: int) -> torch.Tensor:
    """Random images with some spatial structure, at the scale of normalised pixels (std ~0.7)."""
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1) * 2


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return smooth_noise(100, seed=0)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> tuple:
    """A zoo mobilenet_v2 (random init) exported at 28 px."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28, width_mult=0.5).eval()
    path = tmp_path_factory.mktemp("small") / "mobilenet_v2.onnx"
    export_onnx(model, torch.zeros(1, *SHAPE), path)
    return path


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_quantizes_u8s8_and_stays_close_to_fp32(name, calib, tmp_path):
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, in_channels=1, input_size=28)
    if "width_mult" in inspect.signature(_REGISTRY[name]).parameters:
        kwargs["width_mult"] = 0.5
    fp32 = tmp_path / f"{name}.onnx"
    export_onnx(create_model(name, **kwargs).eval(), torch.zeros(1, *SHAPE), fp32)
    out = tmp_path / f"{name}.int8.onnx"

    art = quantize_onnx_static(fp32, calib, out, input_shape=SHAPE)

    assert (art.format, art.mode, art.scheme) == ("onnx", "int8-static", "qdq-u8s8-per-channel")
    assert art.path == out and art.size_bytes == out.stat().st_size
    assert art.calibration == {"method": "minmax", "images": 100, "batches": 4}
    assert art.float_layers == {}  # ORT quantizes every Conv/Gemm of the zoo
    assert is_quantized_onnx(out) and not is_quantized_onnx(fp32)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fp32.name, out.name])  # no temp file left
    x = smooth_noise(64, seed=1).numpy()
    f, q = run_onnx(fp32, x), run_onnx(out, x)
    # Measured 2026-11-23: relative L2 error 0.014-0.065 and max error 2-10% of the largest
    # fp32 logit over the 9 zoo models; the bounds leave about 2x margin.
    assert np.linalg.norm(q - f) / np.linalg.norm(f) < 0.12
    assert np.abs(q - f).max() / np.abs(f).max() < 0.2


def test_demo_model_int8_top1_on_real_fashion_mnist(tmp_path):
    loaded = load_model("models/demo/fmnist_mobilenetv2.pt")
    fp32 = tmp_path / "demo.onnx"
    export_onnx(loaded.model, torch.zeros(1, *loaded.input_shape), fp32)
    splits = fashion_mnist_splits(loaded.input_shape)
    calib = torch.stack([x for x, _ in calibration_subset(splits.train, 200, seed=0)])
    test = splits.test.__getitems__(range(500))
    x = torch.stack([a for a, _ in test]).numpy()
    y = np.array([b for _, b in test])

    results = {}
    for activations in ("u8", "s8"):
        out = tmp_path / f"demo.{activations}.onnx"
        art = quantize_onnx_static(fp32, calib, out, input_shape=loaded.input_shape, activations=activations)
        assert art.scheme == f"qdq-{activations}s8-per-channel" and art.float_layers == {}
        results[activations] = float((run_onnx(out, x).argmax(1) == y).mean())
    fp32_top1 = float((run_onnx(fp32, x).argmax(1) == y).mean())
    # Measured: fp32 92.8%, u8s8 92.6%, s8s8 93.0% on these 500 images (2000 images:
    # 92.95 / 92.65 / 92.65). Int8 must stay within 1.5 points.
    assert fp32_top1 > 0.90
    for top1 in results.values():
        assert abs(fp32_top1 - top1) <= 0.015
    assert (fp32.stat().st_size / (tmp_path / "demo.u8.onnx").stat().st_size) > 2.5  # int8 weights: ~3x smaller


def test_methods_and_exclusion_by_module_path(small_onnx, calib, tmp_path):
    layers = onnx_layers(small_onnx)
    assert layers[0] == "/features/features.0/conv/Conv" and layers[-1] == "/classifier/classifier.1/Gemm"
    assert len(layers) == 53
    art = quantize_onnx_static(small_onnx, calib, tmp_path / "p.onnx", input_shape=SHAPE, method="percentile",
                               percentile=99.9, exclude={"features.0.conv": "first layer: raw pixels"})
    assert art.calibration == {"method": "percentile", "images": 100, "batches": 4, "percentile": 99.9}
    assert art.float_layers == {"/features/features.0/conv/Conv": "first layer: raw pixels"}
    # The float layer reads the float input, not a dequantized one (else ORT quantizes its weights at load).
    model = onnx.load(tmp_path / "p.onnx")
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    first = next(n for n in model.graph.node if n.name == layers[0])
    assert first.input[0] == "input" and first.input[1] not in producer  # float input, float weight initializer
    art = quantize_onnx_static(small_onnx, calib, tmp_path / "e.onnx", input_shape=SHAPE, method="entropy",
                               activations="s8", exclude=["/classifier/classifier.1/Gemm"])
    assert art.scheme == "qdq-s8s8-per-channel"
    assert art.float_layers == {"/classifier/classifier.1/Gemm": "excluded on request"}
    x = smooth_noise(16, seed=2).numpy()
    assert run_onnx(tmp_path / "e.onnx", x).shape == (16, 10)


def test_layer_label_recovers_module_paths():
    assert layer_label("/features/features.1/conv/dw/conv/Conv") == "features.1.conv.dw.conv"
    assert layer_label("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert layer_label("/classifier/classifier.1/Gemm") == "classifier.1"
    assert layer_label("/conv1/Conv_1") == "conv1"
    assert layer_label("/Flatten") == "/Flatten"  # the root module: no path
    assert layer_label("node_Conv_0") == "node_Conv_0"


def test_float_layers_detected_from_output_graph():
    """A layer whose inputs carry no Q/DQ pair is reported float, whoever left it so."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "s"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["wq", "s"], ["w_dq"], name="dq_w"),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["h"], name="quantized"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="left_float"),
    ]
    graph = helper.make_graph(nodes, "g", [], [], [w])
    assert _float_layer_nodes(helper.make_model(graph)) == {"left_float": "MatMul"}
    assert "not quantized by onnxruntime" in NOT_QUANTIZED


def test_dynamic_quantization_of_a_linear_model(tmp_path):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10)).eval()
    fp32 = tmp_path / "mlp.onnx"
    export_onnx(mlp, torch.zeros(1, *SHAPE), fp32)
    assert [n.op_type for n in onnx.load(fp32).graph.node if n.name in onnx_layers(fp32)] == ["Gemm", "Gemm"]
    out = tmp_path / "mlp.dyn.onnx"

    art = quantize_onnx_dynamic(fp32, out)

    assert (art.mode, art.scheme, art.float_layers) == ("int8-dynamic", "dynamic-range-int8", {})
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("MatMulInteger") == 2 and "Gemm" not in ops  # nn.Linear exports as Gemm: rewritten
    assert out.stat().st_size < fp32.stat().st_size / 3
    x = smooth_noise(32, seed=3).numpy()
    f, q = run_onnx(fp32, x), run_onnx(out, x)
    assert np.linalg.norm(q - f) / np.linalg.norm(f) < 0.05  # measured 0.006
    with pytest.raises(UserError, match="op type 'Softmax'"):
        quantize_onnx_dynamic(fp32, tmp_path / "x.onnx", op_types=("Softmax",))


def test_dynamic_reports_convolutions_it_leaves_float(small_onnx, tmp_path):
    art = quantize_onnx_dynamic(small_onnx, tmp_path / "d.onnx")
    assert len(art.float_layers) == 52  # every Conv; the one Gemm is quantized
    assert all(reason.startswith("Conv is not in op_types") for reason in art.float_layers.values())


def test_already_quantized_input_is_refused(small_onnx, calib, tmp_path):
    out = tmp_path / "q.onnx"
    quantize_onnx_static(small_onnx, calib, out, input_shape=SHAPE)
    with pytest.raises(UserError, match="already quantized"):
        quantize_onnx_static(out, calib, tmp_path / "qq.onnx", input_shape=SHAPE)
    with pytest.raises(UserError, match="already quantized"):
        quantize_onnx_dynamic(out, tmp_path / "qd.onnx")


def test_bad_calibration_and_options_are_user_errors(small_onnx, calib, tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(UserError, match=r"shape \(3, 28, 28\)"):
        quantize_onnx_static(small_onnx, torch.zeros(100, 3, 28, 28), out, input_shape=SHAPE)
    with pytest.raises(UserError, match="dtype torch.uint8"):
        quantize_onnx_static(small_onnx, torch.zeros(100, *SHAPE, dtype=torch.uint8), out, input_shape=SHAPE)
    with pytest.raises(UserError, match="does not fit"):
        quantize_onnx_static(small_onnx, torch.zeros(100, 1, 32, 32), out, input_shape=(1, 32, 32))
    with pytest.raises(UserError, match="calibration method 'minmx'.*did you mean minmax"):
        quantize_onnx_static(small_onnx, calib, out, input_shape=SHAPE, method="minmx")
    with pytest.raises(UserError, match="activations 'int8'"):
        quantize_onnx_static(small_onnx, calib, out, input_shape=SHAPE, activations="int8")
    with pytest.raises(UserError, match="'features.99' is not a quantizable layer"):
        quantize_onnx_static(small_onnx, calib, out, input_shape=SHAPE, exclude=["features.99"])
    with pytest.raises(UserError, match="does not exist"):
        quantize_onnx_static(tmp_path / "missing.onnx", calib, out, input_shape=SHAPE)
    with pytest.raises(UserError, match="must end in .onnx"):
        quantize_onnx_static(small_onnx, calib, tmp_path / "q.tflite", input_shape=SHAPE)
    assert not out.exists()


def test_fewer_than_100_images_warns_but_quantizes(small_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.warns(CalibrationWarning, match="only 40 images"):
        art = quantize_onnx_static(small_onnx, smooth_noise(40, seed=4), out, input_shape=SHAPE)
    assert art.calibration["images"] == 40 and out.is_file()


def test_quantizing_leaves_the_root_logger_alone(small_onnx, calib, tmp_path):
    import logging

    before = list(logging.getLogger().handlers)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        quantize_onnx_static(small_onnx, calib, tmp_path / "q.onnx", input_shape=SHAPE)
    assert logging.getLogger().handlers == before
