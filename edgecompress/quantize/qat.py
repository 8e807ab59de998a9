"""Quantization-aware training (QAT) with PT2E fake quantization, and its export.

    qat = qat_finetune(model, train_loader, val_loader, TrainConfig(epochs=2, lr=1e-3), example=x)
    export_qat_tflite(qat, x[:1], "model_int8.tflite")      # full-int8, learned ranges
    export_qat_onnx(qat, x[:1], "model_int8.onnx")          # QDQ ONNX, the same ranges

`prepare_qat` captures the float model with torch.export (strict, so that litert-torch's
annotator sees every `+`, see tflite_quant's docstring), folds each BatchNorm into the
convolution before it, and inserts fake quantization where the TFLite int8 kernels will
quantize: per-channel symmetric int8 weights ([-127, 127]) and per-tensor asymmetric
int8 activations (litert-torch's PT2E QAT config). Folding first freezes the BatchNorm
statistics at their trained values (the usual late-QAT practice) and makes QAT train
exactly the conv weights and biases the int8 file will hold; it is also forced:
litert-torch 0.10's conv+BatchNorm QAT annotator fails under torchao 0.18. Ranges are
moving averages of what the fake-quantizers see while training (observers run in train
mode and are frozen in eval mode, so validation data never moves them).
The prepared graph is wrapped in `QATModel`, whose `train()`/`eval()` also switch any
BatchNorm left unfolded between batch and running statistics, so
`edgecompress.train.train` and `edgecompress.distill.finetune` train it unchanged
(checkpoints, resume, best-val weights and distillation included).

Dropout modules are removed before capture: at export litert-torch 0.10 drops the
requantization between the int8 tensors on either side of a dropout (demo model top-1
92.6 % -> 51.6 %), and QAT fine-tuning is short enough not to need it.

Export:
- TFLite (`export_qat_tflite`): the fake-quant graph is converted (convert_pt2e) to
  quantize/dequantize pairs holding the learned scales, and litert-torch's static
  conversion folds them into int8 kernels: a full-integer file (int8 input and output,
  like tflite_quant's "full-int8").
- ONNX (`export_qat_onnx`): the same converted graph is exported by torch's ONNX
  exporter, each quantize/dequantize pair becoming QuantizeLinear/DequantizeLinear with
  the learned scale and zero point: QDQ ONNX with int8 activations and int8 per-channel
  weights ("qdq-s8s8-per-channel"), which ONNX Runtime fuses into integer kernels. No
  re-calibration, so QAT's ranges and its quantization-adapted weights both carry over.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgecompress.errors import UserError
from edgecompress.fsutil import atomic_write_bytes
from edgecompress.quantize.base import QuantizedArtifact
from edgecompress.quantize.tflite_quant import _float_layers, check_float_model, tflite_op_types
from edgecompress.train.config import TrainConfig


class QATModel(nn.Module):
    """A PT2E QAT graph that trains like an ordinary module.

    graph: the torch.fx.GraphModule from prepare_qat_pt2e (fake quantization inside).
    quantizer: the PT2E quantizer that annotated it (the TFLite converter needs it).
    `train(True)` lets the fake-quantizers update their ranges (and any unfolded BatchNorm
    use batch statistics); `train(False)`/`eval()` freezes the ranges (running statistics).
    """

    def __init__(self, graph: torch.fx.GraphModule, quantizer: Any):
        super().__init__()
        self.graph = graph
        self.quantizer = quantizer
        self.train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> QATModel:
        # nn.Module.train would call graph.train(), which PT2E disables on purpose: only
        # the special ops (BatchNorm, dropout) may switch, and these functions do that.
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

        for module in self.modules():
            module.training = mode
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        for module in self.graph.modules():
            if isinstance(module, FakeQuantizeBase):
                module.enable_observer(mode)
        return self


def default_qat_quantizer():
    """litert-torch's PT2E quantizer for QAT: int8 per-channel symmetric weights, int8 per-tensor activations.

    Without its conv+BatchNorm QAT patterns: `prepare_qat` folds BatchNorm into the
    convolutions first, and litert-torch 0.10's annotator for those patterns fails under
    torchao 0.18 (it hands torch.export a function where a module is required).
    """
    from litert_torch.quantize import pt2e_quantizer

    class FoldedBNQuantizer(pt2e_quantizer.PT2EQuantizer):
        STATIC_QAT_ONLY_OPS: list[str] = []

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    return FoldedBNQuantizer().set_global(config)


def prepare_qat(model: nn.Module, example: torch.Tensor, *, quantizer: Any = None) -> QATModel:
    """A copy of the float `model` with fake quantization inserted, in train mode (see the module docstring).

    example: an NCHW float batch (its non-batch shape is fixed in the graph; any batch
    size works afterwards). quantizer: a PT2E quantizer, default `default_qat_quantizer()`.
    The model itself is not modified.
    """
    check_float_model(model)
    if not isinstance(example, torch.Tensor) or example.dim() < 2 or not example.is_floating_point():
        raise UserError(f"example must be a float NCHW batch, e.g. torch.randn(1, 1, 28, 28); got {_describe(example)}")
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    from edgecompress.export.conversion import describe_failure, not_traceable_message

    quantizer = quantizer if quantizer is not None else default_qat_quantizer()
    float_model = _without_dropout(copy.deepcopy(model)).eval()
    # Batch 2: torch.export specializes a size-1 dimension, and the batch must stay free.
    example2 = example[:1].expand(2, *example.shape[1:]).contiguous()
    try:
        exported = torch.export.export(float_model, (example2,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), strict=True)
        graph = exported.module()
        _fuse_conv_bn_(graph)  # BatchNorm folded into the conv weights and bias, as the converter will
        graph = prepare_qat_pt2e(graph, quantizer)
    except Exception as e:  # torch.export raises many types (Unsupported, UserError, TorchRuntimeError)
        raise UserError(not_traceable_message("QAT", model, describe_failure(e))) from e
    return QATModel(graph, quantizer)


def qat_finetune(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    train_config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    distill: Any = None,
    example: torch.Tensor,
    quantizer: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> QATModel:
    """Fine-tune `model` with fake quantization; return the trained QATModel in eval mode.

    model: a float model (prepared here with `prepare_qat(model, example, quantizer=...)`)
    or a QATModel from `prepare_qat`. Training is `edgecompress.distill.finetune`: plain
    cross-entropy without a teacher, Hinton KD from `teacher` with `distill` (a
    DistillConfig, default DistillConfig()) otherwise. `checkpoint_dir` makes it
    resumable. A QAT learning rate ~1/10 of the original training's is typical.
    """
    from edgecompress.distill import DistillConfig, finetune

    qat = model if isinstance(model, QATModel) else prepare_qat(model, example, quantizer=quantizer)
    if teacher is not None and distill is None:
        distill = DistillConfig()
    finetune(qat, teacher, train_loader, val_loader, train_config, distill=distill,
             checkpoint_dir=checkpoint_dir, progress=progress)
    return qat.eval()


def export_qat_tflite(qat_model: QATModel, example: torch.Tensor, out: str | os.PathLike) -> QuantizedArtifact:
    """Full-integer int8 .tflite at `out` (atomic) from a QAT model's learned ranges.

    example: the input batch whose shape the file takes (e.g. torch.zeros(1, 1, 28, 28)).
    """
    start = time.perf_counter()
    converted = _converted_graph(qat_model, example)
    from litert_torch.quantize.quant_config import QuantConfig

    from edgecompress.export.conversion import native_output_silenced
    from edgecompress.export.tflite_export import _failure_message, _litert_progress_hidden

    with _litert_progress_hidden(), native_output_silenced():
        import litert_torch

        try:
            data = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=qat_model.quantizer)).model_content()
        except Exception as e:  # litert-torch raises plain RuntimeError/NotImplementedError/...
            raise UserError(_failure_message(qat_model, e)) from e
    ops = tflite_op_types(data)  # also proves LiteRT loads it before it is written
    path = atomic_write_bytes(out, data)
    return QuantizedArtifact(
        format="tflite", mode="qat", scheme="full-int8", path=path, size_bytes=len(data),
        seconds=time.perf_counter() - start, calibration={"method": "qat"},
        float_layers=_float_layers(ops, "int8-static", {}),
        notes=["activation ranges learned during QAT (moving averages of the fake-quantizers), converted by "
               "litert-torch's PT2E static conversion; int8 input and output, see the file's scale/zero point"],
    )


def export_qat_onnx(qat_model: QATModel, example: torch.Tensor, out: str | os.PathLike) -> QuantizedArtifact:
    """QDQ ONNX at `out` (atomic) with the QAT model's learned scales (see the module docstring).

    The file takes a dynamic batch of `example`'s (C, H, W).
    """
    start = time.perf_counter()
    converted = _converted_graph(qat_model, example)
    from edgecompress.export.conversion import describe_failure, native_output_silenced
    from edgecompress.export.onnx_export import export_onnx

    try:
        path = export_onnx(converted, example, out)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"ONNX export of the QAT model failed at {describe_failure(e).describe()}; export to TFLite instead") from e
    with native_output_silenced():
        import onnx

        graph = onnx.load(str(path)).graph
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    return QuantizedArtifact(
        format="onnx", mode="qat", scheme="qdq-s8s8-per-channel", path=Path(path), size_bytes=Path(path).stat().st_size,
        seconds=time.perf_counter() - start, calibration={"method": "qat"},
        notes=[f"{qdq} QuantizeLinear/DequantizeLinear nodes carry the ranges learned during QAT; no re-calibration"],
    )


def _converted_graph(qat_model: QATModel, example: torch.Tensor) -> torch.fx.GraphModule:
    """The QAT graph with fake quantization replaced by quantize/dequantize ops, in eval mode."""
    if not isinstance(qat_model, QATModel):
        raise UserError(f"expected a QATModel from prepare_qat/qat_finetune, got {type(qat_model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise UserError(f"example must be an NCHW batch such as torch.zeros(1, 1, 28, 28); got {_describe(example)}")
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = copy.deepcopy(qat_model.graph)
    move_exported_model_to_eval(graph)
    # fold_quantize=False keeps weights as float + quantize ops, the form litert-torch expects.
    converted = convert_pt2e(graph, fold_quantize=False)
    # The exporters call eval()/train(), which convert_pt2e forbids; allow them (they only
    # switch BatchNorm/dropout patterns, and the graph is in eval form already).
    allow_exported_model_train_eval(converted)
    converted.training = False
    return converted


def _without_dropout(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.modules.dropout._DropoutNd):
            setattr(model, name, nn.Identity())
        else:
            _without_dropout(child)
    return model


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
