"""ONNX int8 through onnxruntime.quantization: static QDQ (calibrated) and dynamic range.

`quantize_onnx_static(fp32, calib, out, input_shape=(1, 28, 28))` pre-processes the fp32
file (ORT's shape inference + graph optimisation, as ORT asks before quantizing), then
writes a QDQ file: int8 weights per output channel (symmetric), uint8 ("u8") or int8
("s8") activations per tensor, ranges from the calibration images. `prepare_static`
does the pre-processing and calibration once for callers that quantize the same model
many times (per-layer sensitivity, mixed precision, scheme choice): every later file
reuses the calibrated ranges, so only the first quantization pays for calibration.

Layers are the nodes that hold weights and MACs (Conv, ConvTranspose, Gemm, MatMul),
named by their ONNX node name; `layer_label` turns the names torch's exporter writes
(`/features/features.1/conv/dw/conv/Conv`) back into module paths (`features.1.conv.dw.conv`),
and `exclude` accepts either.

onnxruntime is imported inside the functions (importing this module stays cheap).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecompress.errors import UserError, first_line, suggest
from edgecompress.fsutil import atomic_write_bytes
from edgecompress.quantize.base import CALIBRATION_METHODS, QuantizedArtifact, check_calibration
from edgecompress.quantize.schemes import DYNAMIC_SCHEME, STATIC_SCHEMES

ACTIVATION_TYPES = ("u8", "s8")
#: nodes that hold weights and MACs: what "a layer" means for float_layers and sensitivity
LAYER_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: op types dynamic quantization can be asked for (Gemm is rewritten to MatMul + Add first)
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
#: op types that only appear in a file that is already quantized
_QUANTIZED_OP_TYPES = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM",
    "MatMulNBits", "MatMulBnb4",
})
#: images per calibration run when the file's batch dimension is free
CALIBRATION_BATCH = 32
NOT_QUANTIZED = "not quantized by onnxruntime (no QuantizeLinear/DequantizeLinear on its inputs in the output file)"


def scheme_name(activations: str, per_channel: bool) -> str:
    """'qdq-u8s8-per-channel' etc. for an activation type and weight granularity."""
    return f"qdq-{activations}s8-{'per-channel' if per_channel else 'per-tensor'}"


# --------------------------------------------------------------------------- helpers


def is_quantized_onnx(path: str | Path) -> bool:
    """True when the ONNX file at `path` already holds quantization ops (QDQ, QLinear*, *Integer)."""
    return bool(_quantized_ops(_load(path)))


def onnx_layers(path: str | Path) -> list[str]:
    """Node names of the quantizable layers (Conv, ConvTranspose, Gemm, MatMul), in graph order."""
    return [n.name for n in _load(path).graph.node if n.op_type in LAYER_OP_TYPES]


def layer_label(node_name: str) -> str:
    """The PyTorch module path in an ONNX node name written by torch's exporter, else the name.

    The exporter names a node by its module scopes, a child of a container carrying the
    container's prefix: '/features/features.1/conv/dw/conv/Conv' -> 'features.1.conv.dw.conv',
    '/classifier/classifier.1/Gemm' -> 'classifier.1'. Names without scopes are returned as they are.
    """
    parts = [p for p in node_name.split("/") if p]
    if not node_name.startswith("/") or len(parts) < 2:
        return node_name
    path = ""
    for scope in parts[:-1]:  # the last part is the op ('Conv', 'Gemm_1')
        if path and scope.startswith(path + "."):
            path = scope  # a container's child: the exporter wrote the full path
        else:
            path = f"{path}.{scope}" if path else scope
    return path


def resolve_layers(names: Sequence[str], layers: Sequence[str]) -> list[str]:
    """Node names for `names`, each an ONNX node name or a module path (`layer_label`).

    UserError naming the first name that matches no layer, with the closest ones.
    """
    by_label: dict[str, list[str]] = {}
    for layer in layers:
        by_label.setdefault(layer_label(layer), []).append(layer)
    resolved: list[str] = []
    for name in names:
        matches = [name] if name in layers else by_label.get(name, [])
        if not matches:
            raise UserError(
                f"layer {name!r} is not a quantizable layer of the model{suggest(name, [*layers, *by_label])}; "
                f"use an ONNX node name or module path from onnx_layers() (e.g. {layer_label(layers[0]) if layers else 'none'})"
            )
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def _load(path: str | Path):
    import onnx

    p = Path(path)
    if not p.is_file():
        raise UserError(f"ONNX file {str(p)!r} does not exist; check the path")
    try:
        return onnx.load(str(p))
    except Exception as e:  # onnx raises DecodeError and friends, not one public type
        raise UserError(f"{str(p)!r} is not a readable ONNX file ({first_line(e)}); export the model again") from e


def _quantized_ops(model) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if n.op_type in _QUANTIZED_OP_TYPES or n.op_type.startswith("QLinear")})


def _refuse_quantized(model, path: Path) -> None:
    ops = _quantized_ops(model)
    if ops:
        raise UserError(
            f"{str(path)!r} is already quantized (it has {', '.join(ops[:3])} nodes); quantize the fp32 export of the model instead"
        )


def _check_output(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"output {str(out)!r} must end in .onnx (runtimes are chosen by suffix)")
    return out



@contextlib.contextmanager
def _ort_quiet() -> Iterator[None]:
    """Silence ORT's quantization tools: C++ warnings on fds 1/2, prints and root-logger warnings.

    The tools call `logging.warning()` on the root logger, which would install a stderr
    handler (basicConfig) in the caller's process if the root had none: a NullHandler
    guards that for the duration.
    """
    from edgecompress.export.conversion import native_output_silenced

    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with native_output_silenced():
            yield
    finally:
        logging.disable(previous)
        if guard is not None:
            root.removeHandler(guard)


def _pre_process(src: Path, dst: Path) -> list[str]:
    """ORT's quantization pre-processing (shape inference + graph optimisation) into `dst`; notes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _ort_quiet():
            quant_pre_process(str(src), str(dst))
        return []
    except Exception as first:  # symbolic shape inference fails on some ops: ONNX's own inference still helps
        try:
            with _ort_quiet():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            return [f"onnxruntime pre-processing ran without symbolic shape inference ({first_line(first)})"]
        except Exception as second:
            shutil.copyfile(src, dst)
            return [f"onnxruntime pre-processing failed ({first_line(second)}); quantized the file as exported"]


# --------------------------------------------------------------------------- analysis of outputs


def _float_layer_nodes(model) -> dict[str, str]:
    """{node name: op type} of layers whose weight or activation input is not dequantized."""
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    floats = {}
    for node in model.graph.node:
        if node.op_type not in LAYER_OP_TYPES:
            continue
        operands = node.input[:2]  # activation and weight (both activations for a MatMul)
        if not all(producer.get(name) == "DequantizeLinear" for name in operands):
            floats[node.name] = node.op_type
    return floats


def _feed_float(model, names: set[str]) -> list[str]:
    """Make the layers `names` read the float tensor in front of their input's Q/DQ pair.

    ONNX Runtime (>= 1.20, its WeightBiasQuantization pass) quantizes at load time the
    float weights of any Conv/ConvTranspose/Gemm whose input comes from a
    DequantizeLinear, per tensor: a layer left float by the quantizer would run int8 anyway
    (and worse than per channel). Fed the tensor before the QuantizeLinear, it stays
    float. A Q/DQ pair nobody reads any more is removed. Returns the layers it could not
    bypass (input dequantized from something other than a QuantizeLinear of a float tensor).
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    stuck = []
    for node in model.graph.node:
        if node.name not in names or node.op_type not in LAYER_OP_TYPES:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            stuck.append(node.name)
            continue
        node.input[0] = q.input[0]
    graph_outputs = {o.name for o in model.graph.output}
    while True:  # drop Q/DQ nodes left without readers (a DQ first, then its Q)
        read = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            return stuck
        for n in dead:
            model.graph.node.remove(n)


def host_float_layers(path: str | Path) -> list[str]:
    """Layers of a quantized file that this host's ONNX Runtime still runs in float.

    ORT fuses QDQ around a layer into an int8 kernel (QLinearConv, QGemm, ...) only where
    the CPU build has one; e.g. on x86 some s8s8 convolutions stay float Conv between a
    DequantizeLinear and a QuantizeLinear. Read from the graph ORT optimises at load time,
    so the answer is for this host's CPU and ORT version, not a phone's.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgecompress-ortopt-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # ORT warns that an NCHWc-optimised file is host-specific: we know
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(optimized))
    float_ops = {*LAYER_OP_TYPES, "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv"}
    return [n.name for n in model.graph.node if n.op_type in float_ops]


# --------------------------------------------------------------------------- static quantization


@dataclass
class PreparedOnnx:
    """An fp32 ONNX file pre-processed and ready for repeated static quantization.

    Made by `prepare_static` (a context manager that owns `workdir`). The first
    `quantize` call calibrates and caches the ranges; later calls reuse them.
    """

    source: Path
    path: Path  # the pre-processed model that gets quantized
    workdir: Path
    input_name: str
    batches: list[np.ndarray]
    method: str
    percentile: float
    layers: list[str]
    images: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # pre-processing time (s)

    @property
    def calibration(self) -> dict:
        info = {"method": self.method, "images": self.images, "batches": len(self.batches)}
        if self.method == "percentile":
            info["percentile"] = self.percentile
        return info

    def quantize(
        self,
        out: str | Path,
        *,
        activations: str = "u8",
        per_channel: bool = True,
        exclude: Mapping[str, str] | None = None,
        only: Sequence[str] | None = None,
        only_reason: str = "outside the layers asked for",
        check_host: bool = False,
    ) -> QuantizedArtifact:
        """Write the QDQ file `out` atomically and describe it.

        exclude: {layer: reason} kept float (node names or module paths). only: quantize
        these layers and nothing else (a sensitivity probe); the other layers are
        reported float with `only_reason`. check_host: add a note when this host's ORT
        runs some quantized layers in float (`host_float_layers`; costs one session load).
        """
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if activations not in ACTIVATION_TYPES:
            raise UserError(f"activations {activations!r} must be one of {', '.join(ACTIVATION_TYPES)}{suggest(activations, ACTIVATION_TYPES)}")
        out = _check_output(out)
        reasons = {}
        for name, reason in (exclude or {}).items():
            for node in resolve_layers([name], self.layers):
                reasons[node] = reason
        only_nodes = resolve_layers(list(only), self.layers) if only is not None else None
        if only_nodes is not None and not only_nodes:
            raise UserError("`only` names no layer; pass at least one layer to quantize")
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.method]
        extra = {"CalibPercentile": self.percentile} if self.method == "percentile" else {}
        start = time.perf_counter()
        tmp = self.workdir / f"quantized-{time.monotonic_ns()}.onnx"
        try:
            with _ort_quiet():
                quantize_static(
                    str(self.path), str(tmp), _reader(self.input_name, self.batches),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=False,  # 7-bit weights only help CPUs without VNNI/dot-product
                    activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=only_nodes,
                    nodes_to_exclude=list(reasons) or None,
                    calibrate_method=method,
                    extra_options=extra,
                    calibration_cache_path=self.workdir / f"ranges-{self.method}.json",
                )
            model = onnx.load(str(tmp))
            wanted_float = set(reasons) | ({*self.layers} - set(only_nodes) if only_nodes is not None else set())
            stuck = _feed_float(model, wanted_float)
            atomic_write_bytes(out, model.SerializeToString())
        finally:
            tmp.unlink(missing_ok=True)
        floats = _float_layer_nodes(model)
        float_layers = {}
        for name, op in floats.items():
            if name in reasons:
                float_layers[name] = reasons[name]
            elif only_nodes is not None and name not in only_nodes:
                float_layers[name] = only_reason
            else:
                float_layers[name] = f"{op} {NOT_QUANTIZED}"
        notes = list(self.notes)
        if stuck:
            notes.append(f"{len(stuck)} layer(s) meant to stay float read a dequantized input that cannot be bypassed "
                         f"(e.g. {stuck[0]}); ONNX Runtime may quantize their weights per tensor at load time")
        if check_host:
            host = [name for name in host_float_layers(out) if name not in float_layers]
            if host:
                notes.append(
                    f"this host's ONNX Runtime runs {len(host)} layer(s) of this file in float (no int8 kernel for "
                    f"them here, e.g. {host[0]}); a phone's ORT build may differ"
                )
        return QuantizedArtifact(
            format="onnx", mode="int8-static", scheme=scheme_name(activations, per_channel), path=out,
            size_bytes=out.stat().st_size, seconds=time.perf_counter() - start,
            calibration=self.calibration, float_layers=float_layers, notes=notes,
        )


def _reader(input_name: str, batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class TensorReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

        def __len__(self) -> int:
            return len(batches)

    return TensorReader()


def _single_float_input(model, path: Path, input_shape: tuple[int, ...]) -> tuple[str, int | None]:
    """(input name, fixed batch size or None); UserError unless one float32 input fits input_shape."""
    from onnx import TensorProto

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{str(path)!r} has {len(inputs)} inputs; only single-input models can be quantized here")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        raise UserError(f"{str(path)!r} takes {TensorProto.DataType.Name(tensor.elem_type)} input; int8 quantization starts from the fp32 export")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if dims and (len(dims) != len(input_shape) + 1 or any(d is not None and d != s for d, s in zip(dims[1:], input_shape))):
        shown = tuple(d if d is not None else "N" for d in dims)
        raise UserError(f"input_shape {tuple(input_shape)} does not fit {str(path)!r}, which takes {shown}; pass the model's input shape")
    batch = dims[0] if dims and dims[0] else None
    return inputs[0].name, batch


def _calibration_batches(x: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """Equal-sized batches (ORT's histogram calibrators fail on a shorter last batch): the
    last one is filled up with images from the start, which changes no min/max."""
    size = batch or min(CALIBRATION_BATCH, len(x))
    count = -(-len(x) // size)
    index = np.arange(count * size) % len(x)
    return [np.ascontiguousarray(x[index[i * size : (i + 1) * size]]) for i in range(count)]


@contextlib.contextmanager
def prepare_static(
    fp32_onnx: str | Path,
    calib,
    *,
    input_shape: Sequence[int],
    method: str = "minmax",
    percentile: float = 99.999,
) -> Iterator[PreparedOnnx]:
    """Check the inputs, pre-process `fp32_onnx` and yield a `PreparedOnnx` (temp files removed after).

    calib: calibration images as the model sees them (tensor (N, *input_shape) or list of
    batches), checked by `check_calibration`. method: one of CALIBRATION_METHODS.
    percentile: the percentile kept by method "percentile" (in (50, 100]).
    """
    source = Path(fp32_onnx)
    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {method!r} must be one of {', '.join(CALIBRATION_METHODS)}{suggest(method, CALIBRATION_METHODS)}")
    if not 50.0 < float(percentile) <= 100.0:
        raise UserError(f"percentile {percentile} must be in (50, 100], e.g. 99.999")
    model = _load(source)
    _refuse_quantized(model, source)
    input_shape = tuple(int(s) for s in input_shape)
    input_name, batch = _single_float_input(model, source, input_shape)
    x = check_calibration(calib, input_shape).numpy()
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="edgecompress-quant-"))
    try:
        pre = workdir / "preprocessed.onnx"
        notes = _pre_process(source, pre)
        yield PreparedOnnx(
            source=source, path=pre, workdir=workdir, input_name=input_name,
            batches=_calibration_batches(x, batch), method=method, percentile=float(percentile),
            layers=onnx_layers(pre), images=len(x), notes=notes, seconds=time.perf_counter() - start,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def quantize_onnx_static(
    fp32_onnx: str | Path,
    calib,
    out: str | Path,
    *,
    input_shape: Sequence[int],
    method: str = "minmax",
    activations: str = "u8",
    per_channel: bool = True,
    exclude: Sequence[str] | Mapping[str, str] = (),
    percentile: float = 99.999,
) -> QuantizedArtifact:
    """Static int8 QDQ file of `fp32_onnx` at `out` (written atomically).

    Weights int8, symmetric, per output channel (per tensor with per_channel=False);
    activations per tensor, uint8 ("u8", scheme qdq-u8s8-per-channel) or int8 ("s8",
    qdq-s8s8-per-channel), ranges from `calib` by `method` (minmax, percentile, entropy).
    exclude: layers kept float, as names or {name: reason}; each is reported in
    float_layers with its reason, as are layers ORT left float. The artifact's notes say
    when this host's ORT runs some quantized layers in float anyway.
    """
    start = time.perf_counter()
    out = _check_output(out)
    if activations not in ACTIVATION_TYPES:
        raise UserError(f"activations {activations!r} must be one of {', '.join(ACTIVATION_TYPES)}{suggest(activations, ACTIVATION_TYPES)}")
    if isinstance(exclude, str):  # one name, not its characters
        exclude = [exclude]
    reasons = dict(exclude) if isinstance(exclude, Mapping) else {name: "excluded on request" for name in exclude}
    with prepare_static(fp32_onnx, calib, input_shape=input_shape, method=method, percentile=percentile) as prepared:
        artifact = prepared.quantize(out, activations=activations, per_channel=per_channel, exclude=reasons, check_host=True)
    return replace(artifact, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- dynamic quantization


def _gemms_to_matmul(model) -> list[str]:
    """Rewrite each Gemm with a constant B (alpha = beta = 1, no transA) as MatMul (+ Add) in place.

    ORT's dynamic quantization has no Gemm kernel, and torch exports nn.Linear as Gemm:
    without this a Linear-heavy model would come out unchanged. The MatMul keeps the
    Gemm's name (so module paths still match). Returns the Gemms left as they were.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    kept, nodes = [], []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0) or \
                attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            if node.op_type == "Gemm":
                kept.append(node.name)
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[weight]).T), f"{weight}_transposed")
            model.graph.initializer.append(transposed)
            weight = transposed.name
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return kept


def quantize_onnx_dynamic(
    fp32_onnx: str | Path,
    out: str | Path,
    *,
    weight_type: str = "s8",
    op_types: Sequence[str] = ("MatMul", "Gemm"),
) -> QuantizedArtifact:
    """Dynamic-range int8 file of `fp32_onnx` at `out` (written atomically): no calibration.

    Weights int8 ("s8") or uint8 ("u8"), per tensor; activations quantized at run time
    from their own range (DynamicQuantizeLinear), so it suits Linear-heavy models.
    op_types: which layers to quantize (MatMul, Gemm, Conv); Gemms are rewritten as
    MatMul + Add first (see `_gemms_to_matmul`). Layers left float are listed with why.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    source = Path(fp32_onnx)
    out = _check_output(out)
    if weight_type not in ACTIVATION_TYPES:
        raise UserError(f"weight_type {weight_type!r} must be one of {', '.join(ACTIVATION_TYPES)}")
    op_types = tuple(dict.fromkeys(op_types))
    unknown = [op for op in op_types if op not in DYNAMIC_OP_TYPES]
    if unknown or not op_types:
        name = unknown[0] if unknown else "(none)"
        raise UserError(f"dynamic op type {name!r} must be among {', '.join(DYNAMIC_OP_TYPES)}{suggest(name, DYNAMIC_OP_TYPES)}")
    model = _load(source)
    _refuse_quantized(model, source)
    with tempfile.TemporaryDirectory(prefix="edgecompress-quant-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        notes = _pre_process(source, pre)
        prepared = onnx.load(str(pre))
        untouched_gemms = _gemms_to_matmul(prepared) if "Gemm" in op_types else []
        onnx.save(prepared, str(pre))
        quantized = Path(tmp) / "quantized.onnx"
        ort_ops = sorted({"MatMul" if op == "Gemm" else op for op in op_types})
        with _ort_quiet():
            quantize_dynamic(str(pre), str(quantized), op_types_to_quantize=ort_ops, per_channel=False,
                             weight_type=QuantType.QInt8 if weight_type == "s8" else QuantType.QUInt8)
        atomic_write_bytes(out, quantized.read_bytes())
    result = onnx.load(str(out))
    float_layers = {}
    for node in result.graph.node:
        if node.op_type not in LAYER_OP_TYPES:
            continue
        if node.name in untouched_gemms:
            float_layers[node.name] = "Gemm with transA, alpha or beta not rewritable as MatMul; dynamic quantization has no Gemm kernel"
        elif node.op_type not in op_types and not (node.op_type == "MatMul" and "Gemm" in op_types):
            float_layers[node.name] = f"{node.op_type} is not in op_types ({', '.join(op_types)})"
        else:
            float_layers[node.name] = f"{node.op_type} {NOT_QUANTIZED}"
    return QuantizedArtifact(
        format="onnx", mode="int8-dynamic", scheme=DYNAMIC_SCHEME, path=out, size_bytes=out.stat().st_size,
        seconds=time.perf_counter() - start, calibration={}, float_layers=float_layers,
        notes=[*notes, f"weights {weight_type} per tensor; activations quantized at run time"],
    )
