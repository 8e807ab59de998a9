import json
import subprocess
import sys

import pytest

from edgecompress.devices import LocalDevice, get_device, list_devices, list_profiles, load_profile
from edgecompress.errors import UserError


def test_get_device_host_and_errors():
    assert isinstance(get_device("host"), LocalDevice)
    with pytest.raises(UserError, match="adb executable .* does not exist.*apt-get install adb"):
        get_device("adb:emulator-5554")  # the suite disables adb (tests/conftest.py)
    with pytest.raises(UserError, match=r"unknown device 'hots' \(did you mean host\?\); valid: host"):
        get_device("hots")


def test_list_devices_has_host_with_fingerprint():
    devices = list_devices()
    assert [d["name"] for d in devices] == ["host"]
    assert "no phones listed" in devices[0]["note"] and "apt-get install adb" in devices[0]["note"]
    fp = devices[0]["fingerprint"]
    assert fp["id"] == LocalDevice().fingerprint()["id"] and fp["logical_cores"] >= 1
    assert devices[0]["runtimes"] == ["onnxruntime", "litert"]
    json.dumps(devices)  # the CLI prints it as JSON


def test_host_profile():
    assert "host" in list_profiles()
    p = load_profile("host")
    assert (p.name, p.connection, p.runtimes, p.threads) == ("host", "host", ("onnxruntime", "litert"), (1, 2))
    assert (p.runs, p.warmup, p.trials) == (50, 10, 3)
    assert p.to_dict()["threads"] == [1, 2]


def test_profiles_from_env_and_path(tmp_path, monkeypatch):
    (tmp_path / "pixel.yaml").write_text(
        "connection: adb\nabi: arm64-v8a\ncpu_mask: f0\nruntimes: [litert]\nthreads: [1, 4]\n"
        "binaries: {litert: /data/local/tmp/benchmark_model}\nflags: {litert: [--use_xnnpack=true]}\n"
    )
    (tmp_path / "typo.yaml").write_text("connection: host\nruntimes: [onnxruntime]\nthreads: [1]\nwarmpu: 3\n")
    (tmp_path / "badthreads.yaml").write_text("connection: host\nruntimes: [onnxruntime]\nthreads: [0]\n")
    monkeypatch.setenv("EDGECOMPRESS_PROFILES", str(tmp_path))
    assert list_profiles() == ["badthreads", "pixel", "typo"]
    p = load_profile("pixel")
    assert (p.name, p.cpu_mask, p.threads, p.runs) == ("pixel", "f0", (1, 4), 50)
    assert load_profile(tmp_path / "pixel.yaml") == p
    with pytest.raises(UserError, match=r"unknown key 'warmpu' \(did you mean warmup\?\)"):
        load_profile("typo")
    with pytest.raises(UserError, match=r"threads must be a non-empty list of positive integers, got \[0\]"):
        load_profile("badthreads")
    with pytest.raises(UserError, match=r"unknown device profile 'pixle' \(did you mean pixel\?\)"):
        load_profile("pixle")
    with pytest.raises(UserError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="adb executable"):
        get_device("pixel")  # a phone profile needs adb (disabled in the suite)


def test_importing_devices_does_not_import_runtimes():
    code = (
        "import sys, json\n"
        "import edgecompress.devices as d, edgecompress.latency.stats\n"
        "d.list_devices(); d.get_device('host').fingerprint(); d.load_profile('host')\n"
        "heavy = ('onnxruntime', 'ai_edge_litert', 'tflite_runtime', 'litert_torch', 'torch', 'torchvision', 'onnx')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_preferred_round_to_reads_the_profile_then_asks_the_device() -> None:
    from types import SimpleNamespace

    from edgecompress.devices.local import host_round_to
    from edgecompress.devices.profiles import preferred_round_to

    assert preferred_round_to(get_device("host")) == host_round_to()  # host.yaml: auto
    asks_16 = SimpleNamespace(name="pixel-7", round_to=lambda: 16)
    assert preferred_round_to(asks_16) == 8  # the profile wins over the device's own answer
    assert preferred_round_to(SimpleNamespace(name="adb:X1", round_to=lambda: 4)) == 4  # no profile: ask it
    assert preferred_round_to(SimpleNamespace(name="adb:X1")) is None  # neither says


def test_profile_int8_answer_is_checked_and_kept_by_get_device(tmp_path, monkeypatch) -> None:
    from edgecompress.devices.profiles import device_profile

    base = "connection: host\nruntimes: [onnxruntime]\nthreads: [1]\n"
    (tmp_path / "board.yaml").write_text(base + "int8: {onnx: qdq-u8s8-per-channel, tflite: fp32, why: measured}\n")
    (tmp_path / "typo.yaml").write_text(base + "int8: {onnx: qdq-u8s8-per-chanel, why: measured}\n")
    (tmp_path / "nowhy.yaml").write_text(base + "int8: {tflite: full-int8}\n")
    (tmp_path / "dynamic.yaml").write_text(base + "int8: {onnx: dynamic-range-int8, why: x}\n")
    (tmp_path / "list.yaml").write_text(base + "int8: [full-int8]\n")
    monkeypatch.setenv("EDGECOMPRESS_PROFILES", str(tmp_path))
    device = get_device("board")
    assert device_profile(device).int8 == {"onnx": "qdq-u8s8-per-channel", "tflite": "fp32", "why": "measured"}
    with pytest.raises(UserError, match=r"int8.onnx 'qdq-u8s8-per-chanel' must be one of .*\(did you mean qdq-u8s8-per-channel"):
        load_profile("typo")
    with pytest.raises(UserError, match=r"int8.why must say where the answer comes from"):
        load_profile("nowhy")
    with pytest.raises(UserError, match=r"int8.onnx 'dynamic-range-int8' must be one of qdq-u8s8-per-channel"):
        load_profile("dynamic")
    with pytest.raises(UserError, match=r"int8 must be a mapping, got \['full-int8'\]"):
        load_profile("list")


def test_phone_profiles_state_the_tflite_int8_answer_and_round_to_follows_the_profile() -> None:
    from edgecompress.devices.profiles import DeviceProfile, preferred_round_to

    for name in ("android-arm64-generic", "galaxy-s23", "pixel-4", "pixel-7"):
        int8 = load_profile(name).int8
        assert int8["tflite"] == "full-int8" and "dot-product" in int8["why"] and "onnx" not in int8
    # A phone made from a profile is named adb:SERIAL; its profile still decides round_to.
    from types import SimpleNamespace

    phone = SimpleNamespace(name="adb:X1", round_to=lambda: 4,
                            profile=DeviceProfile(name="p", connection="adb", runtimes=("litert",), threads=(1,), round_to=32))
    assert preferred_round_to(phone) == 32
