"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, stages of 16/32/64 channels.

Their natural input is 32 px (3x3 stride-1 stem, total stride 4 -> 8x8 final map).
They have no ImageNet stem, so nothing changes with input_size: at 28 px the final
map is 7x7, at 224 px it is 56x56 (and MACs grow 49x). Downsampling shortcuts are
1x1 conv + BN (option B), so ResNet-20 has 272,474 params at 10 classes (option A: 269,722).
"""

from __future__ import annotations

from torch import nn

from edgecompress.models.blocks import BasicBlock, ConvBNAct, make_divisible
from edgecompress.models.common import PooledClassifier, check_model_args
from edgecompress.models.registry import register_model


class CifarResNet(PooledClassifier):
    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth!r}")
        blocks_per_stage = (depth - 2) // 6
        widths = [make_divisible(c * width_mult) for c in (16, 32, 64)]
        layers: list[nn.Module] = [ConvBNAct(in_channels, widths[0], 3, 1)]
        channels = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(channels, width, 2 if stage > 0 and i == 0 else 1))
                channels = width
        self._finish(layers, channels, num_classes, dropout, in_channels, input_size)


@register_model
def resnet20(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 32, dropout: float = 0.0
) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage; 272,474 params and 41 M MACs at 32 px, 10 classes)."""
    return CifarResNet(20, num_classes, in_channels, width_mult, input_size, dropout)


@register_model
def resnet32(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 32, dropout: float = 0.0
) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    return CifarResNet(32, num_classes, in_channels, width_mult, input_size, dropout)


@register_model
def resnet56(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 32, dropout: float = 0.0
) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    return CifarResNet(56, num_classes, in_channels, width_mult, input_size, dropout)
