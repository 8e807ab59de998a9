"""What every quantization path shares: the modes, the result of one quantized file, and
the checks on calibration data.

A quantizer takes a float PyTorch model (or its exported fp32 file), calibration images
and writes one quantized file atomically; it returns a `QuantizedArtifact` saying what
was done (format, mode, scheme, which layers stayed float and why). Accuracy and latency
are measured afterwards on that file, in its runtime (export.artifact_eval, devices).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgecompress.errors import UserError

#: what `edgecompress quantize --mode` accepts
MODES = ("int8-static", "int8-dynamic", "fp16", "qat")
#: how activation ranges are chosen from calibration data
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: below this many calibration images the ranges are unreliable: warn, do not refuse
MIN_CALIBRATION_IMAGES = 100


def precision_label(mode: str) -> str:
    """What a mode's files are called in names and reports: "fp16" for fp16, "int8" for every other mode."""
    return "fp16" if mode == "fp16" else "int8"


class CalibrationWarning(UserWarning):
    """Calibration data is usable but thin (too few images)."""


@dataclass(frozen=True)
class QuantizedArtifact:
    """One quantized file.

    format: "onnx" or "tflite". mode: one of MODES. scheme: the concrete recipe, e.g.
    "qdq-u8s8-per-channel" (ONNX, uint8 activations, int8 per-channel weights),
    "qdq-s8s8-per-channel", "full-int8", "dynamic-range-int8", "fp16". float_layers:
    {layer name: why it stayed float} (a runtime that cannot quantize it, or the
    sensitivity budget kept it). seconds: wall time of quantization (s).
    """

    format: str
    mode: str
    scheme: str
    path: Path
    size_bytes: int
    seconds: float
    calibration: dict[str, Any] = field(default_factory=dict)  # method, images, batches
    float_layers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def check_calibration(inputs: Any, input_shape: tuple[int, ...], *, what: str = "calibration data") -> torch.Tensor:
    """`inputs` as a float32 tensor (N, *input_shape); UserError naming the problem otherwise.

    Accepts a tensor or a list of tensors (batches, concatenated). Warns
    (CalibrationWarning) below MIN_CALIBRATION_IMAGES images.
    """
    if isinstance(inputs, (list, tuple)):
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise UserError(f"{what}: expected a tensor or a non-empty list of tensors (N, C, H, W)")
        inputs = torch.cat([t if t.dim() == len(input_shape) + 1 else t.unsqueeze(0) for t in inputs])
    if not isinstance(inputs, torch.Tensor):
        raise UserError(f"{what}: expected a tensor of images (N, C, H, W), got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise UserError(f"{what}: dtype {inputs.dtype} must be floating point (normalised images as the model sees "
                        "them, not raw uint8 pixels)")
    if tuple(inputs.shape[1:]) != tuple(input_shape):
        raise UserError(f"{what}: images of shape {tuple(inputs.shape[1:])} do not match the model input "
                        f"{tuple(input_shape)}; resize or pass --input-size")
    n = int(inputs.shape[0])
    if n == 0:
        raise UserError(f"{what}: no images; give at least {MIN_CALIBRATION_IMAGES}")
    if not math.isfinite(float(inputs.abs().max())):
        raise UserError(f"{what}: holds NaN or infinite values")
    if n < MIN_CALIBRATION_IMAGES:
        warnings.warn(f"{what}: only {n} images; activation ranges from fewer than {MIN_CALIBRATION_IMAGES} are "
                      "unreliable (int8 accuracy may drop): raise --calib-batches", CalibrationWarning, stacklevel=2)
    return inputs.float().contiguous()
