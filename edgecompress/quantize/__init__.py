"""Quantization: int8 (static, dynamic, QAT), fp16 and mixed precision, for ONNX and TFLite files."""
