"""A tiny learnable image task and model shared by the training-loop tests."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.data.fashion_mnist import FashionMNIST


def tiny_data(n: int, seed: int) -> FashionMNIST:
    """Learnable 12x12 images: class c has a bright 4x4 square at a class-specific place."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 12, 12), generator=g).to(torch.uint8)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        images[i, r * 6 + 1 : r * 6 + 5, col * 6 + 1 : col * 6 + 5] = 250
    return FashionMNIST(images, labels, (1, 12, 12))


def tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Dropout(0.2), nn.Linear(36, 4),
    )
