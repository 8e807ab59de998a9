"""Parsers of benchmark_model and onnxruntime_perf_test output (edgecompress/devices/parsers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.devices.parsers import DeviceOutputError, parse_benchmark_model, parse_ort_perf_test

FIXTURES = Path(__file__).parent / "fixtures"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_benchmark_model_modern_takes_the_timed_block_not_the_warmup() -> None:
    run = parse_benchmark_model(_read("benchmark_model/modern.txt"))
    assert (run.count, run.avg_us, run.std_us, run.min_us, run.max_us) == (62, 16132.6, 301.0, 15840.0, 17920.0)
    assert run.init_us == 38914.0 and run.warmup_avg_us == 16450.3 and run.xnnpack is True
    assert run.ops == ()


def test_benchmark_model_legacy_with_scientific_notation() -> None:
    run = parse_benchmark_model(_read("benchmark_model/legacy.txt"))
    assert run.count == 50 and run.avg_us == pytest.approx(123990.0) and run.std_us == 712.0
    assert run.init_us == 2371.0 and run.xnnpack is None


def test_benchmark_model_op_profile() -> None:
    run = parse_benchmark_model(_read("benchmark_model/op_profile.txt"))
    assert run.count == 808 and run.avg_us == 1209.7
    assert [(o.node_type, o.name, o.avg_ms) for o in run.ops] == [
        ("CONV_2D", "[features.0.conv]:0", 0.288), ("DEPTHWISE_CONV_2D", "[features.1.dw]:1", 0.117),
        ("CONV_2D", "[features.1.pw]:2", 0.389), ("ADD", "[features.2.add]:3", 0.020),
        ("MEAN", "[pool]:4", 0.191), ("FULLY_CONNECTED", "[classifier]:5", 0.192),
    ]
    assert sum(o.percent for o in run.ops) == pytest.approx(100.0, abs=0.01)


def test_benchmark_model_failure_quotes_the_first_error_and_the_output() -> None:
    with pytest.raises(DeviceOutputError, match="not a valid Flatbuffer") as info:
        parse_benchmark_model(_read("benchmark_model/failed.txt"))
    assert "| ERROR: Benchmarking failed." in str(info.value)


@pytest.mark.parametrize("text", ["", "INFO: STARTING!\nINFO: Num threads: [4]\n",
                                  # cut mid-line: the statistics line is incomplete
                                  "INFO: Running benchmark for at least 50 iterations\nINFO: count=62 first=16210 curr="])
def test_benchmark_model_short_output_is_an_error_never_a_result(text: str) -> None:
    with pytest.raises(DeviceOutputError, match="no timing statistics"):
        parse_benchmark_model(text)


def test_benchmark_model_without_info_prefix_and_with_extra_lines() -> None:
    text = _read("benchmark_model/modern.txt").replace("INFO: ", "")
    text = "WARNING: unknown flag --foo\n" + text + "\nsome trailing line\n"
    assert parse_benchmark_model(text).avg_us == 16132.6


def test_ort_perf_test_in_ms() -> None:
    run = parse_ort_perf_test(_read("onnxruntime_perf_test/basic.txt"))
    assert run.runs == 50 and run.avg_ms == 16.8446
    assert run.p50_ms == pytest.approx(16.7904) and run.p90_ms == pytest.approx(17.4213)
    assert run.min_ms == pytest.approx(16.2111) and run.max_ms == pytest.approx(19.0732)
    assert run.session_s == pytest.approx(0.0831204)


def test_ort_perf_test_missing_percentiles_names_them() -> None:
    text = "\n".join(line for line in _read("onnxruntime_perf_test/basic.txt").splitlines() if "P90" not in line)
    with pytest.raises(DeviceOutputError, match="lacks P90"):
        parse_ort_perf_test(text)
