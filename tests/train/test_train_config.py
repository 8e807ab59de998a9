from __future__ import annotations

import math

import pytest

from edgecompress.train.config import TrainConfig
from edgecompress.train.progress import progress_enabled


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("lr", -1.0), ("lr", math.nan), ("momentum", 1.0), ("weight_decay", -1e-4),
     ("batch_size", 0), ("label_smoothing", 1.0), ("optimizer", "adam"), ("schedule", "step"),
     ("warmup_epochs", 11), ("seed", -1), ("grad_clip", 0.0)],
)
def test_invalid_fields_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_suggestion_and_round_trip():
    with pytest.raises(ValueError, match="did you mean adamw"):
        TrainConfig(optimizer="adamv")
    cfg = TrainConfig(epochs=3, lr=0.1, optimizer="adamw", grad_clip=5.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field.*epoch"):
        TrainConfig.from_dict({"epoch": 3})


def test_lr_schedule_numbers():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, schedule="cosine")
    steps = 10  # 40 steps, 10 of warm-up
    assert [cfg.lr_factor(s, steps) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert cfg.lr_factor(10, steps) == 1.0
    assert cfg.lr_factor(25, steps) == pytest.approx(0.5)
    assert cfg.lr_factor(40, steps) == pytest.approx(0.0)
    assert TrainConfig(epochs=4, schedule="constant").lr_factor(30, steps) == 1.0


def test_progress_switch(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert progress_enabled(True) is False
    assert progress_enabled("always") is True
    assert progress_enabled(False) is False
    monkeypatch.setenv("CI", "false")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert progress_enabled(True) is True
    with pytest.raises(ValueError):
        progress_enabled("sometimes")
