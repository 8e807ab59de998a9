"""Numeric parity: does the exported file compute what the PyTorch model computes?

The check runs the PyTorch model and the exported file (ONNX Runtime or LiteRT, by the
file's suffix) on the same inputs and compares the logits:

- max |exported - pytorch| must be <= atol * logit_scale, where logit_scale is
  max(1, max |pytorch logits|). The tolerance scales with the logits because fp32
  rounding errors do: a trained classifier with logits around 20 legitimately differs
  more in absolute terms than a random-init one with logits around 0.01.
- top-1 agreement (fraction of samples whose argmax matches) must be >= the minimum. A
  sample whose two best PyTorch logits are closer than the tolerance counts as agreeing
  whichever of the two the file picks: that is a tie, not an error.

Default atol per format (fp32 files): 1e-3 for both onnx and tflite. Measured here
(2026-11-23) on 9 zoo models (32 px) and 6 torchvision models (64 and 224 px), with
calibrated BatchNorm and logits scaled to a trained model's range (max |logit| 7-23):
the largest max_abs_diff / logit_scale was 1.7e-5 with ONNX Runtime and 1.5e-5 with
LiteRT/XNNPACK (the two differ from PyTorch by the same order: both reorder fp32 sums
and fold BatchNorm into convs). 1e-3 leaves ~60x headroom for deeper models and other
CPUs, while a conversion that is actually wrong is off by 1e-1 or more.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.export.conversion import eval_mode

DEFAULT_ATOL = {"onnx": 1e-3, "tflite": 1e-3}
SUFFIX_FORMAT = {".onnx": "onnx", ".tflite": "tflite"}


@dataclass(frozen=True)
class ParityResult:
    """Outcome of one parity check. Diffs are in logit units; agreement is a fraction in [0, 1]."""

    format: str
    runtime: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    n_samples: int
    atol: float
    logit_scale: float
    min_top1_agreement: float
    passed: bool

    @property
    def tolerance(self) -> float:
        """The bound max_abs_diff is held to: atol * logit_scale (logit units)."""
        return self.atol * self.logit_scale

    def to_dict(self) -> dict:
        return {**asdict(self), "tolerance": self.tolerance}

    def summary(self) -> str:
        """One line, e.g. 'onnx parity ok: max abs diff 2.1e-06 <= 1e-04, top-1 agreement 100.0% on 8 samples'."""
        verdict = "ok" if self.passed else "failed"
        op = "<=" if self.max_abs_diff <= self.tolerance else ">"
        return (
            f"{self.format} parity {verdict}: max abs diff {self.max_abs_diff:.3g} {op} atol {self.tolerance:.3g} "
            f"({self.atol:g} x logit scale {self.logit_scale:.3g}), top-1 agreement {self.top1_agreement:.1%} "
            f"(min {self.min_top1_agreement:.1%}) on {self.n_samples} samples [{self.runtime}]"
        )


def check_parity(
    model: nn.Module,
    artifact: str | os.PathLike,
    inputs: torch.Tensor,
    *,
    atol: float | None = None,
    min_top1_agreement: float = 1.0,
    threads: int = 1,
) -> ParityResult:
    """Compare `model` (eval mode, fp32) with the .onnx/.tflite file `artifact` on `inputs`.

    inputs: an NCHW float32 batch (8-16 real or random samples is enough to catch a
    broken conversion). atol: relative to the logit scale, see the module docstring;
    None takes DEFAULT_ATOL for the format. threads: runtime threads. Returns the
    figures; it does not raise on a mismatch (the caller decides).
    """
    artifact = Path(artifact)
    fmt = SUFFIX_FORMAT.get(artifact.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot check parity of {str(artifact)!r}: unknown suffix {artifact.suffix!r}; expected one of {', '.join(SUFFIX_FORMAT)}")
    atol = DEFAULT_ATOL[fmt] if atol is None else float(atol)
    if not atol > 0:
        raise ValueError(f"atol must be > 0, got {atol}")
    if not 0.0 <= min_top1_agreement <= 1.0:
        raise ValueError(f"min_top1_agreement must be in [0, 1], got {min_top1_agreement}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
        raise UserError(f"parity inputs must be a non-empty batched torch.Tensor, got {getattr(inputs, 'shape', type(inputs).__name__)}")

    expected = _pytorch_logits(model, inputs)
    got, runtime = _artifact_logits(fmt, artifact, inputs.detach().cpu().float().numpy(), threads)
    return compare_logits(expected, got, fmt=fmt, runtime=runtime, atol=atol, min_top1_agreement=min_top1_agreement)


def compare_logits(
    expected: np.ndarray,
    got: np.ndarray,
    *,
    fmt: str,
    runtime: str,
    atol: float,
    min_top1_agreement: float = 1.0,
) -> ParityResult:
    """The parity figures for two (N, ...) logit arrays; `expected` is the reference."""
    n = int(expected.shape[0])
    logit_scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    tolerance = atol * logit_scale
    if got.shape != expected.shape:
        # A different output shape is a broken export, whatever the values.
        max_diff = mean_diff = float("inf")
        agreement = 0.0
    else:
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        # NaN in the file's output must fail, and NaN compares False with everything.
        max_diff = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")
        mean_diff = float(np.mean(diff)) if np.all(np.isfinite(diff)) else float("inf")
        agreement = _top1_agreement(expected.reshape(n, -1), got.reshape(n, -1), tolerance)
    passed = max_diff <= tolerance and agreement >= min_top1_agreement
    return ParityResult(
        format=fmt,
        runtime=runtime,
        max_abs_diff=max_diff,
        mean_abs_diff=mean_diff,
        top1_agreement=agreement,
        n_samples=n,
        atol=atol,
        logit_scale=logit_scale,
        min_top1_agreement=min_top1_agreement,
        passed=passed,
    )


def _top1_agreement(expected: np.ndarray, got: np.ndarray, tolerance: float) -> float:
    rows = np.arange(expected.shape[0])
    picked = np.argmax(got, axis=1)
    same = picked == np.argmax(expected, axis=1)
    tie = expected[rows, picked] >= expected.max(axis=1) - tolerance
    return float(np.mean(same | tie))


def _pytorch_logits(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    with eval_mode(model), torch.no_grad():
        out = model(inputs)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"{type(model).__name__} returns {type(out).__name__}, not a tensor; parity needs single-output models")
    return out.detach().cpu().float().numpy()


def _artifact_logits(fmt: str, artifact: Path, inputs: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    from edgecompress.export import runtimes

    versions = runtimes.runtime_versions()
    if fmt == "onnx":
        return runtimes.run_onnx(artifact, inputs, threads), f"onnxruntime {versions['onnxruntime']} CPU"
    name = runtimes.tflite_runtime_name()
    return runtimes.run_tflite(artifact, inputs, threads), f"{name} {versions[name]}"
