"""Time single layers (and whole models) on a device, for factorize_'s latency decisions.

A factorization that cuts MACs can still be slower: two thin convolutions run two kernels
and write an intermediate map, and a k x 1 / 1 x k pair or a depthwise CP chain may miss
the runtime's fast paths. So each layer the plan would factorize is exported alone (ONNX
or TFLite, like the per-op latency tables) before and after, and both are timed on the
device, interleaved trial by trial so background load hits them alike.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

_SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite"}


class LayerTimer:
    """p50 ms of standalone blocks and whole models on `device` with one runtime and thread count.

    `cache` (a LatencyCache or its path) serves blocks exported to the same bytes again.
    """

    def __init__(self, device, runtime: str = "onnxruntime", threads: int = 1, *, runs: int = 30, warmup: int = 5,
                 trials: int = 3, cache=None, work_dir: str | Path | None = None) -> None:
        from edgecompress.errors import UserError, suggest

        if runtime not in _SUFFIX:
            raise UserError(f"latency runtime {runtime!r} must be one of {', '.join(_SUFFIX)}{suggest(runtime, _SUFFIX)}")
        if cache is not None:
            from edgecompress.latency.cache import CachedDevice, LatencyCache

            device = CachedDevice(device, cache if isinstance(cache, LatencyCache) else LatencyCache(cache))
        self.device, self.runtime, self.threads = device, runtime, threads
        self.runs, self.warmup, self.trials, self.work_dir = runs, warmup, trials, work_dir
        self.name = f"{device.name} {runtime} {threads}T"

    def time_blocks(self, blocks: Sequence[tuple[nn.Module, tuple[int, ...]]]) -> list[float]:
        """p50 ms of each (module, input shape without the batch), measured interleaved."""
        from edgecompress.latency.interleave import measure_interleaved
        from edgecompress.latency.lut import export_block

        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            paths = []
            for i, (module, shape) in enumerate(blocks):
                path = Path(tmp) / f"block{i}{_SUFFIX[self.runtime]}"
                export_block(module.eval(), (torch.zeros(1, *shape),), path, self.runtime)
                paths.append(path)
            results = measure_interleaved(self.device, paths, [self.threads], runs=self.runs, warmup=self.warmup,
                                          trials=self.trials)
            return [results[(p, self.threads)].p50_ms for p in paths]

    def model_ms(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        """p50 ms of the whole model (exported and parity-checked like any artifact)."""
        from edgecompress.latency.source import MeasuredLatency

        source = MeasuredLatency(self.device, self.runtime, self.threads, runs=self.runs, warmup=self.warmup,
                                 trials=self.trials, work_dir=self.work_dir)
        return source.latency_ms(model, tuple(input_shape))
