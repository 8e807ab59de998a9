"""A phone that disappears in the middle of a search: the search pauses at its checkpoint
with a clear message, and resumes from it once the phone is back (fake phone, real adb)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from edgecompress.cli import main
from edgecompress.devices.adb import AdbDevice
from edgecompress.devices.base import DeviceUnavailableError
from edgecompress.latency.source import MeasuredLatency
from edgecompress.models import create_model
from edgecompress.search.runner import SearchPaused, run_search
from edgecompress.search.space import SearchSpace
from fakes.phone import ADB, FakePhone

pytestmark = pytest.mark.skipif(ADB is None, reason="no adb client (apt-get install adb; CI installs it)")
torch.set_num_threads(1)
FAKE_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakes", "bin")


@pytest.fixture
def phone(tmp_path, monkeypatch):
    with FakePhone(tmp_path / "phone", serial="emulator-5554") as p:
        for key, value in p.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("ADB", ADB)
        yield p


def _device(phone) -> AdbDevice:
    device = AdbDevice(phone.serial, ADB, timeout_s=60, retries=1)
    device.client.backoff_s = 0.01
    device.setup(ort_perf_test=os.path.join(FAKE_BIN, "onnxruntime_perf_test"))
    return device


class GoesOffline:
    """Accuracy = kept parameter share; the phone goes offline when candidate `at` is scored."""

    def __init__(self, phone, at: int) -> None:
        self.phone, self.at, self.calls = phone, at, 0

    def __call__(self, model) -> float:
        self.calls += 1
        if self.calls == self.at:
            self.phone.set_state("offline")
        return round(sum(p.numel() for p in model.parameters()) / 1e6, 6)


def test_device_lost_mid_search_pauses_and_resumes(phone, tmp_path):
    model = create_model("resnet20", num_classes=10, in_channels=1)
    space = SearchSpace.from_model(model, (1, 28, 28))
    source = MeasuredLatency(_device(phone), "onnxruntime", 1, runs=3, warmup=1, work_dir=tmp_path)
    out = tmp_path / "search"
    accuracy = GoesOffline(phone, at=4)
    with pytest.raises(SearchPaused) as info:
        run_search("random", space, accuracy, source, "macs=0.6", episodes=6, seed=0, out_dir=out, progress=False)
    message = str(info.value)
    assert isinstance(info.value, DeviceUnavailableError) and info.value.exit_code == 75
    assert "search paused in episode 4 of 6" in message and "emulator-5554" in message
    assert "episodes 1-3" in message and "--resume" in message and str(out / "search_state.pt") in message
    log = json.loads((out / "search_log.json").read_text())["episodes"]
    assert [r["episode"] for r in log] == [1, 2, 3]

    phone.set_state("device")  # the phone is back
    resumed = run_search("random", space, accuracy, source, "macs=0.6", episodes=6, seed=0, out_dir=out,
                         resume=True, progress=False)
    assert [r["episode"] for r in resumed.log] == [1, 2, 3, 4, 5, 6]
    assert all(r["latency_ms"] > 0 for r in resumed.log)
    # The same candidates as a search that never lost its phone (latency aside: it is timed again).
    straight = run_search("random", space, accuracy, None, "macs=0.6", episodes=6, seed=0, progress=False)
    assert [r["widths"] for r in resumed.log] == [r["widths"] for r in straight.log]


def test_cli_exit_code_75_when_the_device_goes_away(monkeypatch, capsys):
    def lost(*args, **kwargs):
        raise SearchPaused("search paused in episode 2 of 5: the device became unavailable (gone)")

    monkeypatch.setattr("edgecompress.search.api.search_command", lost)
    code = main(["search", "zoo:resnet20", "--target", "macs=0.5", "--episodes", "5", "--out", "x"])
    assert code == 75
    assert "search paused in episode 2 of 5" in capsys.readouterr().err
