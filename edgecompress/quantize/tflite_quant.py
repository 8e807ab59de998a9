"""TFLite post-training quantization: full-integer int8, dynamic-range int8 and fp16.

The model is converted to an fp32 .tflite by litert-torch (`export.tflite_export`), then
ai-edge-quantizer (AEQ) rewrites that file:

- "int8-static" -> scheme "full-int8": int8 weights (per-channel symmetric, [-127, 127]),
  int8 activations (per-tensor asymmetric, ranges from the calibration images), int32
  biases. The file's input and output tensors are int8 too (a truly full-integer model,
  as an NPU/DSP wants it); their scale and zero point are in the file, and
  `export.runtimes.run_tflite` quantizes the float input and dequantizes the logits
  with them, so callers still pass normalised float images.
- "int8-dynamic" -> "dynamic-range-int8": int8 per-channel weights, float32 activations
  (the kernels quantize activations on the fly); float input and output. No calibration.
- "fp16" -> "fp16": weights stored as float16 and dequantized to float32 when the
  interpreter loads the file (half the size, fp32 speed on a CPU). No calibration.

Calibration methods: "minmax" (the global min and max of each tensor over all images;
AEQ's own default is a moving average of per-image ranges, replaced here so that
"minmax" means what it says) and "percentile" (each tensor's range clipped to its
0.01th..99.99th percentile, from a 2048-bin histogram over the min/max range in a
second pass). "entropy" is ONNX-only (onnxruntime's calibrator); asked for here it is
a UserError. `exclude` keeps layers (PyTorch module names) in float: AEQ is told not to
quantize the ops whose tensors carry that module path.

Why AEQ on the fp32 file rather than litert-torch's PT2E quantizer before conversion
(measured 2026-11-23 on models/demo/fmnist_mobilenetv2.pt, 1x28x28, Intel Xeon with
AVX-512 VNNI/AMX, ai-edge-litert 2.3.0 XNNPACK at 1 thread, p50 of 5 interleaved trials
x 200 runs; top-1 on 1000 stratified Fashion-MNIST test images, 200 calibration images):

    file                        top-1    p50 ms   size (bytes)   quantize time
    fp32 (litert-torch)         92.6 %   0.191    2,893,816      13 s (conversion)
    AEQ full-int8               92.5 %   0.177    1,076,544      2 s after fp32
    PT2E full-int8 (strict)     92.2 %   0.178    1,019,968      25 s
    AEQ dynamic-range int8      92.5 %   0.442      961,696      0.5 s after fp32
    PT2E dynamic-range int8     92.5 %   0.443      905,584      11 s
    AEQ fp16 weights            92.6 %   0.194    1,562,416      0.3 s after fp32

Same speed, AEQ as accurate or more, and PT2E had two traps: (1) a Dropout in the
model (identity in eval) sat between two int8 tensors of different scales and
litert-torch 0.10's static conversion dropped the requantization: top-1 fell to 51.6 %
(fixed only by deleting dropout before export); (2) with torch.export's default
non-strict capture, litert-torch's annotator finds no `+` (no source_fn metadata in
torch 2.14), so 9 of the 10 residual adds stayed float between DEQUANTIZE/QUANTIZE
pairs. AEQ also does fp16 (PT2E cannot), excludes single ops, and reuses the fp32 file
the pipeline exports anyway. QAT (edgecompress.quantize.qat) still goes through PT2E:
only it carries the learned ranges into the file.

On this CPU full-int8 ran 1.07-1.19x the speed of fp32 at 1 thread (three interleaved
runs), dynamic-range 0.44-0.49x and fp16 0.96-1.0x; a phone's ARM int8 kernels behave
differently, so host timings never stand for a phone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import UserError, first_line, suggest
from edgecompress.fsutil import atomic_write_bytes
from edgecompress.quantize.base import CALIBRATION_METHODS, MODES, QuantizedArtifact, check_calibration
from edgecompress.quantize.schemes import TFLITE_SCHEMES

#: calibration methods this toolchain implements (a subset of base.CALIBRATION_METHODS)
TFLITE_METHODS = ("minmax", "percentile")
#: modes quantize_tflite does; "qat" goes through qat.export_qat_tflite
TFLITE_MODES = ("int8-static", "int8-dynamic", "fp16")
SCHEMES = TFLITE_SCHEMES
#: "percentile" keeps this share (%) of each tensor's calibration values inside its range, per tail
PERCENTILE = 99.99
_HIST_BINS = 2048
# Tensor dtypes that only a quantized file has (fp32 files hold float32 and int32 shapes).
_QUANTIZED_DTYPES = ("int8", "uint8", "int16", "float16")
# Ops that only move data between float and int8: not "layers" in the report.
_CAST_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class TfliteOp:
    """One operator of a .tflite file, as `tflite_op_types` reports it.

    op: the builtin name ("CONV_2D"). activation: dtype of its first non-constant input
    ("int8", "float32"). weights: dtype the constant weight input is stored in ("int8",
    "float16", "float32"; through a DEQUANTIZE if there is one), None without weights.
    layer: the PyTorch module the op came from ("features.3.conv.dw.conv"), from the
    tensor names litert-torch writes, None when they carry no module path.
    """

    index: int
    op: str
    activation: str
    weights: str | None
    layer: str | None

    @property
    def dtype(self) -> str:
        """How the op computes: "int8", "int8-weights" (dynamic range), "float16-weights" or "float32"."""
        if self.activation in ("int8", "uint8", "int16"):
            return self.activation
        if self.weights in ("int8", "float16"):
            return f"{self.weights}-weights"
        return self.activation


def quantize_tflite(
    model: nn.Module | str | os.PathLike,
    calib: Any,
    out: str | os.PathLike,
    *,
    input_shape: Sequence[int],
    mode: str = "int8-static",
    method: str = "minmax",
    exclude: Iterable[str] = (),
) -> QuantizedArtifact:
    """Quantize `model` to a .tflite file at `out` (written atomically); see the module docstring.

    model: a float nn.Module (converted to fp32 TFLite first, batch 1), or the path of an
    fp32 .tflite from `export_tflite` (skips that 3-15 s conversion). calib: normalised
    float images (N, *input_shape), a tensor or a list of batches; needed by
    "int8-static", unused (may be None) otherwise. input_shape: (C, H, W).
    exclude: PyTorch module names (e.g. "classifier", "features.0") whose ops stay float.
    Raises UserError for a bad mode/method, an already quantized model, bad calibration
    data, an unknown excluded layer, or a conversion the toolchain cannot do.
    """
    start = time.perf_counter()
    _check_mode_and_method(mode, method)
    input_shape = tuple(int(d) for d in input_shape)
    excluded = _check_exclude(exclude)
    images = None
    if mode == "int8-static":
        if calib is None:
            raise UserError("int8-static quantization needs calibration images; pass a calibration set (e.g. --calib-batches 4)")
        images = check_calibration(calib, input_shape)
    fp32 = _fp32_tflite(model, input_shape)
    recipe, excluded_ops = _recipe(fp32, mode, excluded)
    qsvs: dict[str, Any] | None = None
    if images is not None:
        samples = _signature_samples(fp32, images)
        qsvs = _calibrate(fp32, recipe, samples)
        if method == "percentile":
            qsvs = _percentile_qsvs(fp32, samples, qsvs, PERCENTILE)
    data = _run_quantizer(fp32, recipe, qsvs, mode)
    ops = tflite_op_types(data)  # also proves LiteRT loads the file before it is written
    path = atomic_write_bytes(out, data)
    return QuantizedArtifact(
        format="tflite",
        mode=mode,
        scheme=SCHEMES[mode],
        path=path,
        size_bytes=len(data),
        seconds=time.perf_counter() - start,
        calibration=_calibration_info(method, images, fp32) if images is not None else {},
        float_layers=_float_layers(ops, mode, excluded_ops),
        notes=_notes(path, mode, calib is not None and images is None),
    )


def is_quantized_tflite(path: str | os.PathLike) -> bool:
    """True if the .tflite file at `path` holds int8/uint8/int16/float16 tensors or quantization parameters."""
    interpreter = _interpreter(path)
    for t in interpreter.get_tensor_details():
        if np.dtype(t["dtype"]).name in _QUANTIZED_DTYPES or len(t["quantization_parameters"]["scales"]):
            return True
    return False


def tflite_op_types(model: str | os.PathLike | bytes) -> list[TfliteOp]:
    """Every operator of a .tflite file (path or bytes) in execution order, with how it computes.

    Read from the file's own graph (no XNNPACK delegate applied), so a float op between
    DEQUANTIZE and QUANTIZE shows as "float32" even though the file is mostly int8.
    UserError if LiteRT cannot load the file or allocate its tensors.
    """
    interpreter = _interpreter(model)
    try:
        with _quiet():
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise UserError(f"LiteRT cannot prepare the quantized model: {first_line(e, 300)}; report this with the model") from e
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the only public-enough way to list ops without TensorFlow
    producer = {o: op for op in ops for o in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}

    def dtype(i: int) -> str:
        return np.dtype(tensors[i]["dtype"]).name

    def is_const(i: int) -> bool:
        return i not in producer and i not in graph_inputs

    def is_weight(i: int) -> bool:  # a constant, or a constant dequantized at run time (fp16, int8 weights)
        src = producer.get(i)
        return is_const(i) or (src is not None and src["op_name"] == "DEQUANTIZE" and is_const(src["inputs"][0]))

    result = []
    for op in ops:
        inputs = [i for i in op["inputs"] if i >= 0]
        acts = [i for i in inputs if not is_weight(i)]
        weights = None
        if op["op_name"] not in _CAST_OPS and len(inputs) >= 2 and dtype(inputs[1]) != "int32":
            w = inputs[1]
            src = producer.get(w)
            if src is not None and src["op_name"] == "DEQUANTIZE" and is_const(src["inputs"][0]):
                weights = dtype(src["inputs"][0])  # stored int8/fp16, dequantized at run time
            elif is_const(w):
                weights = dtype(w)
        activation = dtype(acts[0]) if acts else dtype(inputs[0]) if inputs else "float32"
        names = [tensors[i]["name"] for i in op["outputs"]] + ([tensors[inputs[1]]["name"]] if len(inputs) >= 2 else [])
        result.append(TfliteOp(op["index"], op["op_name"], activation, weights, _layer_of(names)))
    return result


def check_float_model(model: nn.Module) -> None:
    """UserError if `model` is already quantized or prepared for quantization.

    Catches torch.ao quantized/QAT modules, observers and fake-quantize modules (eager or
    PT2E), quantized tensors, and graphs holding quantize/dequantize ops.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"expected a PyTorch nn.Module to quantize, got {type(model).__name__}")
    what = "pass the float model (before any quantization or QAT preparation)"
    for name, module in model.named_modules():
        kind = type(module)
        bases = {c.__name__ for c in kind.__mro__}
        if kind.__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                                       "torch.ao.nn.qat", "torch.nn.qat", "torch.ao.nn.intrinsic.qat")) \
                or bases & {"FakeQuantizeBase", "ObserverBase"}:
            raise UserError(f"the model is already quantized: module {name or '<root>'!r} is {kind.__name__}; {what}")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_quantized:
            raise UserError(f"the model is already quantized: tensor {name!r} has dtype {t.dtype}; {what}")
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_function" and "quantized_decomposed" in str(node.target):
                raise UserError(f"the model is already quantized: its graph holds {node.target} (node {node.name}); {what}")


# ---------------------------------------------------------------------------------------


def _check_mode_and_method(mode: str, method: str) -> None:
    if mode == "qat":
        raise UserError("mode 'qat' needs training: use edgecompress.quantize.qat (qat_finetune, then export_qat_tflite)")
    if mode not in TFLITE_MODES:
        raise UserError(f"quantization mode {mode!r} is not one of {', '.join(MODES)}{suggest(str(mode), MODES)}")
    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}"
                        f"{suggest(str(method), CALIBRATION_METHODS)}")
    if method not in TFLITE_METHODS:
        raise UserError(f"calibration method {method!r} is not available for TFLite (ai-edge-quantizer): use "
                        f"{' or '.join(TFLITE_METHODS)}, or quantize to ONNX for {method!r}")


def _check_exclude(exclude: Iterable[str]) -> tuple[str, ...]:
    if isinstance(exclude, str):
        exclude = (exclude,)
    names = tuple(exclude)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"excluded layer {name!r} must be a module name such as 'classifier' or 'features.0'")
    return tuple(n.strip() for n in names)


def _fp32_tflite(model: nn.Module | str | os.PathLike, input_shape: tuple[int, ...]) -> bytes:
    """The fp32 .tflite bytes: converted from `model`, or read from the file it names."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() != ".tflite" or not path.is_file():
            raise UserError(f"{str(path)!r} is not an existing .tflite file; pass a float nn.Module or an fp32 .tflite from export")
        if is_quantized_tflite(path):
            raise UserError(f"{str(path)!r} is already quantized (it holds int8/float16 tensors); pass the fp32 .tflite or the float model")
        shape = tuple(int(d) for d in _interpreter(path).get_input_details()[0]["shape"])
        if shape[1:] != input_shape:
            raise UserError(f"{str(path)!r} takes inputs of shape {shape[1:]}, not {input_shape}; pass the matching --input-size")
        return path.read_bytes()
    check_float_model(model)
    from edgecompress.export.tflite_export import export_tflite

    with tempfile.TemporaryDirectory(prefix="edgecompress-tflite-") as tmp:
        return export_tflite(model, torch.zeros(1, *input_shape), Path(tmp) / "fp32.tflite").read_bytes()


def _recipe(fp32: bytes, mode: str, excluded: tuple[str, ...]) -> tuple[list, dict[str, str]]:
    """The AEQ recipe for `mode`, with NO_QUANTIZE for the ops of excluded layers.

    Returns (recipe, {op output tensor name: excluded layer it belongs to}).
    """
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    if mode == "int8-static":
        manager.add_static_config(".*", every, activation_num_bits=8, weight_num_bits=8,
                                  weight_granularity=qtyping.QuantGranularity.CHANNELWISE,
                                  algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    elif mode == "int8-dynamic":
        manager.add_dynamic_config(".*", every, num_bits=8, granularity=qtyping.QuantGranularity.CHANNELWISE,
                                   algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    else:
        fp16 = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        manager.add_quantization_config(".*", every, fp16, AlgorithmName.FLOAT_CASTING)
    excluded_ops: dict[str, str] = {}
    if excluded:
        excluded_ops = _ops_of_layers(fp32, excluded)
        for out_name in excluded_ops:
            # AEQ matches the op's output tensor names joined by ';' plus a trailing ';'.
            manager.add_quantization_config(f"^{re.escape(out_name)};$", every, None, AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe(), excluded_ops


def _ops_of_layers(fp32: bytes, excluded: tuple[str, ...]) -> dict[str, str]:
    """{output tensor name of each op that belongs to an excluded layer: that layer}."""
    interpreter = _interpreter(fp32)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    found: dict[str, str] = {}
    seen_layers: set[str] = set()
    for op in interpreter._get_ops_details():
        if len(op["outputs"]) != 1:
            continue
        # The op's own module only: a fused op's tensor name also lists neighbours' stacks.
        own = _layer_of([tensors[op["outputs"][0]]] + [tensors[i] for i in op["inputs"][1:2] if i >= 0])
        if own is None:
            continue
        seen_layers.add(own)
        for layer in excluded:
            if own == layer or own.startswith(layer + "."):
                found[tensors[op["outputs"][0]]] = layer
    missing = [layer for layer in excluded if layer not in found.values()]
    if missing:
        known = sorted({p.rsplit(".", 1)[0] if "." in p else p for p in seen_layers} | seen_layers)
        raise UserError(f"excluded layer {missing[0]!r} matches no op of the model{suggest(missing[0], known)}; "
                        f"give a module name as in model.named_modules(), e.g. {', '.join(known[:3])}")
    return found


def _module_paths(tensor_name: str) -> list[str]:
    """Module paths ("features.3.conv.dw.conv") in a litert-torch tensor name.

    litert-torch names a tensor after the module stack(s) it came from, e.g.
    "pkg.Net/torch.nn.modules.container.Sequential_features/pkg.Block_3/torch.nn.modules.conv.Conv2d_conv;1",
    several fused stacks joined by ";;". Each "/" segment is "<class path>_<attribute>".
    """
    paths = []
    for stack in tensor_name.split(";"):
        parts = stack.split("/")
        if len(parts) < 2:
            continue
        attrs = [seg.rsplit(".", 1)[-1].partition("_")[2] for seg in parts[1:]]
        if all(attrs):
            paths.append(".".join(attrs))
    return paths


def _layer_of(names: list[str]) -> str | None:
    """The module an op came from: the last (innermost, e.g. the conv under a fused ReLU) path of its first named tensor."""
    for name in names:
        paths = _module_paths(name)
        if paths:
            return paths[-1]
    return None


def _signature_samples(fp32: bytes, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """Calibration images as AEQ wants them: one {input name: batch} per invocation of the file's batch size."""
    interpreter = _interpreter(fp32)
    key, name = _signature(interpreter)
    batch = int(interpreter.get_input_details()[0]["shape"][0])
    x = images.numpy()
    n = len(x)
    if n % batch:  # the last invocation is topped up with the first images
        x = np.concatenate([x, x[: batch - n % batch]])
    return [{name: x[i : i + batch]} for i in range(0, len(x), batch)]


def _signature(interpreter) -> tuple[str, str]:
    """(signature key, input name) of a single-signature, single-input file, as litert-torch writes them."""
    signatures = interpreter.get_signature_list()
    inputs = next(iter(signatures.values()))["inputs"] if len(signatures) == 1 else []
    if len(inputs) != 1:
        raise UserError(f"the fp32 .tflite has {len(signatures)} signature(s) and {len(inputs)} input(s); calibration "
                        "needs one of each: convert the model with edgecompress's TFLite export")
    return next(iter(signatures)), inputs[0]


def _calibrate(fp32: bytes, recipe: list, samples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Global min/max of every tensor AEQ will quantize, over all calibration samples."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.recipe_manager import RecipeManager
    from ai_edge_quantizer.utils import qsv_utils

    manager = RecipeManager()
    manager.load_quantization_recipe(recipe)
    key, _ = _signature(_interpreter(fp32))
    with _quiet():
        try:
            cal = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
            cal.calibrate({key: samples}, manager)
        except Exception as e:  # AEQ raises plain ValueError/RuntimeError
            raise UserError(f"calibrating the fp32 TFLite model failed: {first_line(e, 300)}; check the calibration images") from e
    return cal.get_model_qsvs()


def _percentile_qsvs(fp32: bytes, samples: list[dict[str, np.ndarray]], qsvs: dict[str, Any], percent: float) -> dict[str, Any]:
    """`qsvs` with each tensor's [min, max] narrowed to its (100-percent)th..percent-th percentile.

    A second pass over the calibration samples histograms every calibrated tensor over
    its min/max range (2048 bins, so the clip points are exact to 1/2048 of the range).
    Zero stays inside every range (int8 must represent 0 exactly: padding, ReLU).
    """
    from edgecompress.export.conversion import native_output_silenced

    interpreter = _interpreter(fp32, preserve_all_tensors=True)
    with native_output_silenced():
        interpreter.allocate_tensors()
    index = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    names = [n for n, q in qsvs.items() if n in index and q and "min" in q and "max" in q]
    ranges = {n: (float(np.min(qsvs[n]["min"])), float(np.max(qsvs[n]["max"]))) for n in names}
    names = [n for n in names if ranges[n][1] > ranges[n][0]]
    hists = {n: np.zeros(_HIST_BINS, np.int64) for n in names}
    (inp,) = interpreter.get_input_details()
    for sample in samples:
        (x,) = sample.values()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        for n in names:
            hists[n] += np.histogram(interpreter.get_tensor(index[n]), bins=_HIST_BINS, range=ranges[n])[0]
    tail = (100.0 - percent) / 100.0
    result = dict(qsvs)
    for n in names:
        lo, hi = ranges[n]
        cdf = np.cumsum(hists[n]) / max(int(hists[n].sum()), 1)
        edges = np.linspace(lo, hi, _HIST_BINS + 1)
        new_lo = edges[int(np.searchsorted(cdf, tail, side="left"))]
        new_hi = edges[min(int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1, _HIST_BINS)]
        new_lo, new_hi = min(new_lo, 0.0) if lo <= 0 else new_lo, max(new_hi, 0.0) if hi >= 0 else new_hi
        q = qsvs[n]
        result[n] = {**q, "min": np.full_like(q["min"], new_lo), "max": np.full_like(q["max"], new_hi)}
    return result


def _run_quantizer(fp32: bytes, recipe: list, qsvs: dict[str, Any] | None, mode: str) -> bytes:
    from ai_edge_quantizer import quantizer

    with _quiet():
        try:
            q = quantizer.Quantizer(bytearray(fp32), recipe)
            result = q.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
        except Exception as e:  # AEQ raises plain ValueError/RuntimeError naming the op when it can
            raise UserError(f"ai-edge-quantizer could not quantize the model to {mode}: {first_line(e, 300)}; "
                            "exclude the named layer (exclude=[...]) or use another mode") from e
    return bytes(result.quantized_model)


def _calibration_info(method: str, images: torch.Tensor, fp32: bytes) -> dict[str, Any]:
    batch = int(_interpreter(fp32).get_input_details()[0]["shape"][0])
    info: dict[str, Any] = {"method": method, "images": int(images.shape[0]), "batches": -(-int(images.shape[0]) // batch)}
    if method == "percentile":
        info["percentile"] = PERCENTILE
    return info


def _float_layers(ops: list[TfliteOp], mode: str, excluded_ops: dict[str, str]) -> dict[str, str]:
    """{layer: why it stayed float} for the ops that did not get what `mode` promises."""
    excluded_layers = set(excluded_ops.values())
    found: dict[str, str] = {}
    for op in ops:
        if op.op in _CAST_OPS:
            continue
        if mode == "int8-static":
            stayed_float = op.activation == "float32"
        else:  # dynamic range / fp16 only change weights; ops without weights are float by design
            stayed_float = op.weights == "float32"
        if not stayed_float:
            continue
        name = op.layer or f"op {op.index} ({op.op})"
        owner = next((x for x in excluded_layers if op.layer and (op.layer == x or op.layer.startswith(x + "."))), None)
        if owner is not None:
            found[name] = f"{op.op}: excluded by request ({owner!r})"
        else:
            found[name] = f"{op.op}: ai-edge-quantizer left it float32 (no {SCHEMES[mode]} support for this op or its inputs)"
    return found


def _notes(path: Path, mode: str, calib_unused: bool) -> list[str]:
    from edgecompress.versions import installed_version

    notes = [f"quantized by ai-edge-quantizer {installed_version('ai-edge-quantizer')} from the fp32 file of "
             f"litert-torch {installed_version('litert-torch')}"]
    if mode == "int8-static":
        interpreter = _interpreter(path)
        (i,), (o,) = interpreter.get_input_details(), interpreter.get_output_details()
        io = [f"{what} {np.dtype(d['dtype']).name} (scale {d['quantization'][0]:.6g}, zero point {d['quantization'][1]})"
              if np.dtype(d["dtype"]) != np.float32 else f"{what} float32" for what, d in (("input", i), ("output", o))]
        notes.append(f"{', '.join(io)}; export.runtimes.run_tflite converts float images and logits with these")
    if calib_unused:
        notes.append(f"calibration images are not used by {mode}")
    return notes


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence AEQ's progress bars, absl logs and warnings (C++ and Python level: the bars
    write to sys.stderr, which need not be file descriptor 2, e.g. under pytest)."""
    from edgecompress.export.conversion import native_output_silenced

    with warnings.catch_warnings(), native_output_silenced(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _interpreter(model: str | os.PathLike | bytes, *, preserve_all_tensors: bool = False):
    """A LiteRT interpreter without the default XNNPACK delegate (the file's own op graph)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # preserve_all_tensors "is for debugging": it is what calibration needs
            return Interpreter(**source, num_threads=1, experimental_preserve_all_tensors=preserve_all_tensors,
                               experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as e:
        where = source.get("model_path", "the converted model")
        raise UserError(f"LiteRT cannot load {where!r}: {first_line(e, 300)}; re-export the model") from e
