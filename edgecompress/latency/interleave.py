"""Side-by-side latency: several artifacts measured trial by trial, interleaved.

On a shared, noisy machine a comparison is only meaningful when A and B see the
same background load, so one trial of every (artifact, threads) pair runs before
the next trial of any of them; the trials of each pair are then pooled.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from edgecompress.devices.base import Device, LatencyResult
from edgecompress.latency.stats import summarize


def merge_trials(trials: Sequence[LatencyResult]) -> LatencyResult:
    """Pool single-trial results of one (artifact, runtime, threads) into one result.

    With per-run samples (the host) the statistics are recomputed over all of them. A phone
    reports statistics per round, not per run (benchmark_model prints round means): then
    p50 and p90 are the medians of the trials' p50s and p90s, the mean is the mean of the
    means, std pools within- and between-trial variance, and min is the smallest.
    """
    if not trials:
        raise ValueError("merge_trials needs at least one result")
    common = {"runs": trials[0].runs, "trials": sum(t.trials for t in trials),
              "trial_p50s_ms": [p for t in trials for p in t.trial_p50s_ms]}
    if all(t.samples_ms is not None for t in trials):
        samples = [s for t in trials for s in t.samples_ms]
        stats = summarize(samples)
        return dataclasses.replace(trials[0], p50_ms=stats["p50"], p90_ms=stats["p90"], mean_ms=stats["mean"],
                                   std_ms=stats["std"], min_ms=stats["min"], samples_ms=samples, **common)
    p50 = statistics.median(t.p50_ms for t in trials)
    mean = statistics.fmean(t.mean_ms for t in trials)
    variance = statistics.fmean(t.std_ms ** 2 + (t.mean_ms - mean) ** 2 for t in trials)
    return dataclasses.replace(
        trials[0], p50_ms=p50, p90_ms=max(p50, statistics.median(t.p90_ms for t in trials)), mean_ms=mean,
        std_ms=math.sqrt(variance), min_ms=min(p50, min(t.min_ms for t in trials)), samples_ms=None,
        runtime_info={**trials[0].runtime_info, "pooled": f"medians of {len(trials)} interleaved trials' p50/p90"},
        **common)


def measure_interleaved(
    device: Device,
    artifacts: Sequence[Path],
    threads: Sequence[int],
    *,
    runs: int,
    warmup: int,
    trials: int,
    on_trial: Callable[[Path, int, int], None] | None = None,
) -> dict[tuple[Path, int], LatencyResult]:
    """Measure every artifact at every thread count, `trials` rounds, interleaved.

    Returns {(artifact, threads): pooled LatencyResult}. `on_trial(artifact, threads,
    trial)` is called before each trial (progress reporting).
    """
    per_pair: dict[tuple[Path, int], list[LatencyResult]] = {(a, t): [] for a in artifacts for t in threads}
    for trial in range(trials):
        for artifact in artifacts:
            for t in threads:
                if on_trial is not None:
                    on_trial(artifact, t, trial)
                per_pair[(artifact, t)].append(
                    device.measure(artifact, threads=t, runs=runs, warmup=warmup, trials=1)
                )
    return {key: merge_trials(results) for key, results in per_pair.items()}
