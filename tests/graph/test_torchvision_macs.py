"""MACs and params of every torchvision classification model vs. its published figures.

torchvision publishes, per weights enum, `meta["_ops"]` (GMACs, 3 decimals, counted with a
torch_dispatch counter over conv/mm/addmm/bmm at the weights' own crop size, attention
matmuls included) and `meta["num_params"]`. Both are available offline.

The model is built exactly as its DEFAULT weights build it (some weights change the
architecture: a ViT's image size and position embedding, GoogLeNet's dropped aux heads),
with the weights download replaced by nothing: the figures describe that architecture,
and weights values do not change MACs or parameter counts.
"""

from __future__ import annotations

import warnings

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from torchvision.models import get_model, get_model_weights, list_models  # noqa: E402
from torchvision.models._api import WeightsEnum  # noqa: E402

from edgecompress.graph import analyze  # noqa: E402

# Models published above this many GMACs take seconds to build and run at 1 thread.
SLOW_GMACS = 15.0

_NAMES = list_models(module=torchvision.models)


def _cases() -> list:
    cases = []
    for name in _NAMES:
        gmacs = get_model_weights(name).DEFAULT.meta["_ops"]
        marks = [pytest.mark.slow] if gmacs > SLOW_GMACS else []
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


class _NoWeights(dict):
    """Stands in for a downloaded state dict; loading it leaves the random init alone."""


def build_as_published(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.nn.Module, WeightsEnum]:
    weights = get_model_weights(name).DEFAULT
    load = torch.nn.Module.load_state_dict

    def load_or_skip(self, state_dict, *args, **kwargs):
        if isinstance(state_dict, _NoWeights):
            return None
        return load(self, state_dict, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: _NoWeights())
        mp.setattr(torch.nn.Module, "load_state_dict", load_or_skip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notice
            # On the meta device: shapes without storage, so even ViT-H/14 builds and counts in a
            # second. RegNets read a tensor's value while building: built on the CPU, counted on meta.
            try:
                with torch.device("meta"):
                    model = get_model(name, weights=weights)
            except NotImplementedError:
                model = get_model(name, weights=weights).to("meta")
    return model, weights


def test_model_list_is_complete():
    assert len(_NAMES) == 80  # torchvision 0.29.1; a new model is covered automatically


@pytest.mark.parametrize("name", _cases())
def test_macs_and_params_match_published(name: str, monkeypatch: pytest.MonkeyPatch):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, weights = build_as_published(name, monkeypatch)
    size = weights.transforms().crop_size[0]

    result = analyze(model, (3, size, size))

    published = weights.meta["_ops"]
    gmacs = result.total_macs / 1e9
    tolerance = max(0.01 * published, 0.0005)
    assert abs(gmacs - published) <= tolerance, (name, size, gmacs, published)
    assert result.total_params == weights.meta["num_params"]
    assert result.input_shape == (1, 3, size, size)
