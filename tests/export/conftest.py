"""Shared fixtures for the export tests: one torch thread, and models with realistic logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from support import one_torch_thread  # noqa: F401  (an autouse fixture: one torch thread)


def _trained_like(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Make a random-init model behave numerically like a trained one, in eval mode.

    Random-init torchvision models give logits around 1e-15 (BatchNorm running stats at
    their defaults, tiny classifier init), so any export would "match". Here BatchNorm
    statistics are estimated on random inputs and the last layer is scaled so that the
    logits have a std of 4 (max |logit| around 10, as for a trained classifier).
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((16, *input_shape), generator=generator))
        model.eval()
        last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        scale = 4.0 / float(model(torch.randn((16, *input_shape), generator=generator)).std())
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
    return model


@pytest.fixture(scope="session")
def trained_like():
    return _trained_like


def zoo_model(name: str) -> nn.Module:
    from edgecompress.models import create_model

    # Small but structurally complete (every block kind, shuffles, residuals): 1x32x32 input.
    return create_model(name, num_classes=10, in_channels=1, input_size=32, width_mult=0.5)


@pytest.fixture(scope="session")
def make_zoo_model():
    return zoo_model


class Inner(nn.Module):
    """Computes eigenvalues: no ONNX translation and no TFLite lowering exist for aten.linalg_eig."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        gram = y[:, :4, None] * y[:, None, :4]
        return torch.linalg.eigvals(gram).real


class EigNet(nn.Module):
    """A conv net whose head (module path 'head.1') uses an unexportable op."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.Identity(), Inner())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


class BranchNet(nn.Module):
    """Python control flow on a tensor value: a trace bakes in one branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        if y.sum() > 0:
            return y
        return -y


class TinyNet(nn.Module):
    """Conv-BN-ReLU, depthwise conv, pooling, linear: converts in ~2 s."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@pytest.fixture(scope="session")
def nets():
    """The test network classes, by name."""
    return {"EigNet": EigNet, "BranchNet": BranchNet, "TinyNet": TinyNet}
