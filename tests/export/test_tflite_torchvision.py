"""Six torchvision classifiers convert to TFLite and match PyTorch (7-20 s each, 64 px)."""

from __future__ import annotations

import pytest
import torch

from edgecompress.export.parity import check_parity
from edgecompress.export.tflite_export import export_tflite

pytestmark = pytest.mark.slow

TORCHVISION = ["mobilenet_v2", "mobilenet_v3_small", "resnet18", "shufflenet_v2_x1_0", "squeezenet1_1", "efficientnet_b0"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model_converts_and_matches(name, tmp_path, trained_like):
    import torchvision

    model = trained_like(getattr(torchvision.models, name)(weights=None), (3, 64, 64))
    path = export_tflite(model, torch.randn(1, 3, 64, 64), tmp_path / f"{name}.tflite")
    result = check_parity(model, path, torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    assert result.logit_scale > 5
    assert result.max_abs_diff < 1e-3 * result.logit_scale, result.summary()
    assert result.top1_agreement == 1.0
    assert result.passed
