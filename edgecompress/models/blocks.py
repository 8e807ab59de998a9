"""Building blocks shared by the model zoo.

Only stock `nn` modules and plain tensor ops (view/transpose/flatten, cat, chunk, add)
are used, so every block traces with torch.fx and exports to ONNX and TFLite.
Conv layers that feed a BatchNorm have no bias (the BN shift replaces it).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never dropping below 90%.

    Runtimes (ONNX Runtime's NCHWc layout, XNNPACK) run channel counts that are
    multiples of 8 much faster, hence width multipliers round through this.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down must not lose more than 10% of the width
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; `act=None` leaves the activation out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            "bn": nn.BatchNorm2d(out_channels),
        }
        if act is not None:
            layers["act"] = act(inplace=True)
        super().__init__(OrderedDict(layers))


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1 unit: 3x3 depthwise conv (carries the stride) then 1x1 pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        dw = ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels)
        super().__init__(OrderedDict(dw=dw, pw=ConvBNAct(in_channels, out_channels, 1)))


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-excitation: global pool -> 1x1 conv to channels/4 (ReLU) -> 1x1
    conv back (hard sigmoid) -> per-channel scale of the input. Hard sigmoid rather than
    the original sigmoid because it is what phones' runtimes run fast (as in MobileNetV3)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels / 4)
        self.scale = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), reduce=nn.Conv2d(channels, squeeze, 1), act=nn.ReLU(inplace=True),
            expand=nn.Conv2d(squeeze, channels, 1), gate=nn.Hardsigmoid(inplace=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 unit: 1x1 expand (ReLU6) -> k x k depthwise (ReLU6, k = 3 in MobileNetV2)
    -> [squeeze-excite] -> 1x1 linear project.

    The identity shortcut exists only when the shape is kept (stride 1, in == out).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float, *, kernel: int = 3,
                 se: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: dict[str, nn.Module] = {}
        if expand_ratio != 1:
            layers["expand"] = ConvBNAct(in_channels, hidden, 1, act=nn.ReLU6)
        layers["dw"] = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.ReLU6)
        if se:
            layers["se"] = SqueezeExcite(hidden)
        layers["project"] = ConvBNAct(hidden, out_channels, 1, act=None)
        self.conv = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class ChannelShuffle(nn.Module):
    """Interleave channels across `groups`: (N, g*c, H, W) -> view (N, g, c, H, W) -> swap -> flatten.

    Written with unflatten/transpose/flatten (no shape reads), so torch.fx records
    three plain call_method nodes and exporters see ordinary reshape/transpose ops.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ShuffleUnitV1(nn.Module):
    """ShuffleNetV1 unit: grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1.

    Stride 1: residual add (in == out). Stride 2: the branch produces `out - in`
    channels and is concatenated with a 3x3 average-pooled copy of the input.
    `first_pointwise_groups=1` is used for the very first unit, whose 24-channel
    input is too narrow to split into groups (as in the paper).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, first_pointwise_groups: int | None = None
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride-1 ShuffleUnitV1 needs in == out channels, got {in_channels} -> {out_channels}")
        self.stride = stride
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        mid = out_channels // 4
        g1 = groups if first_pointwise_groups is None else first_pointwise_groups
        for name, channels, g in (("mid", mid, groups), ("branch_out", branch_out, groups), ("in", in_channels, g1)):
            if channels % g:
                raise ValueError(f"ShuffleUnitV1 {name} channels {channels} not divisible by groups {g}")
        self.reduce = ConvBNAct(in_channels, mid, 1, groups=g1)
        self.shuffle = ChannelShuffle(g1) if g1 > 1 else nn.Identity()
        self.dw = ConvBNAct(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = ConvBNAct(mid, branch_out, 1, groups=groups, act=None)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.dw(self.shuffle(self.reduce(x))))
        if self.stride == 2:
            return self.act(torch.cat([self.shortcut(x), out], dim=1))
        return self.act(x + out)


class ShuffleUnitV2(nn.Module):
    """ShuffleNetV2 unit.

    Stride 1: split channels in half, transform one half, concat, shuffle (groups=2).
    Stride 2: both branches see the whole input and each produces half the output.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_channels % 2:
            raise ValueError(f"ShuffleUnitV2 out_channels must be even, got {out_channels}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride-1 ShuffleUnitV2 needs in == out channels, got {in_channels} -> {out_channels}")
        self.stride = stride
        half = out_channels // 2
        branch_in = in_channels if stride == 2 else half
        if stride == 2:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, 2, groups=in_channels, act=None),
                ConvBNAct(in_channels, half, 1),
            )
        else:
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(
            ConvBNAct(branch_in, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.branch2(right)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return self.shuffle(out)


class Fire(nn.Module):
    """SqueezeNet Fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated.

    Canonical SqueezeNet has biased convs and no BatchNorm; kept that way.
    """

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_act = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_act = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat([self.expand1x1_act(self.expand1x1(x)), self.expand3x3_act(self.expand3x3(x))], dim=1)


class BasicBlock(nn.Module):
    """CIFAR ResNet block: two 3x3 convs; shortcut is identity or 1x1 conv + BN (option B).

    Option B (a real conv) is used instead of option A's zero-padded strided slice
    because it is an ordinary layer that prunes, traces and exports cleanly.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, stride)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, 1, act=None)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvBNAct(in_channels, out_channels, 1, stride, act=None)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), BN weight 1 / bias 0, small-normal Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
