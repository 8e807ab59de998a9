"""Latency of a candidate model, as a function a pruner or a search can call.

`measured_latency_fn` exports the candidate and times the file on a `Device` (the host
or a phone): the real thing, at the price of an export and a measurement per call.
Cheaper sources (a per-op lookup table, a predictor) fit the same signature.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

LatencyFn = Callable[[nn.Module], float]

_SUFFIX = {"onnxruntime": "onnx", "litert": "tflite"}


def measured_latency_fn(
    device,
    input_shape: tuple[int, int, int],
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
    trials: int = 1,
    work_dir: str | Path | None = None,
) -> LatencyFn:
    """A function model -> p50 latency in ms on `device`, by exporting and measuring each call.

    `runtime` is "onnxruntime" or "litert"; the export is checked for parity as always.
    """
    from edgecompress.errors import UserError
    from edgecompress.export import export_model

    if runtime not in _SUFFIX:
        raise UserError(f"latency runtime {runtime!r} must be one of {', '.join(_SUFFIX)}")

    def latency_ms(model: nn.Module) -> float:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            example = torch.zeros(1, *input_shape)
            (result,) = export_model(model.eval(), example, tmp, formats=(_SUFFIX[runtime],), basename="candidate")
            return device.measure(Path(result.path), runtime=runtime, threads=threads, runs=runs,
                                  warmup=warmup, trials=trials).p50_ms

    return latency_ms
