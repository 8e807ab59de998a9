"""SqueezeNet v1.1 (Iandola et al. 2016, the v1.1 layout from the authors' repository).

3x3 stride-2 stem conv (64) + max-pool, eight Fire modules with two more max-pools,
then the canonical head: dropout, 1x1 conv to the classes, ReLU, global average pool.
Max-pools use ceil_mode like the original Caffe model (224 px -> 13x13 final map).
Small inputs (input_size <= 64 px): the stem conv gets stride 1 and padding 1, the
three max-pools stay (total stride 16 -> 8): 28 px ends in a 3x3 map, 32 px in 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.models.blocks import Fire, init_weights, make_divisible
from edgecompress.models.common import check_model_args, is_small_input
from edgecompress.models.registry import register_model

# Fire (squeeze, expand) widths at 1.0x; "M" is a 3x3 stride-2 max-pool.
_LAYOUT: list[tuple[int, int] | str] = [
    (16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256)
]


class SqueezeNet(nn.Module):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        channels = make_divisible(64 * width_mult)
        small = is_small_input(input_size)
        stem = nn.Conv2d(in_channels, channels, 3, stride=1 if small else 2, padding=1 if small else 0)
        layers: list[nn.Module] = [stem, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True)]
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            squeeze, expand = (make_divisible(c * width_mult) for c in item)
            layers.append(Fire(channels, squeeze, expand, expand))
            channels = 2 * expand
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(channels, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), final_conv, nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.input_shape = (in_channels, input_size, input_size)
        init_weights(self)
        # Kaiming on the class conv gives huge initial logits after its ReLU; start small.
        nn.init.normal_(final_conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.classifier(self.features(x))))


@register_model
def squeezenet(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.5
) -> SqueezeNet:
    """SqueezeNet v1.1: Fire modules, 1x1-conv classifier (1.24 M params, 349 M MACs at 224 px)."""
    return SqueezeNet(num_classes, in_channels, width_mult, input_size, dropout)
