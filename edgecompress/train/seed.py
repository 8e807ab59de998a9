"""Seeding for reproducible runs."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python's `random`, numpy's global RNG and torch (CPU and CUDA).

    With `deterministic`, also pick deterministic kernels where that costs little:
    cuDNN deterministic/no autotune, and torch's deterministic-algorithm mode in
    warn-only form (an op without a deterministic version warns instead of failing).
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed {seed} must be in [0, 2**32)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every torch.empty with NaN only exposes reads of uninitialised memory
        # (bugs), yet costs ~10% of a CPU training step: not cheap, so off.
        torch.utils.deterministic.fill_uninitialized_memory = False
        # Needed by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
