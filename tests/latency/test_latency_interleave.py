"""latency.interleave: pooling trials with per-run samples (host) and without them (phones)."""

import math

import pytest

from edgecompress.devices.base import LatencyResult
from edgecompress.latency.interleave import measure_interleaved, merge_trials


def _trial(p50, p90, mean, std, low, samples=None):
    return LatencyResult(p50_ms=p50, p90_ms=p90, mean_ms=mean, std_ms=std, min_ms=low, runs=len(samples or [0, 0]),
                         warmup=1, trials=1, threads=1, runtime="litert", runtime_version="x", artifact="m.tflite",
                         artifact_sha256="0", device="d", trial_p50s_ms=[p50], samples_ms=samples)


def test_host_trials_pool_their_samples():
    merged = merge_trials([_trial(1.5, 2, 1.5, 0.5, 1, [1.0, 2.0]), _trial(3.5, 4, 3.5, 0.5, 3, [3.0, 4.0])])
    assert merged.samples_ms == [1.0, 2.0, 3.0, 4.0] and merged.p50_ms == 2.5 and merged.min_ms == 1.0
    assert merged.trials == 2 and merged.trial_p50s_ms == [1.5, 3.5]


def test_phone_trials_without_samples_pool_their_statistics():
    merged = merge_trials([_trial(1.0, 1.2, 1.1, 0.1, 0.9), _trial(2.0, 2.6, 2.1, 0.3, 1.8), _trial(1.4, 1.5, 1.3, 0.2, 1.2)])
    assert merged.p50_ms == 1.4 and merged.p90_ms == 1.5 and merged.min_ms == 0.9 and merged.samples_ms is None
    assert merged.mean_ms == pytest.approx(1.5)
    # within-trial variance (0.01 + 0.09 + 0.04) / 3 plus between-trial (0.16 + 0.36 + 0.04) / 3
    assert merged.std_ms == pytest.approx(math.sqrt(0.7 / 3))
    assert merged.trials == 3 and merged.runtime_info["pooled"] == "medians of 3 interleaved trials' p50/p90"


def test_measure_interleaved_runs_one_trial_of_each_before_the_next():
    calls = []

    class Device:
        def measure(self, artifact, threads, runs, warmup, trials):
            calls.append((artifact, threads))
            return _trial(1.0, 1.0, 1.0, 0.0, 1.0)

    out = measure_interleaved(Device(), ["a", "b"], [1, 2], runs=2, warmup=0, trials=2)
    assert calls == [("a", 1), ("a", 2), ("b", 1), ("b", 2)] * 2
    assert set(out) == {("a", 1), ("a", 2), ("b", 1), ("b", 2)} and out[("a", 1)].trials == 2
