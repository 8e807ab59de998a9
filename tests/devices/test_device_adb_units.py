"""Parts of AdbDevice that need no phone (edgecompress/devices/adb.py)."""

from __future__ import annotations

import math

import pytest

from edgecompress.devices.adb import AdbError, _combine, big_core_mask, find_adb
from edgecompress.devices.parsers import BenchmarkModelRun, OrtPerfRun


def test_big_core_mask_from_max_frequencies() -> None:
    assert big_core_mask({i: 1_800_000 for i in range(4)} | {i: 2_400_000 for i in range(4, 8)}) == "f0"
    assert big_core_mask({0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2, 7: 3}) == "80"  # one prime core
    assert big_core_mask({0: 5, 1: 5}) == "3"


def test_find_adb_errors_name_the_package(tmp_path, monkeypatch) -> None:
    with pytest.raises(AdbError, match="apt-get install adb"):
        find_adb(tmp_path / "no-adb")
    monkeypatch.delenv("ADB", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AdbError, match="not found on PATH.*apt-get install adb"):
        find_adb()


def _meta() -> dict:
    return {"version": "benchmark_model@sha256:abc", "artifact": "m.tflite", "sha": "0" * 64, "device": "adb:x",
            "fingerprint": {"id": "f"}}


def test_combine_benchmark_model_rounds_pools_mean_and_std_exactly() -> None:
    rounds = [BenchmarkModelRun(count=10, avg_us=a * 1000, std_us=s * 1000, min_us=(a - 1) * 1000,
                                max_us=(a + 1) * 1000, first_us=a * 1000) for a, s in ((2.0, 0.1), (3.0, 0.2), (4.0, 0.1))]
    result = _combine("litert", [rounds[:2], rounds[2:]], runs=30, warmup=5, threads=1, info={}, **_meta())
    assert result.mean_ms == pytest.approx(3.0)
    # pooled variance = mean of (std^2 + mean^2) - grand mean^2
    want = math.sqrt((0.01 + 4 + 0.04 + 9 + 0.01 + 16) / 3 - 9)
    assert result.std_ms == pytest.approx(want)
    assert result.p50_ms == pytest.approx(3.0) and result.p90_ms == pytest.approx(3.8)
    assert result.min_ms == pytest.approx(1.0) and result.trial_p50s_ms == [pytest.approx(2.5), pytest.approx(4.0)]
    assert result.trials == 2 and "round means (10 timed runs each)" in result.runtime_info["percentiles_over"]


def test_combine_ort_takes_the_median_of_its_percentiles() -> None:
    rounds = [OrtPerfRun(runs=50, avg_ms=a, p50_ms=a, p90_ms=a + 0.5, min_ms=a - 0.2, max_ms=a + 1) for a in (5, 6, 9)]
    result = _combine("onnxruntime", [rounds], runs=50, warmup=0, threads=2, info={}, **_meta())
    assert (result.p50_ms, result.p90_ms, result.min_ms) == (6.0, 6.5, 4.8)
    assert result.trial_p50s_ms == [6.0]
