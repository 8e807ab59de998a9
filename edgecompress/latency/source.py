"""Where a search or a pruner gets a candidate's latency from: a `LatencySource`.

Every source answers `latency_ms(model, input_shape) -> float` (p50, ms) and has a
`name` for reports:

- `MeasuredLatency(device, runtime, threads, ...)`: exports the candidate and times the
  file on the device (host or phone): the real thing, at the price of an export and a
  measurement per call (optionally through the persistent latency cache).
- `LutLatency(lut)`: the sum of the per-op table's latencies of the model's kernels,
  uncorrected (microseconds per call; no device needed once the table exists).
- `PredictorLatency(predictor)`: the same sum through a correction fitted on measured
  whole models (latency/predictor.py): the fast source meant to track the device.
- `MacsLatency(ms_per_mac)`: latency proportional to MACs, the classic proxy, fitted on
  measured models with `MacsLatency.fit` or given.

`make_latency_source(kind, ...)` builds one by name; `as_latency_fn(source, input_shape)`
turns one into the `model -> ms` function `prune_(..., latency_fn=...)` takes, and
`measured_latency_fn` is that for a `MeasuredLatency` (kept for existing callers).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from edgecompress.errors import UserError, suggest

LatencyFn = Callable[[nn.Module], float]

_SUFFIX = {"onnxruntime": "onnx", "litert": "tflite"}
KINDS = ("measured", "lut", "predictor", "macs")


@runtime_checkable
class LatencySource(Protocol):
    """Anything that can tell the latency (p50, ms) of a model at an input shape (C, H, W)."""

    name: str

    def latency_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        ...


def _shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise UserError(f"input shape {list(input_shape)} must be positive C,H,W without the batch, e.g. 3,32,32")
    return shape


class MeasuredLatency:
    """Export the model (ONNX or TFLite, parity-checked) and time it on `device`.

    `cache`: None (measure every call), a `LatencyCache`, or a path to one: then the
    device is wrapped in `CachedDevice`, so a candidate exported to the same bytes is
    timed once across calls and processes.
    """

    def __init__(self, device, runtime: str = "onnxruntime", threads: int = 1, *, runs: int = 50, warmup: int = 10,
                 trials: int = 1, work_dir: str | os.PathLike | None = None, cache: Any = None) -> None:
        if runtime not in _SUFFIX:
            raise UserError(f"latency runtime {runtime!r} must be one of {', '.join(_SUFFIX)}{suggest(runtime, _SUFFIX)}")
        if cache is not None:
            from edgecompress.latency.cache import CachedDevice, LatencyCache

            device = CachedDevice(device, cache if isinstance(cache, LatencyCache) else LatencyCache(cache))
        self.device = device
        self.runtime, self.threads = runtime, threads
        self.runs, self.warmup, self.trials = runs, warmup, trials
        self.work_dir = work_dir
        self.name = f"measured:{device.name}:{runtime}:t{threads}"
        self.last_result = None  # the LatencyResult of the latest call, for reports

    def latency_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        from edgecompress.export import export_model

        example = torch.zeros(1, *_shape(input_shape))
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            (exported,) = export_model(model.eval(), example, tmp, formats=(_SUFFIX[self.runtime],), basename="candidate")
            self.last_result = self.device.measure(Path(exported.path), runtime=self.runtime, threads=self.threads,
                                                   runs=self.runs, warmup=self.warmup, trials=self.trials)
        return self.last_result.p50_ms


def _check_device(fingerprint: Mapping[str, Any], device, what: str) -> None:
    if device is None:
        return
    from edgecompress.latency.lut import check_fingerprint

    check_fingerprint(fingerprint, device.fingerprint(), f"the {what}", device.name)


class LutLatency:
    """Sum of the per-op table's latencies over the model's kernels (no correction).

    `lut`: a `LatencyLUT` or the path of a lut.json. With `device`, a table of another
    device is refused (UserError naming both fingerprints).
    """

    def __init__(self, lut, device=None) -> None:
        from edgecompress.latency.lut import LatencyLUT

        self.lut = lut if isinstance(lut, LatencyLUT) else LatencyLUT.load(lut)
        _check_device(self.lut.fingerprint, device, "latency table")
        self.name = f"lut:{self.lut.runtime}:t{self.lut.threads}"

    def latency_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        from edgecompress.latency.predictor import decompose, group_sums

        return group_sums(self.lut, decompose(model, _shape(input_shape), self.lut.runtime, self.lut.threads))["total"]


class PredictorLatency:
    """A fitted `LatencyPredictor` (table + correction); `predictor` may be a path to its JSON."""

    def __init__(self, predictor, device=None) -> None:
        from edgecompress.latency.predictor import LatencyPredictor

        self.predictor = predictor if isinstance(predictor, LatencyPredictor) else LatencyPredictor.load(predictor)
        _check_device(self.predictor.fingerprint, device, "latency predictor")
        lut = self.predictor.lut
        self.name = f"predictor:{lut.runtime}:t{lut.threads}"

    def latency_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        return self.predictor.predict(model, _shape(input_shape))


def model_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass at batch 1 (graph/cost.py conventions)."""
    from edgecompress.graph.cost import analyze

    return analyze(model, _shape(input_shape)).total_macs


class MacsLatency:
    """latency (ms) = ms_per_mac * MACs: the proxy that ignores memory traffic and runtimes."""

    def __init__(self, ms_per_mac: float) -> None:
        if not (isinstance(ms_per_mac, (int, float)) and np.isfinite(ms_per_mac) and ms_per_mac > 0):
            raise ValueError(f"ms_per_mac must be a number > 0, got {ms_per_mac!r}")
        self.ms_per_mac = float(ms_per_mac)
        self.name = "macs"

    @classmethod
    def fit(cls, macs: Sequence[float], measured_ms: Sequence[float]) -> MacsLatency:
        """The k minimising the relative error of k * MACs against measured p50s (ms)."""
        m = np.asarray(macs, dtype=np.float64)
        y = np.asarray(measured_ms, dtype=np.float64)
        if len(m) != len(y) or len(m) == 0:
            raise ValueError(f"need as many MAC counts as measurements (> 0), got {len(m)} and {len(y)}")
        if (m <= 0).any() or (y <= 0).any():
            raise ValueError("MACs and measured latencies must be > 0")
        r = m / y  # minimise sum((k * m / y - 1)^2)
        return cls(float(r.sum() / (r * r).sum()))

    def latency_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        return self.ms_per_mac * model_macs(model, input_shape)


def make_latency_source(
    kind: str,
    *,
    device=None,
    runtime: str = "onnxruntime",
    threads: int = 1,
    lut=None,
    predictor=None,
    ms_per_mac: float | None = None,
    runs: int = 50,
    warmup: int = 10,
    trials: int = 1,
    cache: Any = None,
    work_dir: str | os.PathLike | None = None,
) -> LatencySource:
    """A source by name: "measured" (needs device), "lut" (needs lut: object or path),
    "predictor" (needs predictor: object or path), "macs" (needs ms_per_mac).

    A `device` given with lut/predictor is checked against their fingerprint.
    """
    if kind not in KINDS:
        raise UserError(f"unknown latency source {kind!r}{suggest(str(kind), KINDS)}; valid: {', '.join(KINDS)}")
    if kind == "measured":
        if device is None:
            raise UserError("latency source 'measured' needs a device (--device host or adb:SERIAL)")
        return MeasuredLatency(device, runtime, threads, runs=runs, warmup=warmup, trials=trials, work_dir=work_dir,
                               cache=cache)
    if kind == "lut":
        if lut is None:
            raise UserError("latency source 'lut' needs a latency table: build one with `edgecompress profile` "
                            "and pass its lut.json")
        return LutLatency(lut, device)
    if kind == "predictor":
        if predictor is None:
            raise UserError("latency source 'predictor' needs a fitted predictor JSON "
                            "(tools/bench_latency_predictor.py writes predictor.json)")
        return PredictorLatency(predictor, device)
    if ms_per_mac is None:
        raise UserError("latency source 'macs' needs ms_per_mac (fit it with MacsLatency.fit on measured models)")
    return MacsLatency(ms_per_mac)


def as_latency_fn(source: LatencySource, input_shape: Sequence[int]) -> LatencyFn:
    """`model -> ms` at a fixed input shape, the form `prune_(latency_fn=...)` takes."""
    shape = _shape(input_shape)

    def latency_ms(model: nn.Module) -> float:
        return source.latency_ms(model, shape)

    return latency_ms


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
    source = MeasuredLatency(device, runtime, threads, runs=runs, warmup=warmup, trials=trials, work_dir=work_dir)
    return as_latency_fn(source, input_shape)


__all__ = [
    "KINDS", "LatencyFn", "LatencySource", "LutLatency", "MacsLatency", "MeasuredLatency", "PredictorLatency",
    "as_latency_fn", "make_latency_source", "measured_latency_fn", "model_macs",
]  # fmt: skip
