"""TFLite export through litert-torch: fast cases (a tiny net, two small zoo models, errors)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.export.parity import check_parity
from edgecompress.export.runtimes import run_tflite
from edgecompress.export.tflite_export import export_tflite


def test_tiny_net_converts_keeps_nchw_and_loops_over_batches(tmp_path, nets, trained_like, capfd):
    model = trained_like(nets["TinyNet"](), (3, 16, 16))
    path = export_tflite(model, torch.randn(1, 3, 16, 16), tmp_path / "tiny.tflite")
    assert path.read_bytes()[4:8] == b"TFL3"  # flatbuffer file identifier
    out, err = capfd.readouterr()
    assert "LiteRT-Torch Convert" not in out + err  # progress lines hidden
    assert "Estimated count" not in out + err  # absl logs hidden

    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    assert list(detail["shape"]) == [1, 3, 16, 16]  # PyTorch's NCHW, batch of the example

    x = torch.randn(5, 3, 16, 16)
    got = run_tflite(path, x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert os.environ.get("LITERT_TORCH_SHOW_PROGRESS") is None  # restored


@pytest.mark.parametrize("name", ["resnet20", "squeezenet"])
def test_small_zoo_models_match(name, tmp_path, trained_like, make_zoo_model):
    model = make_zoo_model(name)
    shape = tuple(model.input_shape)
    trained_like(model, shape)
    path = export_tflite(model, torch.randn(1, *shape), tmp_path / f"{name}.tflite")
    result = check_parity(model, path, torch.randn(8, *shape))
    assert result.logit_scale > 5
    assert result.max_abs_diff < 1e-3 * result.logit_scale, result.summary()
    assert result.top1_agreement == 1.0
    assert result.runtime.startswith("ai_edge_litert ")


def test_unlowerable_op_names_op_and_module(tmp_path, nets):
    path = tmp_path / "eig.tflite"
    with pytest.raises(UserError) as err:
        export_tflite(nets["EigNet"]().eval(), torch.randn(1, 3, 16, 16), path)
    message = str(err.value)
    assert message.startswith("TFLite export of EigNet failed at op aten.linalg_eig in module head.1 (Inner)")
    assert "conftest.py:" in message
    assert "\n" not in message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_data_dependent_branch_is_refused_with_source_line(tmp_path, nets):
    with pytest.raises(UserError) as err:
        export_tflite(nets["BranchNet"]().eval(), torch.randn(1, 3, 16, 16), tmp_path / "b.tflite")
    message = str(err.value)
    assert "data-dependent" in message
    assert "conftest.py:" in message
    assert "make forward() traceable by torch.export" in message


def test_model_mode_is_restored(tmp_path, nets):
    model = nets["TinyNet"]().train()
    export_tflite(model, torch.randn(1, 3, 16, 16), tmp_path / "m.tflite")
    assert model.training
