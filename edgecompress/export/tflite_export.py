"""PyTorch -> TFLite (fp32) through litert-torch, keeping PyTorch's NCHW input.

litert-torch traces the model with torch.export, lowers it to StableHLO and then to a
TFLite flatbuffer (no TensorFlow involved). The file's input has exactly the shape of
`example_input` (batch included: the runtimes loop over batches of that size) and keeps
the NCHW layout: litert-torch inserts the transposes XNNPACK needs, so parity is checked
with the same tensors as PyTorch. (`litert_torch.to_channel_last_io` would give an
NHWC input, which is what a camera pipeline feeds; not used yet.)

Measured 2026-11-23 (litert-torch 0.10.0, 64 px, 1 torch thread, shared 2-core CPU):
conversion takes 3-19 s per torchvision model depending on load (squeezenet1_1 3-8 s,
mobilenet_v2 9-15 s, efficientnet_b0 11-19 s), almost all of it in torch.export's
decompositions, not in the image size; do not convert in tight loops without need.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.export.conversion import describe_failure, eval_mode, native_output_silenced, not_traceable_message
from edgecompress.fsutil import atomic_write_bytes


def export_tflite(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike) -> Path:
    """Convert `model` (in eval mode) to an fp32 .tflite file at `path` (written atomically).

    example_input: an NCHW float32 batch; the .tflite input has exactly its shape. An op
    litert-torch cannot lower raises UserError naming the op and module where it can tell.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise UserError(f"example_input must be a batched torch.Tensor, got {type(example_input).__name__}; pass e.g. torch.randn(1, 3, 224, 224)")
    with eval_mode(model), _litert_progress_hidden(), native_output_silenced():
        try:  # imported here: its native libraries log to stderr while loading
            import litert_torch
        except ImportError as e:
            raise UserError(f"TFLite export needs litert-torch ({e}); install it with `pip install litert-torch`") from e
        try:
            data = litert_torch.convert(model, (example_input,)).model_content()
        except Exception as e:  # litert-torch raises plain RuntimeError/NotImplementedError/...
            raise UserError(_failure_message(model, e)) from e
    return atomic_write_bytes(path, data)


@contextlib.contextmanager
def _litert_progress_hidden() -> Iterator[None]:
    """litert-torch prints a [START]/[DONE] line per step to stdout unless this is 'n'.

    It reads the variable on every step, so setting it for the call and restoring it
    afterwards leaves the user's own setting alone.
    """
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _failure_message(model: nn.Module, exc: BaseException) -> str:
    info = describe_failure(exc)
    name = type(model).__name__
    if info.op is not None:
        return (
            f"TFLite export of {name} failed at {info.describe()}: litert-torch cannot lower it ({info.message}); "
            f"replace it in the model with ops TFLite has (conv, matmul, elementwise, reshape, pooling) "
            f"or leave tflite out of the export formats"
        )
    return not_traceable_message("TFLite", model, info)
