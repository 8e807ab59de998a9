"""Suite-wide settings and fixtures."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The fake phone (tests/fakes) is imported as `fakes.phone`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests never talk to a real adb server: the adb client would start one on port 5037 and
# leave it running. Tests that need a phone start the fake one and pass its adb path
# explicitly; `-m device` tests on a real phone set ANDROID_SERIAL and keep adb usable.
if not os.environ.get("ANDROID_SERIAL"):
    os.environ["ADB"] = os.path.join(os.sep, "nonexistent", "adb-disabled-in-tests")

# The latency cache of a test run lives in a fresh folder, never in the user's cache.
if not os.environ.get("EDGECOMPRESS_CACHE_DIR"):
    import tempfile

    os.environ["EDGECOMPRESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgecompress-test-cache-")


def _adb_servers() -> set[int]:
    """Pids of real adb servers (`adb ... fork-server server`) on this machine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"fork-server" in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(autouse=True)
def no_real_adb_server(request):
    """Nothing in the suite may start a real adb server (the client does, on a wrong port or version)."""
    if "device" in request.keywords:  # a real phone needs the real server
        yield
        return
    before = _adb_servers()
    yield
    assert _adb_servers() <= before, "a real adb server was started during the test"


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
