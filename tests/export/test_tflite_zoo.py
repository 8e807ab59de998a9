"""Every zoo model converts to TFLite and matches PyTorch under LiteRT (3-15 s each)."""

from __future__ import annotations

import pytest
import torch

from edgecompress.export.parity import check_parity
from edgecompress.export.tflite_export import export_tflite
from edgecompress.models import list_models

# resnet20 and squeezenet also run in the fast file test_tflite_export.py.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_converts_and_matches(name, tmp_path, trained_like, make_zoo_model):
    model = make_zoo_model(name)
    shape = tuple(model.input_shape)
    trained_like(model, shape)
    path = export_tflite(model, torch.randn(1, *shape), tmp_path / f"{name}.tflite")
    result = check_parity(model, path, torch.randn(8, *shape, generator=torch.Generator().manual_seed(2)))
    assert result.logit_scale > 5
    assert result.max_abs_diff < 1e-3 * result.logit_scale, result.summary()
    assert result.top1_agreement == 1.0
    assert result.passed
