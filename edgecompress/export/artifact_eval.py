"""Accuracy of an exported file, measured by running that file in its runtime.

What ships is the .onnx/.tflite, not the PyTorch module, so the report's
accuracy for an artifact comes from here: every batch of the dataset goes
through ONNX Runtime or LiteRT and the logits are scored like `train.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgecompress.export.runtimes import open_runtime
from edgecompress.train.metrics import score_logits


def evaluate_artifact(path: str | Path, loader, *, threads: int = 2) -> dict:
    """{"top1", "top5", "loss", "n", "evaluated_on"} of the file at `path` over `loader`."""
    run = open_runtime(path, threads=threads)
    logits, labels = [], []
    for x, y in loader:
        logits.append(torch.from_numpy(run(x.numpy())))
        labels.append(y)
    res = score_logits(torch.cat(logits), torch.cat(labels))
    return {"top1": res.top1, "top5": res.top5, "loss": res.loss, "n": res.n, "evaluated_on": Path(path).suffix.lstrip(".")}
