"""The fake phone, driven by the real adb client (Debian's adb 29.0.6) on loopback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fakes.phone import ADB, FakePhone, Failures

pytestmark = pytest.mark.skipif(ADB is None, reason="no adb client (apt-get install adb; CI installs it)")

FAKE_BIN = Path(__file__).resolve().parent / "bin"
FIXTURES = Path(__file__).resolve().parents[1] / "devices" / "fixtures"
# What a parser of the fixtures keys on (see tests/devices/fixtures/README.md).
TFLITE_AVG = re.compile(r"Inference timings in us:.*Inference \(avg\): ([0-9.e+-]+)")
ORT_AVG = re.compile(r"^Average inference time cost: ([0-9.e+-]+) ms$", re.M)
ORT_P90 = re.compile(r"^P90 Latency: ([0-9.e+-]+) s$", re.M)
OP_ROW = re.compile(r"^\t\s*([A-Z_0-9]+)\t\s*([0-9.]+)\t\s*([0-9.]+)\t\s*([0-9.]+)%", re.M)


@pytest.fixture
def phone(tmp_path):
    with FakePhone(tmp_path / "phone") as p:
        yield p
    assert not p.rebooted



def test_devices_long_listing_shows_every_state(phone):
    argv = [ADB, "devices", "-l"]  # no -P: env() carries the port
    r = subprocess.run(argv, env=phone.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "List of devices attached"
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if line}
    assert rows["FAKE0001"] == [
        "device", "usb:1-1", "product:fakephone", "model:Fake_Phone_8", "device:fakephone", "transport_id:1"
    ]
    assert rows["FAKEUNAUTH02"] == ["unauthorized", "usb:1-2", "transport_id:2"]
    assert rows["FAKEOFFLINE3"] == ["offline", "usb:1-3", "transport_id:3"]
    short = phone.adb("devices", serial=None)
    assert "FAKE0001\tdevice\nFAKEUNAUTH02\tunauthorized\nFAKEOFFLINE3\toffline\n" in short.stdout
    # every client process checks the server version first: "0029" keeps it from restarting us
    assert phone.requests[:2] == ["host:version", "host:devices-l"]


def test_getprop_over_shell(phone):
    r = phone.adb("shell", "getprop ro.product.model")
    assert (r.returncode, r.stdout) == (0, "Fake Phone 8\n")
    listing = phone.adb("shell", "getprop").stdout
    assert "[ro.product.cpu.abi]: [arm64-v8a]\n" in listing
    assert "[ro.build.version.sdk]: [34]\n" in listing
    phone.set_prop("ro.soc.model", "Tensor G3")
    assert phone.adb("shell", "getprop ro.soc.model").stdout == "Tensor G3\n"
    assert phone.requests[-2:] == ["host:tport:serial:FAKE0001", "shell,v2,TERM=xterm,raw:getprop ro.soc.model"]


def test_shell_v2_gives_exit_code_and_separate_streams(phone):
    assert phone.adb("shell", "exit 3").returncode == 3
    r = phone.adb("shell", "echo out; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, "out\n", "err\n")
    # device paths land in the sandbox, not on the host
    r = phone.adb("shell", "mkdir -p /data/local/tmp/ec && echo hi > /data/local/tmp/ec/f && cat /data/local/tmp/ec/f")
    assert r.stdout == "hi\n"
    assert phone.device_path("/data/local/tmp/ec/f").read_text() == "hi\n"


def test_legacy_shell_has_no_exit_code(tmp_path):
    with FakePhone(tmp_path, shell_v2=False) as phone:
        r = phone.adb("shell", "echo out; echo err >&2; exit 3")
        assert (r.returncode, r.stdout, r.stderr) == (0, "out\nerr\n", "")  # merged, rc lost
        assert phone.adb("shell", "(exit 3); echo EXIT:$?").stdout == "EXIT:3\n"  # why the product appends an echo
        assert "shell:(exit 3); echo EXIT:$?" in phone.requests


def test_push_stat_pull_round_trip(phone, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    local.chmod(0o640)
    r = phone.adb("push", str(local), "/data/local/tmp/ec/blob.bin")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 file pushed" in r.stdout
    assert phone.adb("shell", "stat -c '%s %a' /data/local/tmp/ec/blob.bin").stdout == f"{len(data)} 640\n"
    back = tmp_path / "back.bin"
    assert phone.adb("pull", "/data/local/tmp/ec/blob.bin", str(back)).returncode == 0
    assert back.read_bytes() == data
    # pushing to a directory keeps the name (STAT says "directory"); pulling it uses LIST
    assert phone.adb("push", str(local), "/data/local/tmp/ec").returncode == 0
    assert phone.adb("pull", "/data/local/tmp/ec", str(tmp_path / "dir")).returncode == 0
    assert (tmp_path / "dir/blob.bin").read_bytes() == data
    assert ("LIST", "/data/local/tmp/ec/") in phone.sync_ops
    assert phone.sync_ops[:3] == [("STAT", "/data/local/tmp/ec/blob.bin"), ("SEND", "/data/local/tmp/ec/blob.bin"),
                                  ("STAT", "/data/local/tmp/ec/blob.bin")]
    missing = phone.adb("pull", "/data/local/tmp/nope.bin", str(tmp_path / "n"))
    assert missing.returncode == 1
    assert "remote object '/data/local/tmp/nope.bin' does not exist" in missing.stdout + missing.stderr


def test_cpu_and_thermal_files(phone):
    freqs = phone.adb("shell", "cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq").stdout.split()
    assert freqs == ["1800000"] * 4 + ["2400000"] * 4
    assert phone.adb("shell", "cat /sys/devices/system/cpu/possible").stdout == "0-7\n"
    assert phone.adb("shell", "grep -c ^processor /proc/cpuinfo").stdout == "8\n"
    zone = "/sys/class/thermal/thermal_zone1"
    assert phone.adb("shell", f"cat {zone}/type {zone}/temp").stdout == "cpu-1-0\n38200\n"
    phone.set_temperature("cpu-1-0", 71500)
    phone.set_thermal_status(3)
    dump = phone.adb("shell", "dumpsys thermalservice").stdout
    assert "Thermal Status: 3\n" in dump
    assert "mValue=71.5, mType=0, mName=cpu-1-0" in dump


def test_fake_benchmark_model_runs_pushed_tflite(phone, tiny_tflite):
    for local, remote in ((FAKE_BIN / "benchmark_model", "benchmark_model"), (tiny_tflite, "tiny.tflite")):
        assert phone.adb("push", str(local), f"/data/local/tmp/ec/{remote}").returncode == 0
    flags = "--graph=/data/local/tmp/ec/tiny.tflite --num_threads=1 --num_runs=20 --warmup_runs=2 --min_secs=0.05 " \
            "--warmup_min_secs=0 --use_xnnpack=true --enable_op_profiling=true --no_such_flag=1"
    r = phone.adb("shell", f"cd /data/local/tmp/ec && taskset f0 ./benchmark_model {flags}", timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stderr  # TFLite's logger writes to stderr, on a phone as here
    assert r.stdout == ""
    avg = float(TFLITE_AVG.search(out).group(1))
    assert avg > 0
    assert float(TFLITE_AVG.search((FIXTURES / "benchmark_model/modern.txt").read_text()).group(1)) == 16132.6
    assert "INFO: Graph: [/data/local/tmp/ec/tiny.tflite]" in out  # device paths, as on a phone
    assert "WARNING: Unconsumed cmdline flags: --no_such_flag=1" in out
    count = int(re.findall(r"count=(\d+)", out)[1])
    assert count >= 20
    section = out.split("Operator-wise Profiling Info for Regular Benchmark Runs:")[1]
    section = section.split("Top by Computation Time")[0]
    rows = OP_ROW.findall(section)
    assert [r[0] for r in rows] == ["FULLY_CONNECTED"] * 2  # Linear, ReLU (fused into it), Linear
    assert sum(float(r[3]) for r in rows) == pytest.approx(100.0, abs=0.01)  # the % column
    assert phone.taskset_calls() == [("f0", ["./benchmark_model", *flags.split()])]


def test_fake_benchmark_model_fails_on_a_broken_model(phone, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"this is not a flatbuffer" * 10)
    for local in (FAKE_BIN / "benchmark_model", broken):
        assert phone.adb("push", str(local), f"/data/local/tmp/edgecompress/{local.name}").returncode == 0
    d = "/data/local/tmp/edgecompress"
    r = phone.adb("shell", f"{d}/benchmark_model --graph={d}/broken.tflite --num_threads=4")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR: ")]
    fixture = (FIXTURES / "benchmark_model/failed.txt").read_text().splitlines()
    expected = [line for line in fixture if line.startswith("ERROR: ")]
    assert errors == expected


def test_fake_onnxruntime_perf_test_runs_pushed_onnx(phone, tiny_onnx):
    for local in (FAKE_BIN / "onnxruntime_perf_test", tiny_onnx):
        assert phone.adb("push", str(local), f"/data/local/tmp/ec/{local.name}").returncode == 0
    d = "/data/local/tmp/ec"
    r = phone.adb("shell", f"taskset f0 {d}/onnxruntime_perf_test -m times -r 30 -x 1 -I -e cpu {d}/tiny.onnx")
    assert r.returncode == 0, r.stderr
    assert float(ORT_AVG.search(r.stdout).group(1)) > 0
    assert float(ORT_P90.search(r.stdout).group(1)) > 0
    assert "Total inference requests: 30\n" in r.stdout
    fixture = (FIXTURES / "onnxruntime_perf_test/basic.txt").read_text()
    assert (ORT_AVG.search(fixture).group(1), ORT_P90.search(fixture).group(1)) == ("16.8446", "0.0174213")
    bad = phone.adb("shell", "/data/local/tmp/ec/onnxruntime_perf_test -m times -r 5 -I /data/local/tmp/ec/nope.onnx")
    assert bad.returncode == 255
    assert "/data/local/tmp/ec/nope.onnx" in bad.stderr


def test_unknown_serial_unauthorized_and_offline(phone):
    r = phone.adb("shell", "echo hi", serial="NOPE")
    assert (r.returncode, r.stderr) == (1, "error: device 'NOPE' not found\n")
    r = phone.adb("shell", "echo hi", serial="FAKEUNAUTH02")
    assert r.returncode == 1
    assert r.stderr.startswith("error: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n")
    r = phone.adb("shell", "echo hi", serial="FAKEOFFLINE3")
    assert (r.returncode, r.stderr) == (1, "error: device offline\n")
    r = phone.adb("shell", "echo hi", serial=None)  # three devices and no -s
    assert (r.returncode, r.stderr) == (1, "error: more than one device/emulator\n")
    assert phone.commands == []


def test_single_phone_without_serial(tmp_path):
    with FakePhone(tmp_path, others={}) as phone:
        assert phone.adb("shell", "echo any", serial=None).stdout == "any\n"
        assert phone.adb("-t", "1", "shell", "echo by-id", serial=None).stdout == "by-id\n"
        assert phone.adb("get-state").stdout == "device\n"
        assert {"host:features", "host:tport:any", "host:transport-id:1"} <= set(phone.requests)
        # kill-server is acknowledged (without a version check) and the fake keeps serving
        assert phone.adb("kill-server", serial=None).returncode == 0
        assert phone.requests[-1] == "host:kill"
        assert phone.adb("shell", "echo alive").stdout == "alive\n"


def test_offline_for_first_requests_is_transient(tmp_path):
    with FakePhone(tmp_path, failures=Failures(offline_for_first=2)) as phone:
        first = phone.adb("shell", "echo 1")
        assert (first.returncode, first.stderr) == (1, "error: device offline\n")
        push = phone.adb("push", __file__, "/data/local/tmp/t.py")
        assert push.returncode == 1
        assert "failed to get feature set: device offline" in push.stdout + push.stderr
        assert phone.adb("shell", "echo 3").stdout == "3\n"
        phone.failures = Failures(offline_for_first=1)
        assert phone.adb("wait-for-device").returncode == 0  # waiting brings it back
        assert phone.adb("shell", "echo 4").stdout == "4\n"


@pytest.mark.parametrize("shell_v2", [True, False], ids=["v2", "legacy"])
def test_mid_output_disconnect(tmp_path, shell_v2):
    """adb 29 prints what it got and exits 0 in both modes: truncation is silent, so the
    product must check for an end marker of its own (e.g. an appended `echo EXIT:$?`)."""
    with FakePhone(tmp_path, shell_v2=shell_v2, failures=Failures(drop_after_bytes={r"^seq ": 1000})) as phone:
        r = phone.adb("shell", "seq 1 100000; echo EXIT:$?")
        full = "".join(f"{i}\n" for i in range(1, 100001)) + "EXIT:0\n"
        assert (r.returncode, r.stdout) == (0, full[:1000])
        assert "EXIT:" not in r.stdout
        assert phone.adb("shell", "echo still-alive").stdout == "still-alive\n"  # only that connection dropped
        _wait_until(lambda: phone.live_shells == 0)


def test_hang_until_client_is_killed(tmp_path):
    with FakePhone(tmp_path, failures=Failures(hang=["benchmark_model"])) as phone:
        t = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            phone.adb("shell", "/data/local/tmp/ec/benchmark_model --graph=x.tflite", timeout=1.0)
        assert time.monotonic() - t < 5
        assert phone.commands == ["/data/local/tmp/ec/benchmark_model --graph=x.tflite"]
        # a real command that outlives its client is killed when the client goes away (v2)
        with pytest.raises(subprocess.TimeoutExpired):
            phone.adb("shell", "sleep 30", timeout=1.0)
        _wait_until(lambda: phone.live_shells == 0)
        assert phone.adb("shell", "echo ok").stdout == "ok\n"


def test_injected_exit_code(tmp_path):
    with FakePhone(tmp_path, failures=Failures(exit_code={"benchmark_model": 139})) as phone:
        r = phone.adb("shell", "/data/local/tmp/ec/benchmark_model --graph=m.tflite")
        assert (r.returncode, r.stdout, r.stderr) == (139, "", "sh: injected failure (exit 139)\n")
        assert phone.adb("shell", "echo unaffected").returncode == 0


def test_quoted_artifact_name_is_safe_and_unquoted_is_not(phone, tmp_path):
    local = tmp_path / "a b;reboot.tflite"
    local.write_bytes(b"TFL3")
    remote = "/data/local/tmp/ec/a b;reboot.tflite"
    assert phone.adb("push", str(local), remote).returncode == 0
    assert phone.device_path(remote).read_bytes() == b"TFL3"
    r = phone.adb("shell", f"ls '{remote}'")
    assert (r.returncode, r.stdout) == (0, remote + "\n")
    assert not phone.rebooted
    unquoted = phone.adb("shell", f"ls {remote}")  # ls fails on "a", then runs "reboot.tflite"
    assert unquoted.returncode == 127
    assert not phone.rebooted
    # the marker is real: an unquoted stem ("a b;reboot", e.g. a file name without its
    # suffix) does run the phone's reboot
    with FakePhone(tmp_path / "careless") as careless:
        careless.adb("shell", f"ls {remote.removesuffix('.tflite')}")
        assert careless.rebooted


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_adb_binary_is_the_one_we_model():
    """The version check above ("0029") and the behaviours documented in phone.py are adb 29's."""
    out = subprocess.run([ADB, "version"], capture_output=True, text=True, timeout=10).stdout
    assert "Android Debug Bridge version 1.0.41" in out, out
    assert shutil.which("adb") == ADB
