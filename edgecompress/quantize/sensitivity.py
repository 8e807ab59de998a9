"""Which layers int8 hurts, measured on the quantized file, and mixed precision from that.

`layer_sensitivity` quantizes ONE layer at a time (everything else float), runs the
file through `evaluate(path) -> top-1 in [0, 1]` and reports the drop from the fp32
file's top-1. `mixed_precision` starts from full int8 and, while the drop exceeds the
budget, keeps the next most sensitive layer float and quantizes again. Both evaluate
files, not PyTorch modules: the number that counts is what the runtime computes.

Only ONNX is implemented (ORT's `nodes_to_quantize` / `nodes_to_exclude` do the per-layer
selection). The loop itself needs just "quantize with these layers float" and
"evaluate a file", so a TFLite quantizer with per-layer control fits the same shape.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.errors import UserError
from edgecompress.fsutil import atomic_write_bytes
from edgecompress.quantize.base import QuantizedArtifact
from edgecompress.quantize.onnx_quant import PreparedOnnx, layer_label, prepare_static, resolve_layers

Evaluate = Callable[[Path], float]


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer quantized alone: its ONNX node name, top-1 of that file, and the drop
    (fp32 top-1 minus it; fractions, 0.01 = 1 point; negative when int8 happened to help)."""

    name: str
    drop: float
    accuracy: float

    @property
    def label(self) -> str:
        """The PyTorch module path, when the exporter kept it (see `layer_label`)."""
        return layer_label(self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "drop": self.drop, "accuracy": self.accuracy}


def top1_evaluator(images, labels, *, threads: int = 1, batch: int = 256) -> Evaluate:
    """`evaluate(path) -> top-1` of a .onnx/.tflite file over fixed `images` (N, C, H, W) and `labels` (N,).

    The images are held in memory, so the many evaluations of a sensitivity sweep cost
    only the runtime's time. threads: runtime threads.
    """
    from edgecompress.export.runtimes import open_runtime

    x = np.ascontiguousarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images, dtype=np.float32)
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels).astype(np.int64)
    if x.ndim < 2 or len(x) == 0 or len(x) != len(y):
        raise UserError(f"evaluation set: {len(x)} images for {len(y)} labels; give the same non-zero number of each")

    def evaluate(path: Path) -> float:
        run = open_runtime(path, threads=threads)
        logits = np.concatenate([run(x[i : i + batch]) for i in range(0, len(x), batch)])
        return float((logits.argmax(1) == y).mean())

    return evaluate


class EvaluationCounter:
    """Wraps `evaluate`: checks that it returns a top-1 fraction in [0, 1] and counts the calls."""

    def __init__(self, evaluate: Evaluate):
        self._evaluate = evaluate
        self.count = 0

    def __call__(self, path: Path) -> float:
        self.count += 1
        value = self._evaluate(Path(path))
        if not isinstance(value, (int, float, np.floating)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"evaluate({str(path)!r}) returned {value!r}; it must return top-1 as a fraction in [0, 1]")
        return float(value)


def _probe_all(
    prepared: PreparedOnnx, evaluations: EvaluationCounter, fp32_accuracy: float, layers: Sequence[str],
    activations: str, per_channel: bool,
) -> list[LayerSensitivity]:
    """Quantize each layer alone and evaluate it; most sensitive first (ties: graph order)."""
    results = []
    probe = prepared.workdir / "probe.onnx"
    for layer in layers:
        prepared.quantize(probe, activations=activations, per_channel=per_channel, only=[layer],
                          only_reason="float in a one-layer sensitivity probe")
        accuracy = evaluations(probe)
        results.append(LayerSensitivity(name=layer, drop=fp32_accuracy - accuracy, accuracy=accuracy))
    order = {name: i for i, name in enumerate(layers)}
    return sorted(results, key=lambda r: (-r.drop, order[r.name]))


def layer_sensitivity(
    fp32_onnx: str | Path,
    calib,
    evaluate: Evaluate,
    *,
    input_shape: Sequence[int],
    layers: Sequence[str] | None = None,
    method: str = "minmax",
    activations: str = "u8",
    per_channel: bool = True,
) -> list[LayerSensitivity]:
    """Top-1 drop of each layer quantized alone, most sensitive first.

    evaluate(path) -> top-1 in [0, 1] of the file at path (e.g. `top1_evaluator` over a
    validation subset). layers: node names or module paths to probe (default: every
    Conv/ConvTranspose/Gemm/MatMul). Costs one quantization and one evaluation per layer
    plus one evaluation of the fp32 file; calibration runs once.
    """
    evaluations = EvaluationCounter(evaluate)
    with prepare_static(fp32_onnx, calib, input_shape=input_shape, method=method) as prepared:
        chosen = resolve_layers(list(layers), prepared.layers) if layers is not None else prepared.layers
        fp32_accuracy = evaluations(Path(fp32_onnx))
        return _probe_all(prepared, evaluations, fp32_accuracy, chosen, activations, per_channel)


def _float_reason(entry: LayerSensitivity, rank: int) -> str:
    return f"kept float: drop {entry.drop * 100:.2f} points when quantized alone (rank {rank})"


def mixed_precision(
    fp32_onnx: str | Path,
    calib,
    evaluate: Evaluate,
    out: str | Path,
    *,
    input_shape: Sequence[int],
    budget: float = 0.005,
    method: str = "minmax",
    activations: str = "u8",
    per_channel: bool = True,
) -> tuple[QuantizedArtifact, dict]:
    """The most-int8 file whose top-1 drop from the fp32 file is within `budget`, at `out`.

    budget: allowed drop as a fraction (0.005 = 0.5 point). Full int8 first; while the
    drop exceeds the budget, the next most sensitive layer (from `layer_sensitivity`,
    computed only if full int8 misses the budget) is kept float and the model quantized
    again. Stops within budget or when every layer is float (the report says then that
    int8 does not pay and the fp32 file is the answer).

    Report: fp32_accuracy, accuracy, drop, budget, within_budget, float_layers {name:
    reason}, path [{float_layers, accuracy, drop}] (one entry per file evaluated),
    sensitivity (or None), evaluations (calls of `evaluate`, fp32 included), message.
    """
    if not 0.0 <= float(budget) < 1.0:
        raise UserError(f"accuracy budget {budget} must be a fraction in [0, 1), e.g. 0.005 for half a point")
    start = time.perf_counter()
    out = Path(out)
    evaluations = EvaluationCounter(evaluate)
    with prepare_static(fp32_onnx, calib, input_shape=input_shape, method=method) as prepared:
        fp32_accuracy = evaluations(Path(fp32_onnx))
        candidate = prepared.workdir / "candidate.onnx"
        kept: dict[str, str] = {}
        artifact = prepared.quantize(candidate, activations=activations, per_channel=per_channel)
        accuracy = evaluations(candidate)
        path = [{"float_layers": [], "accuracy": accuracy, "drop": fp32_accuracy - accuracy}]
        ranking: list[LayerSensitivity] | None = None
        while fp32_accuracy - accuracy > budget and len(kept) < len(prepared.layers):
            if ranking is None:
                ranking = _probe_all(prepared, evaluations, fp32_accuracy, prepared.layers, activations, per_channel)
            rank, entry = next((k, e) for k, e in enumerate(ranking, 1) if e.name not in kept)
            kept[entry.name] = _float_reason(entry, rank)
            artifact = prepared.quantize(candidate, activations=activations, per_channel=per_channel, exclude=kept)
            accuracy = evaluations(candidate)
            path.append({"float_layers": list(kept), "accuracy": accuracy, "drop": fp32_accuracy - accuracy})
        atomic_write_bytes(out, candidate.read_bytes())
    drop = fp32_accuracy - accuracy
    within = drop <= budget
    total = len(prepared.layers)
    if within:
        message = (f"{total - len(kept)} of {total} layers int8, {len(kept)} kept float: top-1 {accuracy:.2%} "
                   f"(drop {drop * 100:.2f} points, budget {budget * 100:.2f})")
    else:
        message = (f"every layer kept float and the drop is still {drop * 100:.2f} points (budget "
                   f"{budget * 100:.2f}): int8 does not pay for this model; ship the fp32 file {str(fp32_onnx)!r}")
    notes = [*artifact.notes, message]
    artifact = dataclasses.replace(artifact, path=out, size_bytes=out.stat().st_size,
                                   seconds=time.perf_counter() - start, notes=notes)
    report = {
        "fp32_accuracy": fp32_accuracy,
        "accuracy": accuracy,
        "drop": drop,
        "budget": float(budget),
        "within_budget": within,
        "float_layers": dict(artifact.float_layers),
        "path": path,
        "sensitivity": [e.to_dict() for e in ranking] if ranking is not None else None,
        "evaluations": evaluations.count,
        "message": message,
    }
    return artifact, report
