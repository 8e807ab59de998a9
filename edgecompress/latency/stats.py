"""Latency statistics over timed runs (all values in ms).

Percentiles use numpy's linear interpolation, so p50 of an even number of samples is
the mean of the two middle ones, the same definition every report and test uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_array(samples_ms: Sequence[float], what: str = "samples_ms") -> np.ndarray:
    arr = np.asarray(list(samples_ms), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty list of latencies in ms, got {len(arr)} values")
    bad = arr[~np.isfinite(arr) | (arr < 0)]
    if bad.size:
        raise ValueError(f"{what} must be finite and >= 0 ms, got {float(bad[0])!r}")
    return arr


def percentile(samples_ms: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of `samples_ms`, in ms."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(_as_array(samples_ms), q, method="linear"))


def summarize(samples_ms: Sequence[float]) -> dict:
    """p50, p90, mean, std (population, ddof=0), min, max (all ms) and runs (count).

    Raises ValueError for an empty list or a negative / non-finite sample.
    """
    arr = _as_array(samples_ms)
    p50, p90 = np.percentile(arr, [50, 90], method="linear")
    return {
        "p50": float(p50),
        "p90": float(p90),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "runs": int(arr.size),
    }


def median_of_trials(trials_ms: Sequence[Sequence[float]]) -> float:
    """Median over trials of each trial's p50 (ms).

    One slow trial (a background job, a thermal dip) moves this less than it moves
    the p50 of the pooled samples, so it is the number to compare two runs by.
    """
    if len(trials_ms) == 0:
        raise ValueError("trials_ms must hold at least one trial, got 0")
    p50s = [percentile(t, 50) for t in trials_ms]
    return float(np.median(p50s))
