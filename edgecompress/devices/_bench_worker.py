"""One benchmark trial in a fresh process: `python -m edgecompress.devices._bench_worker`.

Loads the artifact, feeds one fixed random input, runs `warmup` untimed and `runs`
timed invocations, and prints one JSON object on stdout:
`{"samples_ms": [...], "runtime_version": "...", "runtime_info": {...}}`.
A fresh process per trial means no allocator, thread-pool or cache state carries over
from an earlier trial, and the parent never has to import the runtimes.
Errors go to stderr with exit code 1; the parent turns them into a UserError.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

from edgecompress.devices.base import THREAD_ENV_VARS

# ONNX type strings -> numpy dtypes for the inputs we can synthesise.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def random_input(shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """A fixed-seed input of `shape`/`dtype`; unknown (dynamic) dims become 1."""
    dims = [d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape]
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        # Small values: integer inputs are usually indices or quantized pixels.
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -8), min(info.max, 8) + 1, size=dims).astype(dtype)
    return rng.standard_normal(size=dims).astype(dtype)


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    # A collection in the middle of a timed call would be charged to the model.
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            start = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        gc.enable()
    return samples


def bench_onnxruntime(path: str, threads: int, runs: int, warmup: int, seed: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: warnings would flood the parent's error tail
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds, inputs = {}, []
    for inp in sess.get_inputs():
        if inp.type not in _ORT_DTYPES:
            raise ValueError(f"input {inp.name!r} has type {inp.type}, which the benchmark cannot synthesise")
        feeds[inp.name] = random_input(inp.shape, _ORT_DTYPES[inp.type], rng)
        inputs.append({"name": inp.name, "shape": list(feeds[inp.name].shape), "dtype": str(feeds[inp.name].dtype)})
    samples = _time(lambda: sess.run(None, feeds), runs, warmup)
    info = {
        "providers": sess.get_providers(),
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "execution_mode": "sequential",
        "graph_optimization": "all",
        "inputs": inputs,
    }
    return {"samples_ms": samples, "runtime_version": ort.__version__, "runtime_info": info}


def _litert_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter

        from edgecompress.devices.local import runtime_version

        return Interpreter, "ai_edge_litert", runtime_version("litert")
    except ImportError:
        # The predecessor package, for platforms without an ai-edge-litert wheel.
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime", tflite_runtime.__version__


def bench_litert(path: str, threads: int, runs: int, warmup: int, seed: int) -> dict:
    Interpreter, package, version = _litert_interpreter()
    # The default op resolver applies XNNPACK; we check below that it really did.
    interp = Interpreter(model_path=path, num_threads=threads)
    rng = np.random.default_rng(seed)
    details = interp.get_input_details()
    for d in details:
        if any(s < 0 for s in d["shape_signature"]):
            shape = [s if s > 0 else 1 for s in d["shape_signature"]]
            interp.resize_tensor_input(d["index"], shape)
    interp.allocate_tensors()
    inputs = []
    for d in interp.get_input_details():
        x = random_input(list(d["shape"]), d["dtype"], rng)
        interp.set_tensor(d["index"], x)
        inputs.append({"name": d["name"], "shape": list(x.shape), "dtype": str(x.dtype)})
    # A delegate replaces the nodes it takes with one node named DELEGATE; with no
    # explicit delegates passed, the only one the runtime applies is XNNPACK.
    # `_get_ops_details` is private API: without it, XNNPACK use is recorded as unknown.
    get_ops = getattr(interp, "_get_ops_details", None)
    ops = [op["op_name"] for op in get_ops()] if get_ops else []
    delegated = ops.count("DELEGATE")
    samples = _time(interp.invoke, runs, warmup)
    info = {
        "package": package,
        "num_threads": threads,
        "xnnpack": delegated > 0 if get_ops else None,
        "delegate_nodes": delegated,
        "nodes": len(ops) - delegated,
        "inputs": inputs,
    }
    return {"samples_ms": samples, "runtime_version": version, "runtime_info": info}


BENCHES = {"onnxruntime": bench_onnxruntime, "litert": bench_litert}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecompress.devices._bench_worker")
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--runtime", required=True, choices=sorted(BENCHES))
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Native libraries may print to fd 1; keep the JSON channel clean by pointing fd 1
    # at stderr and writing the result to a private copy of the original stdout.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        result = BENCHES[args.runtime](args.artifact, args.threads, args.runs, args.warmup, args.seed)
    except Exception as exc:  # the parent shows this line to the user
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    result["runtime_info"]["thread_env"] = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    json.dump(result, out)
    out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
