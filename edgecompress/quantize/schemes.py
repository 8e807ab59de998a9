"""The names of the quantization schemes, importable without torch or the runtimes (device profiles name them)."""

from __future__ import annotations

#: ONNX static QDQ schemes -> (activation type, per-channel weights)
STATIC_SCHEMES: dict[str, tuple[str, bool]] = {
    "qdq-u8s8-per-channel": ("u8", True),
    "qdq-s8s8-per-channel": ("s8", True),
    "qdq-u8s8-per-tensor": ("u8", False),
    "qdq-s8s8-per-tensor": ("s8", False),
}
#: ONNX dynamic quantization: int8 weights, activations quantized at run time
DYNAMIC_SCHEME = "dynamic-range-int8"
#: TFLite: the scheme each post-training mode produces
TFLITE_SCHEMES = {"int8-static": "full-int8", "int8-dynamic": "dynamic-range-int8", "fp16": "fp16"}
