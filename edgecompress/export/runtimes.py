"""Run an exported .onnx / .tflite file on this host's CPU: ONNX Runtime and LiteRT.

`open_runtime(path)` loads a file once and returns `run(inputs) -> logits` (for a whole
dataset); `run_onnx` / `run_tflite` are the one-shot forms.

Scope: single-input, single-output models whose input is an NCHW float32 batch (a
classifier); the output is returned as float32 numpy. A file whose batch dimension is
fixed (every .tflite from litert-torch, ONNX files exported without a dynamic batch) is
run over the inputs in chunks of that batch size, the last chunk zero-padded and the
padding dropped from the result. A TFLite model with int8/uint8 input or output gets
its input quantized and its output dequantized with the tensor's (scale, zero point).

The runtimes are imported inside the functions so that importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecompress.errors import UserError, first_line
from edgecompress.export.conversion import native_output_silenced

# Distribution names on PyPI (what `pip install` takes), reported under import-style keys.
_DISTRIBUTIONS = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "ai_edge_litert": "ai-edge-litert",
    "litert_torch": "litert-torch",
    "tflite_runtime": "tflite-runtime",
}


Runner = Callable[[np.ndarray], np.ndarray]


def open_runtime(path: str | os.PathLike, threads: int = 1) -> Runner:
    """Load the .onnx or .tflite file at `path` once; return `run(inputs) -> logits`.

    For evaluating a file over a whole dataset: the session/interpreter is built once
    and reused for every batch. inputs: an NCHW float32 numpy batch of any size.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return open_onnx(path, threads)
    if suffix == ".tflite":
        return open_tflite(path, threads)
    raise UserError(f"cannot run {str(path)!r}: unknown suffix {suffix!r}; expected .onnx or .tflite")


def run_onnx(path: str | os.PathLike, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of the ONNX file at `path` for an NCHW float32 batch, by ONNX Runtime (CPU).

    threads: intra-op threads (inter-op is 1: our graphs are sequential).
    """
    return open_onnx(path, threads)(inputs)


def run_tflite(path: str | os.PathLike, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of the .tflite file at `path` for an NCHW float32 batch, by the LiteRT interpreter.

    Uses `ai_edge_litert` (with its default XNNPACK delegate, as on a phone), or the older
    `tflite_runtime` only when ai_edge_litert is not installed. threads: interpreter threads.
    """
    return open_tflite(path, threads)(inputs)


def open_onnx(path: str | os.PathLike, threads: int = 1) -> Runner:
    """An ONNX Runtime CPU session for `path`, as `run(inputs) -> logits` (see `run_onnx`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; ORT warns about unused initializers etc.
    try:
        session = ort.InferenceSession(str(_existing(path)), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types, not importable portably
        raise UserError(f"ONNX Runtime cannot load {str(path)!r}: {first_line(e)}; re-export the model") from e
    (inp,) = _single(session.get_inputs(), "input", path)
    _single(session.get_outputs(), "output", path)
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def run_chunk(chunk: np.ndarray) -> np.ndarray:
        return session.run(None, {inp.name: chunk})[0]

    def run(inputs: np.ndarray) -> np.ndarray:
        x = _as_batch(inputs)
        _check_shape(x.shape, inp.shape, path)
        return _run_in_chunks(run_chunk, x, fixed_batch)

    return run


def open_tflite(path: str | os.PathLike, threads: int = 1) -> Runner:
    """A LiteRT interpreter for `path`, as `run(inputs) -> logits` (see `run_tflite`)."""
    interpreter_cls = _tflite_interpreter_class()
    try:
        interpreter = interpreter_cls(model_path=str(_existing(path)), num_threads=threads)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"LiteRT cannot load {str(path)!r}: {first_line(e)}; re-export the model") from e
    (inp,) = _single(interpreter.get_input_details(), "input", path)
    (out,) = _single(interpreter.get_output_details(), "output", path)
    signature = [int(d) for d in inp.get("shape_signature", inp["shape"])]
    expected = [d if d >= 0 else None for d in signature]
    fixed_batch = signature[0] if signature[0] >= 0 else None
    allocated: list[tuple[int, ...]] = []  # the input shape the tensors are allocated for

    def run_chunk(chunk: np.ndarray) -> np.ndarray:
        if not allocated or allocated[0] != chunk.shape:
            if fixed_batch is None:  # dynamic batch: one run for the whole batch
                interpreter.resize_tensor_input(inp["index"], list(chunk.shape))
            with native_output_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                interpreter.allocate_tensors()
            allocated[:] = [chunk.shape]
        interpreter.set_tensor(inp["index"], _quantize(chunk, inp))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(out["index"]), out)

    def run(inputs: np.ndarray) -> np.ndarray:
        x = _as_batch(inputs)
        _check_shape(x.shape, expected, path)
        return _run_in_chunks(run_chunk, x, fixed_batch)

    return run


def tflite_runtime_name() -> str:
    """'ai_edge_litert' or 'tflite_runtime': which interpreter `open_tflite` uses."""
    return _tflite_interpreter_class().__module__.split(".")[0]


def runtime_versions() -> dict[str, str | None]:
    """Installed versions of torch, onnx, onnxscript, onnxruntime, ai_edge_litert,
    litert_torch and tflite_runtime (None when absent), read from package metadata
    without importing the packages."""
    from edgecompress.versions import installed_version

    return {key: installed_version(dist) for key, dist in _DISTRIBUTIONS.items()}


def _tflite_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise UserError("running .tflite files needs ai-edge-litert; install it with `pip install ai-edge-litert`") from e
    return Interpreter


def _run_in_chunks(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    if fixed_batch is None or fixed_batch == x.shape[0]:
        return np.asarray(run(x), dtype=np.float32)
    outputs = []
    for start in range(0, x.shape[0], fixed_batch):
        chunk = x[start : start + fixed_batch]
        n = chunk.shape[0]
        if n < fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(run(chunk)[:n], dtype=np.float32))
    return np.concatenate(outputs)


def _as_batch(inputs) -> np.ndarray:
    if hasattr(inputs, "detach"):  # a torch.Tensor, accepted for convenience
        inputs = inputs.detach().cpu().numpy()
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    if x.ndim < 2 or x.shape[0] == 0:
        raise UserError(f"inputs must be a non-empty batch (N, C, H, W), got shape {x.shape}")
    return x


def _check_shape(got: tuple[int, ...], expected, path) -> None:
    """Non-batch dims must match the file's (None/str = free)."""
    expected = list(expected)
    fixed = [e if isinstance(e, int) and e >= 0 else None for e in expected]
    ok = len(got) == len(fixed) and all(e is None or e == g for g, e in zip(got[1:], fixed[1:]))
    if not ok:
        shown = tuple(e if e is not None else "N" for e in fixed)
        raise UserError(f"inputs of shape {tuple(got)} do not fit {str(path)!r}, which takes {shown}; resize the inputs or re-export with that shape")


def _single(details: list, what: str, path) -> list:
    if len(details) != 1:
        raise UserError(f"{str(path)!r} has {len(details)} {what}s; only single-input, single-output models can be run here")
    return details


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    if not scale:
        raise UserError(f"TFLite input of type {dtype} has no quantization scale; cannot feed float inputs")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * (scale or 1.0)).astype(np.float32)


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file {str(p)!r} does not exist; check the path")
    return p
