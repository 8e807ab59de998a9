"""AdbDevice driven through the real adb client: against the fake phone (tests/fakes), and
against a real phone with `pytest -m device` and ANDROID_SERIAL set (plus BENCHMARK_MODEL /
ORT_PERF_TEST: paths of the arm64 binaries to install)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.cli import cli
from edgecompress.devices import get_device, list_devices
from edgecompress.devices.adb import RUN_DIR, AdbDevice, AdbError
from edgecompress.devices.parsers import DeviceOutputError
from fakes.phone import ADB, FakePhone, Failures

pytestmark = pytest.mark.skipif(ADB is None, reason="no adb client (apt-get install adb; CI installs it)")
FAKE_BIN = Path(__file__).resolve().parents[1] / "fakes" / "bin"


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """The fake phone, with this process's adb pointed at it."""
    with FakePhone(tmp_path / "phone", serial="emulator-5554") as p:
        for key, value in p.env().items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        monkeypatch.setenv("ADB", ADB)
        yield p
    assert not p.rebooted, "a command ran something on the phone that was never asked for"


def _ready(phone) -> AdbDevice:
    device = AdbDevice(phone.serial, ADB, timeout_s=60, retries=2)
    device.client.backoff_s = 0.05
    device.setup(benchmark_model=FAKE_BIN / "benchmark_model", ort_perf_test=FAKE_BIN / "onnxruntime_perf_test")
    return device


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.device)])
def target(request, tmp_path, monkeypatch):
    """An AdbDevice ready to measure: the fake phone, or the real one named by ANDROID_SERIAL."""
    if request.param == "fake":
        with FakePhone(tmp_path / "phone") as p:
            for key, value in p.env().items():
                monkeypatch.setenv(key, value)
            yield _ready(p)
        return
    serial = os.environ.get("ANDROID_SERIAL")
    if not serial:
        pytest.skip("set ANDROID_SERIAL (and BENCHMARK_MODEL / ORT_PERF_TEST) to run on a real phone")
    device = AdbDevice(serial, shutil.which("adb"))
    bm, ort = os.environ.get("BENCHMARK_MODEL"), os.environ.get("ORT_PERF_TEST")
    if bm or ort:
        device.setup(benchmark_model=Path(bm) if bm else None, ort_perf_test=Path(ort) if ort else None)
    yield device


# --- the same tests on the fake and on a real phone -------------------------------------
def test_fingerprint_finds_the_big_cores(target) -> None:
    fp = target.fingerprint()
    assert fp["abi"] in ("arm64-v8a", "x86_64") and fp["model"] and fp["build_fingerprint"]
    assert len(fp["id"]) == 12 and fp["id"] == target.fingerprint()["id"]
    freqs = {int(k): v for k, v in fp["cpu_max_khz"].items()}
    top = max(freqs.values())
    assert int(fp["big_core_mask"], 16) == sum(1 << c for c, f in freqs.items() if f == top)


def test_measure_tflite_pinned_and_cleaned_up(target, tiny_tflite) -> None:
    result = target.measure(tiny_tflite, threads=1, runs=10, warmup=2, trials=2)
    assert 0 < result.min_ms <= result.p50_ms <= result.p90_ms
    assert result.runtime == "litert" and result.trials == 2 and len(result.trial_p50s_ms) == 2
    assert result.runtime_info["cpu_mask"] == target.fingerprint()["big_core_mask"]
    assert result.runtime_info["rounds"] == target.rounds and result.device == target.name
    rc, out = target.client.shell(f"ls {RUN_DIR}")
    assert rc == 0 and out.strip() == ""  # the pushed artifact was removed


def test_measure_onnx(target, tiny_onnx) -> None:
    result = target.measure(tiny_onnx, threads=1, runs=10, warmup=1, trials=1)
    assert result.runtime == "onnxruntime" and 0 < result.p50_ms <= result.p90_ms
    assert result.runtime_version.startswith("onnxruntime_perf_test@sha256:")


def test_op_profile(target, tiny_tflite) -> None:
    ops = target.profile_ops(tiny_tflite, runs=10, warmup=1)
    assert [o.node_type for o in ops] == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert all(o.avg_ms >= 0 for o in ops) and sum(o.percent for o in ops) == pytest.approx(100, abs=0.1)


def test_int8_scheme_timed_and_int8_tflite_run_on_the_phone(target, tmp_path) -> None:
    """quantize_files with the phone as the device: the ONNX candidates are timed there (onnxruntime_perf_test),
    and the full-int8 .tflite runs there through benchmark_model, its operator profile included."""
    import torch

    from edgecompress.quantize.api import quantize_files

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4)).eval()
    calib = torch.randn(128, 1, 16, 16)
    entries = quantize_files(model, {}, calib, tmp_path / "int8", input_shape=(1, 16, 16), device=target,
                             threads=[1], runs=5, trials=1)
    measured = entries["onnx"]["scheme_choice"]["measured"]
    assert measured["device"] == target.name and len(measured["candidates"]) == 2
    assert all(c["p50_ms"][1] > 0 for c in measured["candidates"])
    tflite = Path(entries["tflite"]["path"])
    assert entries["tflite"]["scheme"] == "full-int8" and tflite.name == "model_int8.tflite"
    result = target.measure(tflite, threads=1, runs=10, warmup=1, trials=1)
    assert result.runtime == "litert" and 0 < result.p50_ms <= result.p90_ms and result.device == target.name
    ops = {o.node_type for o in target.profile_ops(tflite, runs=5, warmup=1)}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= ops


def test_model_the_runtime_rejects_quotes_the_device_error(target, tmp_path) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(DeviceOutputError, match="(?s)benchmark_model failed on .* broken.tflite.*ERROR"):
        target.measure(broken, runs=5, warmup=1, trials=1)


def test_hostile_artifact_name_runs_nothing_on_the_phone(target, tiny_tflite, tmp_path) -> None:
    hostile = tmp_path / "a b;reboot.tflite"
    shutil.copy(tiny_tflite, hostile)
    result = target.measure(hostile, runs=5, warmup=1, trials=1)
    assert result.p50_ms > 0 and result.artifact.endswith("a b;reboot.tflite")


# --- the fake only: discovery, failures and the CLI ---------------------------------------
def test_discovery_lists_states_and_explains_them(phone) -> None:
    devices = {d["name"]: d for d in list_devices(ADB)}
    assert devices["adb:emulator-5554"]["state"] == "device"
    assert devices["adb:emulator-5554"]["fingerprint"]["big_core_mask"] == "f0"
    assert devices["adb:emulator-5554"]["runtimes"] == []  # nothing installed yet
    unauthorized = [d for d in devices.values() if d["state"] == "unauthorized"]
    offline = [d for d in devices.values() if d["state"] == "offline"]
    assert "Allow USB debugging" in unauthorized[0]["note"] and "adb reconnect" in offline[0]["note"]


def test_unknown_and_unauthorized_serials(phone) -> None:
    with pytest.raises(AdbError, match="'nope' is not attached.*edgecompress devices"):
        AdbDevice("nope", ADB, retries=0).fingerprint()
    unauthorized = next(d["name"][4:] for d in list_devices(ADB)[1:] if d["state"] == "unauthorized")
    with pytest.raises(AdbError, match="unauthorized: unlock the phone"):
        AdbDevice(unauthorized, ADB, retries=0).fingerprint()


def test_missing_runner_binary_says_how_to_install(phone, tiny_tflite) -> None:
    device = AdbDevice(phone.serial, ADB)
    with pytest.raises(AdbError, match="benchmark_model is not installed on adb:emulator-5554; run `edgecompress "
                                       "devices setup adb:emulator-5554 --benchmark-model PATH`"):
        device.measure(tiny_tflite, runs=5, warmup=1, trials=1)


def test_32bit_phone_is_refused(phone) -> None:
    phone.set_prop("ro.product.cpu.abi", "armeabi-v7a")
    with pytest.raises(AdbError, match="ABI 'armeabi-v7a'.*32-bit phone is not supported"):
        AdbDevice(phone.serial, ADB).setup(benchmark_model=FAKE_BIN / "benchmark_model")


def test_exit_codes_with_and_without_shell_v2(tmp_path, monkeypatch) -> None:
    for v2 in (True, False):
        with FakePhone(tmp_path / f"p{v2}", shell_v2=v2) as p:
            monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", p.env()["ANDROID_ADB_SERVER_PORT"])
            client = AdbDevice(p.serial, ADB).client
            assert client.shell("echo hi; exit 3") == (3, "hi\n")
            assert client.shell("printf 'no newline'") == (0, "no newline")


def test_disconnect_mid_run_is_retried_then_a_clear_error(phone, tiny_tflite) -> None:
    device = _ready(phone)
    phone.failures = Failures(drop_after_bytes={"run_bench": 40})
    with pytest.raises(AdbError, match="(?s)ended without its end marker.*gave up after 3 attempts"):
        device.measure(tiny_tflite, runs=5, warmup=1, trials=1)
    assert sum("run_bench" in c for c in phone.commands) == 3  # one try + two retries
    phone.failures = Failures()
    assert device.measure(tiny_tflite, runs=5, warmup=1, trials=1).p50_ms > 0  # the phone is fine again


def test_transient_offline_is_retried(phone, tiny_tflite) -> None:
    device = _ready(phone)
    phone.failures = Failures(offline_for_first=1)
    assert device.measure(tiny_tflite, runs=5, warmup=1, trials=1).p50_ms > 0


def test_hung_run_hits_the_timeout(phone, tiny_tflite) -> None:
    device = _ready(phone)
    device.client.timeout_s = 3
    phone.failures = Failures(hang=("run_bench",))
    with pytest.raises(AdbError, match="did not finish within 3 s and was killed"):
        device.measure(tiny_tflite, runs=5, warmup=1, trials=1)


def test_injected_nonzero_exit_is_not_a_result(phone, tiny_tflite) -> None:
    device = _ready(phone)
    phone.failures = Failures(exit_code={"run_bench": 5})
    with pytest.raises(AdbError, match="adb shell on emulator-5554 failed \\(exit 5\\): sh: injected failure"):
        device.measure(tiny_tflite, runs=5, warmup=1, trials=1)


def test_thermal_wait_and_canary(phone, tiny_tflite) -> None:
    device = _ready(phone)
    device.canary = tiny_tflite
    device.canary_tolerance = 100.0  # timing on a shared host drifts; only the mechanics are checked here
    assert device.thermal_c() is not None and device.thermal_c() < 45
    result = device.measure(tiny_tflite, runs=5, warmup=1, trials=1)
    assert len(result.runtime_info["canary_ms"]) == 2 and all(v > 0 for v in result.runtime_info["canary_ms"])
    zone = 0
    phone.set_temperature(zone, 80_000)
    device.max_cooldown_s = 0.5
    with pytest.warns(UserWarning, match="still at 80.0 °C"):
        assert device.wait_until_cool() == 80.0


def test_cli_bench_and_setup_against_the_fake_phone(phone, tiny_tflite) -> None:
    runner = CliRunner()
    setup = runner.invoke(cli, ["devices", "setup", "adb:emulator-5554", "--benchmark-model",
                                str(FAKE_BIN / "benchmark_model"), "--adb", ADB])
    assert setup.exit_code == 0, setup.output
    assert "adb:emulator-5554: runtimes ready: litert" in setup.output
    args = ["bench", str(tiny_tflite), "--device", "adb:emulator-5554", "--runs", "10", "--warmup", "1",
            "--trials", "1", "--adb", ADB]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "p50 ms" in first.output and "p90 ms" in first.output and "miss" in first.output
    assert "p50/p90 over round means" in first.output
    again = runner.invoke(cli, args)  # the same artifact on the same phone: from the cache
    assert again.exit_code == 0 and "hit" in again.output
    listing = runner.invoke(cli, ["devices", "--adb", ADB])
    assert "adb:emulator-5554" in listing.output and "big cores f0" in listing.output


def test_get_device_from_profile_uses_the_only_ready_phone(tmp_path, monkeypatch) -> None:
    with FakePhone(tmp_path / "p", others={}) as p:
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", p.env()["ANDROID_ADB_SERVER_PORT"])
        device = get_device("pixel-7", adb=ADB)
        assert isinstance(device, AdbDevice) and device.serial == p.serial and device._mask() == "c0"
