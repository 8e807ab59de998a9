"""DARTS cell networks (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019).

`create_model("darts_net", genotype=..., C=16, layers=5)` builds the discrete network a
cell search derived: a 3x3 stem, `layers` cells (reduction cells at layers//3 and
2*layers//3, as in DARTS, where the channel count doubles and the map halves), global
average pooling and a linear classifier. Every cell takes the outputs of the two cells
before it (s0, s1), brings both to C channels (1x1 ReLU-conv-BN; a factorized reduce when
the previous cell halved the map) and computes its intermediate nodes, each the sum of
two ops applied to earlier states; the cell's output is the concatenation of all its
intermediate nodes (nodes * C channels).

The genotype is plain JSON, so a derived child saves with `save_checkpoint` and reloads
with `load_model`:

    {"normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]],   # node 2: two (op, input) pairs
                [["sep_conv_3x3", 1], ["dil_conv_3x3", 2]]],  # node 3 ...
     "reduce": [...]}                                         # same node count

Inputs 0 and 1 are s0 and s1, input i >= 2 is intermediate node i. In a reduction cell
the ops reading s0 or s1 have stride 2. The default genotype is the one DARTS
(second order) found on CIFAR-10 (`DARTS_V2`, 4 nodes per cell).

The ops (OPS) are DARTS's: ReLU-conv-BN ordering, separable convs applied twice,
dilated convs with dilation 2, pools without BN (as DARTS's evaluation network; the
search network adds a non-affine BN after pools), and a factorized reduce (two 1x1
stride-2 convs on the map and on the map shifted by one pixel) for skip_connect in a
reduction cell. Odd map sides work: the shifted path is zero-padded at the bottom/right,
so all paths give ceil(H / 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.models.common import check_model_args, linear_classifier
from edgecompress.models.registry import register_model

#: every op a cell edge can hold, in DARTS's order; "none" exists only in the search
PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")

#: DARTS (second order) on CIFAR-10, from the authors' genotypes.py
DARTS_V2 = {
    "normal": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]],
               [["sep_conv_3x3", 1], ["skip_connect", 0]], [["skip_connect", 0], ["dil_conv_3x3", 2]]],
    "reduce": [[["max_pool_3x3", 0], ["max_pool_3x3", 1]], [["skip_connect", 2], ["max_pool_3x3", 1]],
               [["max_pool_3x3", 0], ["skip_connect", 2]], [["skip_connect", 2], ["max_pool_3x3", 1]]],
}


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN (the preprocessing of a cell's inputs)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise dilated conv -> 1x1 conv -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """DARTS's separable conv: (ReLU, depthwise, 1x1, BN) twice, the stride in the first depthwise."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_in, kernel, stride, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_in, kernel, 1, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """ReLU, then two 1x1 stride-2 convs, on the map and on the map shifted by one pixel,
    concatenated (c_out // 2 + the rest channels), then BN: halves the map (ceil(H / 2))."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out < 2:
            raise ValueError(f"a factorized reduce needs >= 2 output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # same size as x, so odd sides give ceil(H/2) too
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


class Zero(nn.Module):
    """The "none" op of the search: zeros of the output's shape (a missing edge)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _skip(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)


#: op name -> (C, stride, affine) -> module keeping C channels
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride, 1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride, 1, count_include_pad=False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells among `layers` cells: layers//3 and 2*layers//3 (DARTS)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool) -> tuple[nn.Module, nn.Module]:
    """The two input adapters of a cell: s0 (halved when the previous cell reduced) and s1 to C channels."""
    first = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
    return first, ReLUConvBN(c_p, c, 1, 1, 0, affine)


def stem(in_channels: int, channels: int) -> nn.Sequential:
    """3x3 conv (stride 1) + BN: the CIFAR stem of DARTS, kept for 28-32 px inputs."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))


class Cell(nn.Module):
    """A discrete cell: per node two ops on earlier states, summed; output = concat of the nodes."""

    def __init__(self, nodes: Sequence[Sequence[Sequence[Any]]], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = preprocess(c_pp, c_p, c, reduction_prev, affine=True)
        pairs = [(str(op), int(j)) for node in nodes for op, j in node]
        self.inputs = [j for _, j in pairs]
        self.ops = nn.ModuleList(OPS[op](c, 2 if reduction and j < 2 else 1, True) for op, j in pairs)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for n in range(len(self.ops) // 2):
            a, b = 2 * n, 2 * n + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat(states[2:], dim=1)


class CellFeatures(nn.Module):
    """stem -> cells (each fed the two previous outputs): the final feature map."""

    def __init__(self, stem: nn.Module, cells: nn.ModuleList) -> None:
        super().__init__()
        self.stem = stem
        self.cells = cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1


class DartsNet(nn.Module):
    """features (stem + cells) -> global average pool -> flatten -> classifier, as the zoo's CNNs."""

    def __init__(self, genotype: Mapping[str, Any], C: int, layers: int, num_classes: int, in_channels: int,
                 input_size: int, stem_multiplier: int, dropout: float) -> None:
        super().__init__()
        from edgecompress.models.blocks import init_weights

        nodes = check_genotype(genotype)
        c_stem = stem_multiplier * C
        c_pp, c_p, c = c_stem, c_stem, C
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            c = c * 2 if reduction else c
            cells.append(Cell(genotype["reduce" if reduction else "normal"], c_pp, c_p, c, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, nodes * c, reduction
        self.features = CellFeatures(stem(in_channels, c_stem), nn.ModuleList(cells))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = linear_classifier(c_p, num_classes, dropout)
        self.input_shape = (in_channels, input_size, input_size)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def check_genotype(genotype: Any) -> int:
    """The node count of a valid genotype; ValueError naming what is wrong otherwise."""
    if not isinstance(genotype, Mapping) or set(genotype) != {"normal", "reduce"}:
        keys = sorted(genotype) if isinstance(genotype, Mapping) else type(genotype).__name__
        raise ValueError(f"genotype must be a mapping with keys 'normal' and 'reduce', got {keys}")
    counts = set()
    for kind in ("normal", "reduce"):
        nodes = genotype[kind]
        if not isinstance(nodes, Sequence) or isinstance(nodes, str) or not nodes:
            raise ValueError(f"genotype[{kind!r}] must be a non-empty list of nodes, got {nodes!r}")
        counts.add(len(nodes))
        for n, node in enumerate(nodes):
            where = f"genotype[{kind!r}][{n}] (node {n + 2})"
            if not isinstance(node, Sequence) or len(node) != 2:
                raise ValueError(f"{where} must be two (op, input) pairs, got {node!r}")
            for pair in node:
                if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                    raise ValueError(f"{where}: {pair!r} is not an (op, input) pair")
                op, j = pair
                if op not in OPS or op == "none":
                    raise ValueError(f"{where}: op {op!r} must be one of {', '.join(PRIMITIVES[1:])}")
                if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < n + 2:
                    raise ValueError(f"{where}: input {j!r} must be an int in [0, {n + 1}] (s0, s1 or an earlier node)")
    if len(counts) != 1:
        raise ValueError(f"genotype normal and reduce cells must have the same node count, got {sorted(counts)}")
    return counts.pop()


@register_model
def darts_net(
    genotype: Mapping[str, Any] | None = None, C: int = 16, layers: int = 5, num_classes: int = 10,
    in_channels: int = 3, width_mult: float = 1.0, input_size: int = 32, stem_multiplier: int = 3,
    dropout: float = 0.0,
) -> DartsNet:
    """A DARTS cell network from a genotype (default DARTS_V2) with C initial cell channels
    (times width_mult), `layers` cells and a stem of stem_multiplier * C channels."""
    check_model_args(num_classes, in_channels, width_mult, input_size, dropout)
    for name, value in (("C", C), ("layers", layers), ("stem_multiplier", stem_multiplier)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    channels = max(1, round(C * width_mult))
    return DartsNet(DARTS_V2 if genotype is None else genotype, channels, layers, num_classes, in_channels,
                    input_size, stem_multiplier, dropout)
