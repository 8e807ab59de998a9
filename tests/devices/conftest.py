"""Tiny artifacts for the host benchmarks: built here, never downloaded."""

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """MatMul(16x32) + Relu with a dynamic batch dim, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory) -> Path:
    """Linear(16, 32) -> ReLU -> Linear(32, 4) converted with litert-torch (~8 s)."""
    import litert_torch
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    litert_torch.convert(model, (torch.randn(1, 16),)).export(str(path))
    return path
