"""Accuracy of an exported file, measured by running that file in its runtime.

What ships is the .onnx/.tflite, not the PyTorch module, so the report's
accuracy for an artifact comes from here: the file is wrapped as a module whose
forward runs ONNX Runtime or LiteRT, and scored by the same `train.evaluate`
as the PyTorch model (same metrics, same progress bars).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress.export.runtimes import open_runtime
from edgecompress.train import evaluate


class ArtifactModule(nn.Module):
    """An exported model file as a (CPU, inference-only) module: forward runs the runtime."""

    def __init__(self, path: str | Path, threads: int = 2):
        super().__init__()
        self.path = Path(path)
        self._run = open_runtime(self.path, threads=threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x.detach().cpu().numpy()))


def evaluate_artifact(path: str | Path, loader, *, threads: int = 2, progress: bool = True) -> dict:
    """{"top1", "top5", "loss", "n", "evaluated_on"} of the file at `path` over `loader`."""
    res = evaluate(ArtifactModule(path, threads), loader, progress=progress)
    return {**res.to_dict(), "evaluated_on": Path(path).suffix.lstrip(".")}
