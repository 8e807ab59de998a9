import json

import pytest

from edgecompress.devices.base import LatencyResult, check_measure_args, resolve_runtime
from edgecompress.errors import UserError


def _result(**over):
    kw = dict(
        p50_ms=1.5, p90_ms=2.0, mean_ms=1.6, std_ms=0.2, min_ms=1.2, runs=2, warmup=1, trials=2, threads=1,
        runtime="onnxruntime", runtime_version="1.32.0", artifact="/m.onnx", artifact_sha256="ab" * 32,
        device="host", fingerprint={"id": "0123456789ab", "cpu_flags": ["avx2"]}, trial_p50s_ms=[1.4, 1.6],
        samples_ms=[1.2, 1.6, 1.5, 2.1], runtime_info={"xnnpack": False},
    )  # fmt: skip
    kw.update(over)
    return LatencyResult(**kw)


def test_latency_result_round_trip_through_json():
    r = _result()
    back = LatencyResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    assert back.samples_ms == [1.2, 1.6, 1.5, 2.1] and back.fingerprint["id"] == "0123456789ab"


def test_latency_result_without_samples_and_with_unknown_keys():
    d = _result(samples_ms=None).to_dict()
    d.pop("samples_ms"), d.pop("runtime_info")
    d["added_in_a_newer_version"] = 1
    back = LatencyResult.from_dict(d)
    assert back.samples_ms is None and back.runtime_info == {} and back.p50_ms == 1.5
    d.pop("p50_ms")
    with pytest.raises(ValueError, match="missing p50_ms"):
        LatencyResult.from_dict(d)


def test_latency_result_is_frozen_and_validated():
    r = _result()
    with pytest.raises(AttributeError):
        r.p50_ms = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="runtime"):
        _result(runtime="tensorrt")
    with pytest.raises(ValueError, match="p50_ms"):
        _result(p50_ms=3.0)
    with pytest.raises(ValueError, match="samples_ms must hold runs \\* trials = 4"):
        _result(samples_ms=[1.0])
    with pytest.raises(ValueError, match="trial_p50s_ms"):
        _result(trial_p50s_ms=[1.0])


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 50, 10, 3), "threads must be a positive integer, got 0"),
        ((1, 0, 10, 3), "runs must be a positive integer, got 0"),
        ((1, 50, -1, 3), "warmup must be an integer >= 0, got -1"),
        ((1, 50, 10, 0), "trials must be a positive integer, got 0"),
        ((True, 50, 10, 3), "threads must be a positive integer, got True"),
        ((1.5, 50, 10, 3), "threads must be a positive integer, got 1.5"),
    ],
)
def test_check_measure_args(args, message):
    with pytest.raises(UserError) as info:
        check_measure_args(*args)
    assert str(info.value) == message


def test_resolve_runtime(tmp_path):
    onnx_file, tfl, txt = tmp_path / "m.onnx", tmp_path / "m.TFLITE", tmp_path / "m.txt"
    for f in (onnx_file, tfl, txt):
        f.write_bytes(b"x")
    assert resolve_runtime(onnx_file, None) == (onnx_file, "onnxruntime")
    assert resolve_runtime(tfl, None)[1] == "litert"
    assert resolve_runtime(onnx_file, "ORT")[1] == "onnxruntime"
    assert resolve_runtime(tfl, "tflite")[1] == "litert"
    with pytest.raises(UserError, match="'.txt'"):
        resolve_runtime(txt, None)
    with pytest.raises(UserError, match="does not exist"):
        resolve_runtime(tmp_path / "missing.onnx", None)
    with pytest.raises(UserError, match="is a directory"):
        resolve_runtime(tmp_path, None)
    with pytest.raises(UserError, match="runtime 'litert' cannot run .*use --runtime onnxruntime"):
        resolve_runtime(onnx_file, "litert")
    with pytest.raises(UserError, match="unknown runtime 'onnxrt'.*did you mean onnxruntime"):
        resolve_runtime(onnx_file, "onnxrt")
