"""The model zoo and model loading.

`create_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=28)` builds a zoo
model; `load_model(spec)` turns any MODEL spec the CLI accepts (zoo:, torchvision:, a .pt
file, module:function) into an eval-mode nn.Module plus its default input shape.
"""

from __future__ import annotations

# Imported for their @register_model side effect.
from edgecompress.models import darts, mobilenet, resnet_cifar, searched, shufflenet, squeezenet  # noqa: F401
from edgecompress.models.loading import CHECKPOINT_FORMAT, LoadedModel, load_model, save_checkpoint
from edgecompress.models.registry import create_model, list_models, register_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedModel",
    "create_model",
    "list_models",
    "load_model",
    "register_model",
    "save_checkpoint",
]
