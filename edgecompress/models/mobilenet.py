"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018).

Small inputs (input_size <= 64 px): the stem conv's stride 2 becomes 1, so the
total stride drops from 32 to 16 and a 28 or 32 px input ends in a 2x2 map.
"""

from __future__ import annotations

from torch import nn

from edgecompress.models.blocks import ConvBNAct, DepthwiseSeparable, InvertedResidual, make_divisible
from edgecompress.models.common import PooledClassifier, check_model_args, is_small_input
from edgecompress.models.registry import register_model

# (out_channels, stride) of the 13 depthwise-separable units at width 1.0.
_V1_UNITS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

# (expand_ratio, out_channels, repeats, first_stride) per stage at width 1.0.
_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV1(PooledClassifier):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        stem_stride = 1 if is_small_input(input_size) else 2
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride)]
        for out, stride in _V1_UNITS:
            out = make_divisible(out * width_mult)
            layers.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        self._finish(layers, channels, num_classes, dropout, in_channels, input_size)


class MobileNetV2(PooledClassifier):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        stem_stride = 1 if is_small_input(input_size) else 2
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride, act=nn.ReLU6)]
        for t, c, n, s in _V2_STAGES:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        # The last conv is never made narrower than 1280: the paper keeps it for width < 1.
        last = make_divisible(1280 * max(1.0, width_mult))
        layers.append(ConvBNAct(channels, last, 1, act=nn.ReLU6))
        self._finish(layers, last, num_classes, dropout, in_channels, input_size)


@register_model
def mobilenet_v1(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.2
) -> MobileNetV1:
    """MobileNetV1: 3x3 stem + 13 depthwise-separable units (4.23 M params, 569 M MACs at 224 px)."""
    return MobileNetV1(num_classes, in_channels, width_mult, input_size, dropout)


@register_model
def mobilenet_v2(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2: inverted residuals with linear bottlenecks (3.50 M params, 301 M MACs at 224 px)."""
    return MobileNetV2(num_classes, in_channels, width_mult, input_size, dropout)
