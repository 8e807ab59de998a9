"""PyTorch -> ONNX (fp32), input named "input" (NCHW float32), output named "logits".

Which exporter (measured 2026-11-23 on this machine: torch 2.14.1, onnxscript 0.7.2,
torchvision models at 64 px, 1 thread, 2 busy shared cores):

- The legacy TorchScript exporter (`dynamo=False`) took 0.1-1.3 s per model
  (mobilenet_v2 0.4 s, resnet18 0.8 s); the torch.export-based one (`dynamo=True`)
  took 1.5-7.8 s (mobilenet_v2 6-8 s, most of it translating to ONNX). Both gave the
  same numbers under ONNX Runtime (max abs diff vs PyTorch <= 3e-6) and the same ORT
  latency. Search loops export one candidate after another, so 10x matters.
- `dynamo=True` cannot write opset 17: it builds opset 18 and its down-conversion fails
  on Reduce/Split-style ops and silently keeps 18. The legacy exporter writes what was
  asked. It also exports TorchScript modules, which `load_model` accepts from .pt files.
- But the legacy exporter traces one input: Python control flow on tensor values is
  baked in with only a TracerWarning, and ops without a TorchScript symbolic (e.g.
  aten::fft_rfft2) fail where the dynamo exporter decomposes them. torch.export refuses
  data-dependent control flow outright, and its failures point at an fx node that
  records the module path.

So: the legacy exporter first; if it fails or warns that the trace may depend on the
input, the dynamo exporter (at opset >= 18), whose error (naming op and module) is the
one reported when both fail. The legacy path is deprecated in torch 2.9+ but present in
2.14; if a later torch removes it, every export simply takes the dynamo path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.export.conversion import (
    FailureInfo,
    describe_failure,
    eval_mode,
    native_output_silenced,
    not_traceable_message,
)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Lowest opset the dynamo exporter emits directly (it has no opset-17 translations).
_DYNAMO_MIN_OPSET = 18


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Export `model` (in eval mode) to an ONNX file at `path`, checked by onnx.checker.

    example_input: one NCHW float32 batch (its C, H, W are fixed in the file; with
    dynamic_batch the batch dimension is named "batch" and free). The file appears at
    `path` only when the export and the check succeed. An op or construct the exporter
    cannot handle raises UserError naming the op and module where it can tell.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise UserError(f"example_input must be a batched torch.Tensor, got {type(example_input).__name__}; pass e.g. torch.randn(1, 3, 224, 224)")
    if not isinstance(opset, int) or opset < 9:
        raise UserError(f"ONNX opset {opset!r} is not supported; use an opset >= 9 (default 17)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with eval_mode(model), torch.no_grad():
            _export(model, example_input, tmp, opset, dynamic_batch)
        _check(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _export(model: nn.Module, x: torch.Tensor, tmp: Path, opset: int, dynamic_batch: bool) -> None:
    legacy_error: BaseException | None = None
    try:
        tracer_warnings = _export_legacy(model, x, tmp, opset, dynamic_batch)
    except Exception as e:  # any failure: the dynamo exporter may still manage
        legacy_error, tracer_warnings = e, []
    if legacy_error is None and not tracer_warnings:
        return

    # A separate file, so that a dynamo failure cannot damage the legacy file kept below.
    dynamo_tmp = tmp.with_name(f"{tmp.name}.dynamo")
    try:
        _export_dynamo(model, x, dynamo_tmp, max(opset, _DYNAMO_MIN_OPSET), dynamic_batch)
        os.replace(dynamo_tmp, tmp)
        return
    except Exception as dynamo_error:
        if legacy_error is None:
            # The traced file exists; the parity check that follows decides if it is right.
            warnings.warn(
                f"ONNX export: the traced graph may depend on the example input ({tracer_warnings[0]}) "
                f"and torch.export could not capture the model either ({describe_failure(dynamo_error).describe()})",
                stacklevel=3,
            )
            return
        info = describe_failure(dynamo_error)
        if info.op is None:
            legacy_info = describe_failure(legacy_error)
            info = legacy_info if legacy_info.op is not None else info
        raise UserError(_failure_message(model, info, opset)) from dynamo_error
    finally:
        with contextlib.suppress(FileNotFoundError):
            dynamo_tmp.unlink()


def _export_legacy(model: nn.Module, x: torch.Tensor, tmp: Path, opset: int, dynamic_batch: bool) -> list[str]:
    """TorchScript-trace export; returns the TracerWarnings raised (trace may be input-specific)."""
    with warnings.catch_warnings(record=True) as caught, native_output_silenced():
        # "always" so that a warning already shown once in this process is still seen here;
        # the legacy exporter's own DeprecationWarning is swallowed on purpose.
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            do_constant_folding=True,
        )
    return [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def _export_dynamo(model: nn.Module, x: torch.Tensor, tmp: Path, opset: int, dynamic_batch: bool) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises dimensions of size 1, so trace a batch of 2; AUTO keeps a
        # batch dimension static (instead of failing) when the model fixes it, e.g. view(1, -1).
        if x.shape[0] == 1:
            x = torch.cat([x, x])
        dynamic_shapes = ({0: torch.export.Dim.AUTO},)
    with warnings.catch_warnings(), native_output_silenced():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            # Weights inside the .onnx, as the TorchScript exporter writes them: a side file
            # would be named after this temporary file and lost when the file is moved.
            external_data=False,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )


def _check(tmp: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(tmp))
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"the exported ONNX file is invalid ({first}); report this with the model definition") from e


def _failure_message(model: nn.Module, info: FailureInfo, opset: int) -> str:
    name = type(model).__name__
    if info.op is not None:
        return (
            f"ONNX export of {name} failed at {info.describe()}: the exporter has no ONNX translation for it "
            f"(opset {opset}); replace it in the model with ops ONNX has (https://onnx.ai/onnx/operators/) "
            f"or leave onnx out of the export formats"
        )
    return not_traceable_message("ONNX", model, info)
