"""ONNX export: every zoo model and six torchvision models convert and match PyTorch."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.export.onnx_export import export_onnx
from edgecompress.export.parity import check_parity
from edgecompress.export.runtimes import run_onnx
from edgecompress.models import list_models

TORCHVISION = ["mobilenet_v2", "mobilenet_v3_small", "resnet18", "shufflenet_v2_x1_0", "squeezenet1_1", "efficientnet_b0"]


def _assert_exported(model, shape, path):
    x = torch.randn(1, *shape)
    export_onnx(model, x, path)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17

    inputs = torch.randn(12, *shape, generator=torch.Generator().manual_seed(1))
    result = check_parity(model, path, inputs)
    assert result.n_samples == 12
    assert result.logit_scale > 5  # trained-like logits: the comparison means something
    assert result.max_abs_diff < 1e-3 * result.logit_scale, result.summary()
    assert result.top1_agreement == 1.0
    assert result.passed
    return result


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_export_and_match(name, tmp_path, trained_like):
    import torchvision

    model = trained_like(getattr(torchvision.models, name)(weights=None), (3, 64, 64))
    _assert_exported(model, (3, 64, 64), tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", list_models())
def test_zoo_models_export_and_match(name, tmp_path, trained_like, make_zoo_model):
    model = make_zoo_model(name)
    shape = tuple(model.input_shape)
    assert shape == (1, 32, 32)
    _assert_exported(trained_like(model, shape), shape, tmp_path / f"{name}.onnx")


def test_unexportable_op_names_op_and_module(tmp_path, nets):
    path = tmp_path / "eig.onnx"
    with pytest.raises(UserError) as err:
        export_onnx(nets["EigNet"]().eval(), torch.randn(1, 3, 16, 16), path)
    message = str(err.value)
    assert "aten.linalg_eig" in message
    assert "head.1 (Inner)" in message
    assert "conftest.py:" in message  # the user's source line
    assert "\n" not in message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_op_without_torchscript_symbolic_falls_back_to_dynamo(tmp_path):
    class Spectrum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            # the legacy exporter has no symbolic for aten::fft_rfft2; torch.export decomposes it
            return torch.fft.rfft2(self.conv(x)).abs().mean((2, 3))

    model = Spectrum().eval()
    path = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "fft.onnx")
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18  # dynamo's minimum
    result = check_parity(model, path, torch.randn(8, 3, 16, 16))
    assert result.passed, result.summary()
    assert result.max_abs_diff < 1e-3
    # One self-contained file (weights inside, no side file): it still runs after a move.
    assert [p.name for p in tmp_path.iterdir()] == ["fft.onnx"]
    moved = path.rename(tmp_path.parent / f"{tmp_path.name}-moved.onnx")
    assert check_parity(model, moved, torch.randn(8, 3, 16, 16)).passed


def test_data_dependent_branch_warns(tmp_path, nets):
    with pytest.warns(UserWarning, match="may depend on the example input"):
        export_onnx(nets["BranchNet"]().eval(), torch.randn(1, 3, 16, 16), tmp_path / "branch.onnx")


def test_fixed_batch_file_is_run_in_chunks(tmp_path, nets, trained_like):
    model = trained_like(nets["TinyNet"](), (3, 16, 16))
    path = export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "fixed.onnx", dynamic_batch=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = torch.randn(5, 3, 16, 16)  # 2 + 2 + 1 (zero-padded)
    got = run_onnx(path, x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_keeps_training_mode_and_overwrites_atomically(tmp_path, nets):
    model = nets["TinyNet"]().train()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    export_onnx(model, torch.randn(1, 3, 16, 16), path)
    assert model.training
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_arguments_are_user_errors(tmp_path, nets):
    with pytest.raises(UserError, match="opset 5"):
        export_onnx(nets["TinyNet"](), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", opset=5)
    with pytest.raises(UserError, match="example_input"):
        export_onnx(nets["TinyNet"](), np.zeros((1, 3, 16, 16)), tmp_path / "m.onnx")


def test_no_native_log_noise(tmp_path, nets, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the legacy exporter's DeprecationWarning stays inside
        export_onnx(nets["TinyNet"]().eval(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
