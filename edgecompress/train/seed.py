"""Seeding for reproducible runs."""

from __future__ import annotations

import os
import random
from typing import Any

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


def rng_states(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The global RNG states (python, numpy, torch) and `generator`'s, for a checkpoint.

    Plain lists and tensors only, so the checkpoint loads with torch.load(weights_only=True).
    """
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "loader": generator.get_state() if generator is not None else None,
    }


def set_rng_states(states: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what `rng_states` saved (and `generator`'s state, when both exist)."""
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if generator is not None and states["loader"] is not None:
        generator.set_state(states["loader"])
