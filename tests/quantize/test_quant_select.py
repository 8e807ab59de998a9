"""Scheme choice by measurement (edgecompress/quantize/select.py): on this host for real, and
with a scripted device whose timings are known, to check the decision itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.devices import get_device
from edgecompress.devices.base import LatencyResult
from edgecompress.errors import UserError
from edgecompress.export.onnx_export import export_onnx
from edgecompress.quantize.sensitivity import top1_evaluator
from edgecompress.quantize.select import SchemeChoice, choose_scheme

torch.set_num_threads(1)
SHAPE = (1, 16, 16)
U8, S8 = "qdq-u8s8-per-channel", "qdq-s8s8-per-channel"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(fp32 file, calibration images, evaluate): a random conv net, labelled by its own fp32 argmax."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    ).eval()
    path = tmp_path_factory.mktemp("select") / "tiny.onnx"
    export_onnx(net, torch.zeros(1, *SHAPE), path)
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(128, *SHAPE, generator=g)
    x = torch.randn(300, *SHAPE, generator=g)
    with torch.no_grad():
        labels = net(x).argmax(1)  # fp32 top-1 is 1.0 by construction: the drop is int8's disagreement
    return path, calib, top1_evaluator(x, labels)


def test_choose_scheme_on_this_host(tiny, tmp_path):
    fp32, calib, evaluate = tiny
    budget = 0.05
    choice = choose_scheme(fp32, calib, evaluate, get_device("host"), tmp_path, input_shape=SHAPE,
                           budget=budget, runs=30, warmup=5, trials=2)

    assert isinstance(choice, SchemeChoice) and choice.device == "host"
    assert choice.fp32_accuracy == 1.0 and choice.fp32_p50_ms[1] > 0
    assert [c.scheme for c in choice.candidates] == [U8, S8]
    for c in choice.candidates:
        assert c.path == tmp_path / f"model.{c.scheme}.onnx" and c.path.is_file()
        assert c.p50_ms[1] > 0 and c.speedup[1] == pytest.approx(choice.fp32_p50_ms[1] / c.p50_ms[1])
        assert 0.0 <= c.accuracy <= 1.0 and c.drop == pytest.approx(1.0 - c.accuracy)
        assert c.within_budget == (c.drop <= budget)
    # Which scheme wins depends on this noisy, shared CPU: only the rules are asserted.
    if choice.scheme is None:
        assert choice.path == fp32 and "ship the fp32 file" in choice.reason
    else:
        chosen = next(c for c in choice.candidates if c.scheme == choice.scheme)
        assert chosen.within_budget and chosen.mean_speedup > 1.0 and choice.path == chosen.path
        assert choice.reason.startswith(f"{choice.scheme}: ") and "x the speed of fp32 on host at 1 thread" in choice.reason
        assert all(chosen.mean_speedup >= c.mean_speedup for c in choice.candidates if c.within_budget)
    assert choice.to_dict()["candidates"][0]["scheme"] == U8


class ScriptedDevice:
    """A device whose p50 for a file is looked up by the file's name (ms)."""

    name = "scripted"

    def __init__(self, p50_by_name: dict[str, float]):
        self.p50_by_name = p50_by_name
        self.calls: list[tuple[str, int]] = []

    def fingerprint(self) -> dict:
        return {"id": "scripted"}

    def runtimes(self) -> list[str]:
        return ["onnxruntime"]

    def measure(self, artifact: Path, runtime=None, threads=1, runs=50, warmup=10, trials=3) -> LatencyResult:
        self.calls.append((Path(artifact).name, threads))
        p50 = self.p50_by_name[Path(artifact).name] / threads
        return LatencyResult(
            p50_ms=p50, p90_ms=p50, mean_ms=p50, std_ms=0.0, min_ms=p50, runs=runs, warmup=warmup, trials=trials,
            threads=threads, runtime="onnxruntime", runtime_version="x", artifact=str(artifact), artifact_sha256="0",
            device=self.name, trial_p50s_ms=[p50] * trials, samples_ms=[p50] * (runs * trials),
        )


def _scripted(fp32: float, u8: float, s8: float) -> ScriptedDevice:
    return ScriptedDevice({"tiny.onnx": fp32, f"model.{U8}.onnx": u8, f"model.{S8}.onnx": s8})


def test_picks_the_fastest_within_budget_and_interleaves(tiny, tmp_path):
    fp32, calib, evaluate = tiny
    device = _scripted(fp32=2.0, u8=1.0, s8=1.6)
    choice = choose_scheme(fp32, calib, evaluate, device, tmp_path, input_shape=SHAPE, threads=(1, 2),
                           budget=0.2, runs=3, warmup=0, trials=2)
    assert choice.scheme == U8 and choice.path == tmp_path / f"model.{U8}.onnx"
    u8 = choice.candidates[0]
    assert u8.speedup == {1: 2.0, 2: 2.0} and u8.p50_ms == {1: 1.0, 2: 0.5}
    assert choice.reason.startswith(f"{U8}: 2.00x the speed of fp32 on scripted at 1/2 threads")
    assert "fastest of 2 within budget" in choice.reason
    # one round of every (file, threads) before the next round
    names = ["tiny.onnx", f"model.{U8}.onnx", f"model.{S8}.onnx"]
    one_round = [(n, t) for n in names for t in (1, 2)]
    assert device.calls == one_round * 2


def test_int8_slower_than_fp32_means_ship_fp32(tiny, tmp_path):
    fp32, calib, evaluate = tiny
    choice = choose_scheme(fp32, calib, evaluate, _scripted(fp32=1.0, u8=1.2, s8=1.5), tmp_path,
                           input_shape=SHAPE, budget=0.2, runs=3, warmup=0, trials=1)
    assert choice.scheme is None and choice.path == fp32
    assert choice.reason.startswith("int8 is not faster than fp32 on scripted at 1 thread")
    assert f"{U8} at 0.83x" in choice.reason and choice.reason.endswith("ship the fp32 file")


def test_accuracy_budget_overrides_speed(tiny, tmp_path):
    fp32, calib, _ = tiny

    def evaluate(path):  # the fast u8 file loses 3 points, the s8 one 0.2 point
        return {"tiny.onnx": 0.9, f"model.{U8}.onnx": 0.87, f"model.{S8}.onnx": 0.898}[Path(path).name]

    choice = choose_scheme(fp32, calib, evaluate, _scripted(fp32=2.0, u8=1.0, s8=1.8), tmp_path,
                           input_shape=SHAPE, budget=0.005, runs=3, warmup=0, trials=1)
    assert choice.scheme == S8 and "drop 0.20 points, budget 0.50" in choice.reason
    assert [c.within_budget for c in choice.candidates] == [False, True]
    choice = choose_scheme(fp32, calib, evaluate, _scripted(fp32=2.0, u8=1.0, s8=1.8), tmp_path,
                           input_shape=SHAPE, budget=0.001, runs=3, warmup=0, trials=1)
    assert choice.scheme is None and choice.reason.startswith("no int8 scheme keeps top-1 within 0.10 points")


def test_dynamic_candidate_and_bad_arguments(tiny, tmp_path):
    fp32, calib, evaluate = tiny
    device = ScriptedDevice({"tiny.onnx": 1.0, "model.dynamic-range-int8.onnx": 0.9})
    choice = choose_scheme(fp32, calib, evaluate, device, tmp_path, input_shape=SHAPE, budget=0.5,
                           candidates=("dynamic-range-int8",), runs=3, warmup=0, trials=1)
    assert [c.scheme for c in choice.candidates] == ["dynamic-range-int8"]
    with pytest.raises(UserError, match="unknown quantization scheme 'qdq-u8u8'"):
        choose_scheme(fp32, calib, evaluate, device, tmp_path, input_shape=SHAPE, candidates=("qdq-u8u8",))
    with pytest.raises(UserError, match="no candidate schemes"):
        choose_scheme(fp32, calib, evaluate, device, tmp_path, input_shape=SHAPE, candidates=())
    with pytest.raises(UserError, match="threads"):
        choose_scheme(fp32, calib, evaluate, device, tmp_path, input_shape=SHAPE, threads=(0,))
