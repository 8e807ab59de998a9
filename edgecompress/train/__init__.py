"""Training and evaluation: seeded, resumable, with progress bars that know when to hide."""

from __future__ import annotations

from edgecompress.train.config import TrainConfig
from edgecompress.train.evaluate import EvalResult, evaluate
from edgecompress.train.hooks import TrainHook
from edgecompress.train.loop import EpochRecord, TrainHistory, train
from edgecompress.train.progress import progress_enabled
from edgecompress.train.seed import seed_everything

__all__ = [
    "EpochRecord",
    "EvalResult",
    "TrainConfig",
    "TrainHistory",
    "TrainHook",
    "evaluate",
    "progress_enabled",
    "seed_everything",
    "train",
]
