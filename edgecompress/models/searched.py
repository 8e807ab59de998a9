"""Networks found by an architecture search: `mobile_space_net`, one choice per block of a space.

    create_model("mobile_space_net", space=load_space("mobile").to_dict(),
                 choices=["mb_k3_e3", "skip", ...], num_classes=10, in_channels=1, input_size=28)

The space (edgecompress/search/spaces) fixes the skeleton: 3x3 stem conv (ReLU6), the
stages' blocks, a 1x1 head conv (ReLU6), global average pooling, a linear classifier.
`choices` names what each block is (see the spaces docstring): an inverted residual
(`MBConv`, k x k depthwise, expansion 3 or 6, optional squeeze-excitation), a
ShuffleNetV2 unit, or `skip`. A skipped block stays in `features` as nn.Identity, so
module names (features.<1 + block index>) do not depend on which blocks were skipped
and a search's supernet weights map onto the child one to one; exporters drop the
identities.

`space` and `choices` are plain JSON values, so `save_checkpoint(child, path,
arch_spec="zoo:mobile_space_net", arch_kwargs={...})` reloads with `load_model(path)`.
Without `choices`, block b takes the (b mod n)-th of its n allowed non-skip choices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgecompress.models.blocks import ConvBNAct, InvertedResidual, ShuffleUnitV2
from edgecompress.models.common import PooledClassifier, check_model_args
from edgecompress.models.registry import register_model


class MBConv(InvertedResidual):
    """Inverted residual: 1x1 expand (ReLU6) -> k x k depthwise (ReLU6) -> [squeeze-excite] ->
    1x1 linear project; identity shortcut when the shape is kept (stride 1, in == out).
    MobileNetV2's `InvertedResidual` with the kernel size and SE the search chooses."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int, expand: int,
                 se: bool = False) -> None:
        super().__init__(in_channels, out_channels, stride, expand, kernel=kernel, se=se)


def build_choice(name: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The block `name` (a space choice, e.g. "mb_k5_e6_se") from in to out channels at `stride`."""
    from edgecompress.search.spaces import parse_choice

    spec = parse_choice(name)
    if spec.kind == "skip":
        if stride != 1 or in_channels != out_channels:
            raise ValueError(f"skip keeps the shape; it cannot go from {in_channels} to {out_channels} channels "
                             f"at stride {stride}")
        return nn.Identity()
    if spec.kind == "shuffle":
        if stride == 1 and in_channels != out_channels:
            # A stage that widens without downsampling starts with ShuffleNetV2's two-branch
            # (downsampling) unit whose depthwise convs run at stride 1.
            unit = ShuffleUnitV2(in_channels, out_channels, 2)
            for conv in (unit.branch1[0].conv, unit.branch2[1].conv):
                conv.stride = (1, 1)
            return unit
        return ShuffleUnitV2(in_channels, out_channels, stride)
    return MBConv(in_channels, out_channels, stride, spec.kernel, spec.expand, spec.se)


def stem_layer(space: Any, in_channels: int, width_mult: float = 1.0) -> nn.Module:
    from edgecompress.search.spaces import scale_channels

    return ConvBNAct(in_channels, scale_channels(space.stem_channels, width_mult), 3, space.stem_stride,
                     act=nn.ReLU6)


def head_layer(space: Any, width_mult: float = 1.0) -> nn.Module:
    from edgecompress.search.spaces import scale_channels

    last = scale_channels(space.stages[-1].channels, width_mult)
    return ConvBNAct(last, scale_channels(space.head_channels, width_mult), 1, act=nn.ReLU6)


class MobileSpaceNet(PooledClassifier):
    """features = [stem, one module per block (nn.Identity where skipped), head], then pool and classifier."""

    def __init__(self, space: Any, choices: Sequence[str], num_classes: int, in_channels: int, width_mult: float,
                 input_size: int, dropout: float) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
        self.choices = space.check_choices(choices)
        layers = [stem_layer(space, in_channels, width_mult)]
        for slot, name in zip(space.blocks(width_mult), self.choices):
            layers.append(build_choice(name, slot.cin, slot.cout, slot.stride))
        head = head_layer(space, width_mult)
        layers.append(head)
        self._finish(layers, head.conv.out_channels, num_classes, dropout, in_channels, input_size)


@register_model
def mobile_space_net(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224,
    dropout: float = 0.0, space: Mapping[str, Any] | str = "mobile", choices: Sequence[str] | None = None,
) -> MobileSpaceNet:
    """A child of a search space: `space` (its to_dict(), a bundled name or a YAML path) and one choice per block."""
    from edgecompress.search.spaces import MobileSpace, load_space

    resolved = MobileSpace.from_dict(space, "mobile_space_net space") if isinstance(space, Mapping) \
        else load_space(space)
    chosen = resolved.default_choices() if choices is None else list(choices)
    return MobileSpaceNet(resolved, chosen, num_classes, in_channels, width_mult, input_size, dropout)
