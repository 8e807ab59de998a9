"""Host runtimes for exported files: batching, shape checks, versions, light imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.export.onnx_export import export_onnx
from edgecompress.export.runtimes import (
    _dequantize,
    _quantize,
    open_runtime,
    run_onnx,
    run_tflite,
    runtime_versions,
    tflite_runtime_name,
)
from edgecompress.export.tflite_export import export_tflite


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, nets, trained_like):
    """A TinyNet exported to ONNX (dynamic batch) and TFLite (fixed batch of 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture is per test, this runs before
    model = trained_like(nets["TinyNet"](), (3, 16, 16))
    d = tmp_path_factory.mktemp("rt")
    onnx_path = export_onnx(model, torch.randn(1, 3, 16, 16), d / "tiny.onnx")
    tflite_path = export_tflite(model, torch.randn(2, 3, 16, 16), d / "tiny.tflite")
    torch.set_num_threads(threads)
    return model, onnx_path, tflite_path


def test_both_runtimes_match_pytorch_for_any_batch(tiny_files):
    model, onnx_path, tflite_path = tiny_files
    for n in (1, 2, 7):  # 7 with a fixed TFLite batch of 2: 3 full chunks + 1 padded
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            expected = model(x).numpy()
        for run in (run_onnx, run_tflite):
            got = run(onnx_path if run is run_onnx else tflite_path, x.numpy())
            assert got.shape == (n, 10) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{run.__name__} batch {n}")


def test_open_runtime_loads_once_and_serves_every_batch(tiny_files, tmp_path):
    model, onnx_path, tflite_path = tiny_files
    runners = [open_runtime(onnx_path), open_runtime(tflite_path, threads=2)]
    for n in (3, 8, 1):
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            expected = model(x).numpy()
        for run in runners:
            np.testing.assert_allclose(run(x.numpy()), expected, atol=1e-4)
    with pytest.raises(UserError, match=r"unknown suffix '\.pt'; expected \.onnx or \.tflite"):
        open_runtime(tmp_path / "m.pt")


def test_threads_do_not_change_results(tiny_files):
    _, onnx_path, tflite_path = tiny_files
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(onnx_path, x, threads=2), run_onnx(onnx_path, x, threads=1), atol=1e-5)
    np.testing.assert_allclose(run_tflite(tflite_path, x, threads=2), run_tflite(tflite_path, x, threads=1), atol=1e-5)


def test_wrong_shape_and_missing_file_are_user_errors(tiny_files, tmp_path):
    _, onnx_path, tflite_path = tiny_files
    bad = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(UserError, match=r"inputs of shape \(2, 3, 32, 32\) do not fit .*\('N', 3, 16, 16\)"):
        run_onnx(onnx_path, bad)
    with pytest.raises(UserError, match=r"\(2, 3, 16, 16\)"):  # fixed batch 2 shown as is
        run_tflite(tflite_path, bad)
    with pytest.raises(UserError, match="does not exist"):
        run_onnx(tmp_path / "nope.onnx", bad)
    with pytest.raises(UserError, match="non-empty batch"):
        run_tflite(tflite_path, np.zeros((3, 16, 16), np.float32)[None][:0])


def test_int8_io_is_quantized_and_dequantized():
    detail = {"dtype": np.int8, "quantization": (0.5, 3)}
    q = _quantize(np.array([1.0, -100.0, 50.0, 100.0], np.float32), detail)  # x / 0.5 + 3, clipped
    assert q.dtype == np.int8 and q.tolist() == [5, -128, 103, 127]
    assert _dequantize(np.array([5, -128], np.int8), detail).tolist() == [1.0, -65.5]
    assert _quantize(np.ones(2, np.float32), {"dtype": np.float32, "quantization": (0.0, 0)}).tolist() == [1.0, 1.0]


def test_runtime_versions_read_from_metadata():
    import onnxruntime

    versions = runtime_versions()
    assert set(versions) == {"torch", "onnx", "onnxscript", "onnxruntime", "ai_edge_litert", "litert_torch", "tflite_runtime"}
    assert versions["onnxruntime"] == onnxruntime.__version__
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["ai_edge_litert"] is not None and versions["litert_torch"] is not None
    assert tflite_runtime_name() == "ai_edge_litert"


def test_importing_export_stays_light():
    code = (
        "import sys, edgecompress.export, edgecompress.export.runtimes, edgecompress.export.parity;"
        "heavy = ('onnxruntime', 'onnx', 'onnxscript', 'litert_torch', 'ai_edge_litert', 'torchvision');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_dynamic_batch_tflite_runs_any_batch(tmp_path, monkeypatch):
    """A .tflite with a free batch dimension (shape_signature -1) is resized to each batch."""
    import litert_torch

    class ConvMean(torch.nn.Module):  # simple enough for litert-torch's dynamic-shape lowering
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean((2, 3))

    model = ConvMean().eval()
    monkeypatch.setenv("LITERT_TORCH_SHOW_PROGRESS", "n")
    edge = litert_torch.convert(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "dyn.tflite"
    path.write_bytes(edge.model_content())
    run = open_runtime(path)
    for n in (1, 5, 3):
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            np.testing.assert_allclose(run(x.numpy()), model(x).numpy(), atol=1e-5)
