"""LocalDevice on tiny real models: each trial is a real subprocess of the real runtime."""

import json
import subprocess
import sys

import pytest

from edgecompress.devices import LocalDevice, get_device
from edgecompress.devices.base import Device, LatencyResult
from edgecompress.errors import UserError
from edgecompress.fsutil import sha256_file

FINGERPRINT_KEYS = {
    "kind", "cpu_model", "cpu_flags", "logical_cores", "physical_cores", "cpus_available",
    "arch", "os", "kernel", "python", "runtimes", "id",
}  # fmt: skip


def _check(r: LatencyResult, artifact, runtime: str, threads: int, runs: int, trials: int) -> None:
    assert len(r.samples_ms) == runs * trials
    assert len(r.trial_p50s_ms) == trials
    assert all(s > 0 for s in r.samples_ms)
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= max(r.samples_ms)
    assert r.mean_ms > 0 and r.std_ms >= 0
    assert (r.runtime, r.threads, r.runs, r.trials, r.device) == (runtime, threads, runs, trials, "host")
    assert r.runtime_version and r.runtime_version[0].isdigit()
    assert r.artifact_sha256 == sha256_file(artifact)
    env_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    assert r.runtime_info["thread_env"] == {v: str(threads) for v in env_vars}
    assert set(r.fingerprint) == FINGERPRINT_KEYS
    assert LatencyResult.from_dict(r.to_dict()) == r


@pytest.mark.parametrize("threads", [1, 2])
def test_measure_onnx(tiny_onnx, threads):
    r = LocalDevice().measure(tiny_onnx, threads=threads, runs=20, warmup=3, trials=3)
    _check(r, tiny_onnx, "onnxruntime", threads, runs=20, trials=3)
    assert r.runtime_version == r.fingerprint["runtimes"]["onnxruntime"]
    info = r.runtime_info
    assert info["intra_op_threads"] == threads and info["inter_op_threads"] == 1
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["inputs"] == [{"name": "x", "shape": [1, 16], "dtype": "float32"}]  # dynamic batch -> 1


@pytest.mark.parametrize("threads", [1, 2])
def test_measure_tflite_uses_xnnpack(tiny_tflite, threads):
    r = LocalDevice().measure(tiny_tflite, runtime="litert", threads=threads, runs=15, warmup=2, trials=2)
    _check(r, tiny_tflite, "litert", threads, runs=15, trials=2)
    assert r.runtime_version == r.fingerprint["runtimes"]["litert"]
    info = r.runtime_info
    assert info["num_threads"] == threads
    assert info["xnnpack"] is True and info["delegate_nodes"] >= 1
    assert info["inputs"][0]["shape"] == [1, 16]


def test_warmup_zero_and_single_run(tiny_onnx):
    r = LocalDevice().measure(tiny_onnx, runs=1, warmup=0, trials=1)
    assert len(r.samples_ms) == 1 and r.p50_ms == r.p90_ms == r.min_ms == r.samples_ms[0]


def test_fingerprint_is_stable_and_short():
    a, b = LocalDevice().fingerprint(), LocalDevice().fingerprint()
    assert a == b and set(a) == FINGERPRINT_KEYS
    assert len(a["id"]) == 12 and int(a["id"], 16) >= 0
    assert a["logical_cores"] >= a["physical_cores"] >= 1
    assert a["cpu_model"]
    assert set(LocalDevice().runtimes()) == {"onnxruntime", "litert"}
    assert isinstance(LocalDevice(), Device)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threads": 0}, "threads must be a positive integer, got 0"),
        ({"runs": 0}, "runs must be a positive integer, got 0"),
        ({"warmup": -3}, "warmup must be an integer >= 0, got -3"),
        ({"trials": 0}, "trials must be a positive integer, got 0"),
        ({"runtime": "litert"}, "runtime 'litert' cannot run"),
    ],
)
def test_bad_arguments(tiny_onnx, kwargs, message):
    with pytest.raises(UserError, match=message):
        LocalDevice().measure(tiny_onnx, **kwargs)


def test_bad_artifacts(tmp_path):
    with pytest.raises(UserError, match="missing.onnx' does not exist"):
        LocalDevice().measure(tmp_path / "missing.onnx")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    with pytest.raises(UserError, match="'.txt'"):
        LocalDevice().measure(notes)


def test_worker_error_is_quoted(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not protobuf")
    with pytest.raises(UserError) as info:
        LocalDevice().measure(broken, runs=1, warmup=0, trials=1)
    message = str(info.value)
    assert "benchmark of onnxruntime on broken.onnx (threads=1) failed (exit 1)" in message
    assert "InvalidProtobuf" in message or "Protobuf" in message
    assert "\n" not in message


def test_worker_timeout(tiny_onnx):
    with pytest.raises(UserError, match="took longer than 0.001 s"):
        LocalDevice(timeout_s=0.001).measure(tiny_onnx, runs=1, warmup=0, trials=1)


def test_get_device_host_measures(tiny_onnx):
    device = get_device("host")
    assert device.name == "host"
    assert device.measure(tiny_onnx, runtime="ort", runs=2, warmup=0, trials=1).runtime == "onnxruntime"


def test_worker_runs_standalone(tiny_onnx):
    out = subprocess.run(
        [sys.executable, "-m", "edgecompress.devices._bench_worker", "--artifact", str(tiny_onnx),
         "--runtime", "onnxruntime", "--threads", "1", "--runs", "3", "--warmup", "0"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert len(result["samples_ms"]) == 3 and result["runtime_version"]


def test_host_round_to_follows_the_vector_width(monkeypatch) -> None:
    from edgecompress.devices import local

    monkeypatch.setattr(local, "_read", lambda path: "processor : 0\nflags : fpu sse avx2 avx512f avx512bw\n")
    assert local.host_round_to() == 16  # MLAS NCHWc blocks of 16 channels with AVX-512F
    monkeypatch.setattr(local, "_read", lambda path: "processor : 0\nflags : fpu sse avx2 fma\n")
    assert local.host_round_to() == 8
    assert local.LocalDevice().round_to() == 8
