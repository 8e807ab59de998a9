"""Export to ONNX and TFLite (fp32) with a numeric parity check.

`export_model(model, torch.randn(1, 3, 224, 224), "out/")` writes out/model.onnx and
out/model.tflite, each checked against the PyTorch model, and returns one ExportResult
per format. The heavy converters and runtimes are imported only when used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError, suggest
from edgecompress.export.parity import ParityResult, check_parity

__all__ = ["FORMATS", "ExportResult", "ParityResult", "ParityWarning", "check_parity", "export_model"]


def _onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    from edgecompress.export.onnx_export import export_onnx

    return export_onnx(model, example_input, path)


def _tflite(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    from edgecompress.export.tflite_export import export_tflite

    return export_tflite(model, example_input, path)


# format name -> (file suffix, exporter)
FORMATS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor, Path], Path]]] = {
    "onnx": (".onnx", _onnx),
    "tflite": (".tflite", _tflite),
}
PARITY_SAMPLES = 8


class ParityWarning(UserWarning):
    """An exported file was kept although it does not match the PyTorch model."""


@dataclass(frozen=True)
class ExportResult:
    """One exported file: its path, size (bytes), parity figures and conversion time (s)."""

    format: str
    path: Path
    size_bytes: int
    parity: ParityResult
    seconds: float

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            "parity": self.parity.to_dict(),
        }


def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    formats: Iterable[str] | str = ("onnx", "tflite"),
    basename: str = "model",
    allow_mismatch: bool = False,
    parity_inputs: torch.Tensor | None = None,
) -> list[ExportResult]:
    """Export `model` to each format as out_dir/<basename>.<suffix>, checking parity.

    example_input: the NCHW float32 batch the files are traced with (TFLite keeps its
    batch size; ONNX gets a dynamic batch). parity_inputs: the batch compared on; by
    default 8 seeded standard-normal samples of example_input's shape. formats: names
    or one comma-separated string ("onnx,tflite").

    All or nothing: the files are written to a scratch directory and moved into
    out_dir only when every format converted and passed parity; a failure leaves
    out_dir as it was. A parity failure raises UserError unless allow_mismatch, which
    keeps the file and warns (ParityWarning). `seconds` is the conversion time alone.
    """
    formats = _validate_formats(formats)
    if not basename or "/" in basename or os.sep in basename:
        raise UserError(f"basename {basename!r} must be a plain file name without directories, e.g. 'model'")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise UserError(f"example_input must be a batched torch.Tensor (N, C, H, W), got {getattr(example_input, 'shape', type(example_input).__name__)}")
    if parity_inputs is None:
        generator = torch.Generator().manual_seed(0)
        parity_inputs = torch.randn((PARITY_SAMPLES, *example_input.shape[1:]), generator=generator)

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{basename}.", suffix=".partial", dir=out_dir))
    try:
        staged = [_export_one(model, example_input, parity_inputs, scratch, basename, fmt, allow_mismatch) for fmt in formats]
        results = []
        for result in staged:
            final = out_dir / result.path.name
            os.replace(result.path, final)
            results.append(ExportResult(result.format, final, result.size_bytes, result.parity, result.seconds))
        return results
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export_one(
    model: nn.Module,
    example_input: torch.Tensor,
    parity_inputs: torch.Tensor,
    scratch: Path,
    basename: str,
    fmt: str,
    allow_mismatch: bool,
) -> ExportResult:
    suffix, exporter = FORMATS[fmt]
    path = scratch / f"{basename}{suffix}"
    start = time.perf_counter()
    exporter(model, example_input, path)
    seconds = time.perf_counter() - start
    parity = check_parity(model, path, parity_inputs)
    if not parity.passed:
        message = f"{parity.summary()}; the exported file does not compute what the PyTorch model computes"
        if not allow_mismatch:
            raise UserError(f"{message}; pass --allow-mismatch to keep the file anyway")
        warnings.warn(f"{message}; keeping {basename}{suffix} because allow_mismatch is set", ParityWarning, stacklevel=3)
    return ExportResult(fmt, path, path.stat().st_size, parity, seconds)


def _validate_formats(formats: Iterable[str] | str) -> list[str]:
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"no export format given; choose from {', '.join(FORMATS)}")
    for name in names:
        if name not in FORMATS:
            raise UserError(f"unknown export format {name!r}{suggest(name, FORMATS)}; valid formats: {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))  # de-duplicated, order kept

