"""A latency function that exports and measures on a device (edgecompress/latency/source.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.devices import get_device
from edgecompress.errors import UserError
from edgecompress.latency.source import measured_latency_fn

torch.set_num_threads(1)


def test_measured_latency_is_positive_and_grows_with_the_model(tmp_path) -> None:
    fn = measured_latency_fn(get_device("host"), (3, 32, 32), runtime="onnxruntime", runs=20, warmup=3, work_dir=tmp_path)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    big = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))
    t_small, t_big = fn(small), fn(big)
    assert 0 < t_small < t_big  # ~0.3 M vs ~150 M MACs: far apart even on a busy machine
    assert list(tmp_path.iterdir()) == []  # candidates are exported to a temporary folder and removed


def test_unknown_runtime_is_a_user_error() -> None:
    with pytest.raises(UserError, match="latency runtime 'tensorrt'"):
        measured_latency_fn(get_device("host"), (3, 8, 8), runtime="tensorrt")
