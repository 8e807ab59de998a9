"""Argument checks and the classifier head shared by every zoo model."""

from __future__ import annotations

from torch import nn

# At or below this input size (px) the ImageNet stems drop their early downsampling,
# so 28 px (Fashion-MNIST) and 32 px (CIFAR) inputs keep a final map of >= 2x2.
SMALL_INPUT_MAX = 64


def check_model_args(num_classes: int, in_channels: int, width_mult: float, input_size: int, dropout: float) -> None:
    """ValueError naming the first out-of-range constructor argument."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    if not isinstance(input_size, int) or input_size < 16:
        raise ValueError(f"input_size must be an int >= 16 (px), got {input_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def is_small_input(input_size: int) -> bool:
    return input_size <= SMALL_INPUT_MAX


def linear_classifier(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """Dropout + Linear, or just Linear when dropout is 0 (one node fewer in the graph)."""
    if dropout > 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return nn.Linear(in_features, num_classes)


class PooledClassifier(nn.Module):
    """features -> global average pool -> flatten -> linear classifier.

    The tail every zoo CNN except SqueezeNet shares; subclasses build their feature
    layers and call `_finish`. Module names (features, pool, flatten, classifier) are
    what checkpoints and pruning overrides refer to, so they are fixed here.
    """

    def _finish(self, layers: list[nn.Module], channels: int, num_classes: int, dropout: float,
                in_channels: int, input_size: int) -> None:
        from edgecompress.models.blocks import init_weights

        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = linear_classifier(channels, num_classes, dropout)
        self.input_shape = (in_channels, input_size, input_size)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))
