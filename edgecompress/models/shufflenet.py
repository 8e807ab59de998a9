"""ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018).

Both: 3x3 stride-2 stem conv (24 channels) + 3x3 stride-2 max-pool, then three stages
whose first unit has stride 2 (total stride 32). Small inputs (input_size <= 64 px):
the stem conv gets stride 1 and the stem max-pool is removed (total stride 8), so a
28 px input ends in a 4x4 map.
"""

from __future__ import annotations

import math

from torch import nn

from edgecompress.models.blocks import ConvBNAct, ShuffleUnitV1, ShuffleUnitV2, make_divisible
from edgecompress.models.common import PooledClassifier, check_model_args, is_small_input
from edgecompress.models.registry import register_model

_STEM = 24
_REPEATS = (4, 8, 4)

# ShuffleNetV1 stage widths at 1x, by number of groups (Table 1 of the paper).
_V1_WIDTHS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}

# ShuffleNetV2 (stage2, stage3, stage4, conv5) widths per published multiplier (Table 5).
_V2_WIDTHS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def _stem(in_channels: int, input_size: int) -> list[nn.Module]:
    if is_small_input(input_size):
        return [ConvBNAct(in_channels, _STEM, 3, 1)]
    return [ConvBNAct(in_channels, _STEM, 3, 2), nn.MaxPool2d(3, stride=2, padding=1)]


class ShuffleNetV1(PooledClassifier):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224,
        dropout: float = 0.0, groups: int = 3,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        if groups not in _V1_WIDTHS:
            raise ValueError(f"groups must be one of {sorted(_V1_WIDTHS)}, got {groups!r}")
        # Widths are multiples of 4*groups (the bottleneck is width/4 and is split into
        # groups) and of 8 (runtime-friendly); the 24-channel stem is divisible by every g.
        divisor = math.lcm(8, 4 * groups)
        layers: list[nn.Module] = _stem(in_channels, input_size)
        channels = _STEM
        for stage, (width, repeats) in enumerate(zip(_V1_WIDTHS[groups], _REPEATS)):
            out = make_divisible(width * width_mult, divisor)
            for i in range(repeats):
                first_groups = 1 if stage == 0 and i == 0 else None
                layers.append(ShuffleUnitV1(channels, out, 2 if i == 0 else 1, groups, first_groups))
                channels = out
        self._finish(layers, channels, num_classes, dropout, in_channels, input_size)


def _v2_widths(width_mult: float) -> tuple[int, int, int, int]:
    if width_mult in _V2_WIDTHS:
        return _V2_WIDTHS[width_mult]
    # Off-table multipliers scale the 1.0x stages; the split needs even widths, 8 keeps them fast.
    s2, s3, s4, last = _V2_WIDTHS[1.0]
    return (*(make_divisible(c * width_mult) for c in (s2, s3, s4)), make_divisible(last * max(1.0, width_mult)))


class ShuffleNetV2(PooledClassifier):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        *stages, last = _v2_widths(width_mult)
        layers: list[nn.Module] = _stem(in_channels, input_size)
        channels = _STEM
        for out, repeats in zip(stages, _REPEATS):
            for i in range(repeats):
                layers.append(ShuffleUnitV2(channels, out, 2 if i == 0 else 1))
                channels = out
        layers.append(ConvBNAct(channels, last, 1))
        self._finish(layers, last, num_classes, dropout, in_channels, input_size)


@register_model
def shufflenet_v1(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.0
) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g=3: grouped 1x1 convs + channel shuffle (1.87 M params, 137 M MACs at 224 px)."""
    return ShuffleNetV1(num_classes, in_channels, width_mult, input_size, dropout, groups=3)


@register_model
def shufflenet_v1_g8(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.0
) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g=8: wider stages, sparser 1x1 convs."""
    return ShuffleNetV1(num_classes, in_channels, width_mult, input_size, dropout, groups=8)


@register_model
def shufflenet_v2(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.0
) -> ShuffleNetV2:
    """ShuffleNetV2: width_mult 0.5/1.0/1.5/2.0 pick the paper's widths, others scale 1.0x (2.28 M params at 1.0)."""
    return ShuffleNetV2(num_classes, in_channels, width_mult, input_size, dropout)
