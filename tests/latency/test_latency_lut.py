"""Per-op latency tables (edgecompress/latency/lut.py): profiling, storage, fingerprints, interpolation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgecompress.devices.base import LatencyResult
from edgecompress.errors import UserError
from edgecompress.latency.lut import (
    GRID_PRESETS,
    BlockSig,
    LatencyLUT,
    LutEntry,
    LutGrid,
    load_grid,
    nnls,
    profile_lut,
)

torch.set_num_threads(1)

FP = {"id": "aaaa00001111", "kind": "host", "cpu_model": "Fake CPU 9000", "runtimes": {"onnxruntime": "9.9"}}
OTHER = {"id": "bbbb22223333", "kind": "host", "cpu_model": "Other CPU 1"}


class FakeDevice:
    """Deterministic 'latency' from the artifact's size: 5 us + 1 us per KiB."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fingerprint(self) -> dict:
        return dict(FP)

    def runtimes(self) -> list[str]:
        return ["onnxruntime"]

    def measure(self, artifact, runtime=None, threads=1, runs=50, warmup=10, trials=3) -> LatencyResult:
        self.calls.append(str(artifact))
        ms = 0.005 + 0.001 * artifact.stat().st_size / 1024
        return LatencyResult(p50_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, min_ms=ms, runs=runs, warmup=warmup,
                             trials=trials, threads=threads, runtime=runtime, runtime_version="9.9",
                             artifact=str(artifact), artifact_sha256="0" * 64, device=self.name,
                             fingerprint=FP, trial_p50s_ms=[ms] * trials)


TINY = LutGrid("tiny", (
    {"op": "conv", "k": [1, 3], "channels": [8, 16], "res": [8], "act": ["relu"]},
    {"op": "add", "channels": [8], "res": [8]},
))


def test_profile_round_trip_and_resume(tmp_path) -> None:
    device = FakeDevice()
    out = tmp_path / "lut.json"
    lut = profile_lut(device, TINY, out=out, runs=5, warmup=1, trials=1, progress=False)
    sigs = TINY.signatures("onnxruntime", 1)
    assert len(lut) == len(sigs) == 5
    # 4 conv inputs share 2 shapes, add has its own: 3 empty models + 5 blocks measured.
    assert len(device.calls) == 8 and len(lut.overheads) == 3
    for entry in lut.entries.values():
        assert entry.ms == pytest.approx(max(0.0, entry.raw_ms - entry.overhead_ms))
    big = lut.lookup(BlockSig("conv", 16, 16, k=3, h=8, w=8, act="relu"))
    small = lut.lookup(BlockSig("conv", 8, 8, k=1, h=8, w=8, act="relu"))
    assert big > small > 0  # 2.3k vs 64 weights: a bigger file, a longer fake time

    data = json.loads(out.read_text())
    assert data["fingerprint"]["id"] == FP["id"] and data["runtime"] == "onnxruntime" and data["threads"] == 1
    assert data["runtime_version"] == "9.9" and len(data["entries"]) == 5
    again = LatencyLUT.load(out, fingerprint=FP)
    assert {k: e.ms for k, e in again.entries.items()} == {k: e.ms for k, e in lut.entries.items()}

    with pytest.raises(UserError, match="already exists; pass --resume"):
        profile_lut(device, TINY, out=out, progress=False)
    bigger = LutGrid("bigger", (*TINY.families, {"op": "gap", "channels": [8], "res": [4]}))
    before = len(device.calls)
    resumed = profile_lut(device, bigger, out=out, resume=True, runs=5, warmup=1, trials=1, progress=False)
    assert len(resumed) == 6
    assert len(device.calls) - before == 2  # only the new block and its empty model


def test_fingerprint_mismatch_names_both_devices(tmp_path) -> None:
    lut = LatencyLUT(FP, "onnxruntime", 1, entries=[LutEntry(BlockSig("gap", 8, 8, h=4, w=4), 0.001, 0.006, 0.005)])
    path = lut.save(tmp_path / "lut.json")
    with pytest.raises(UserError) as info:
        LatencyLUT.load(path, fingerprint=OTHER)
    text = str(info.value)
    for needle in (FP["id"], OTHER["id"], "Fake CPU 9000", "Other CPU 1"):
        assert needle in text
    phone = {"id": "cccc44445555", "kind": "android", "manufacturer": "Google", "model": "Pixel 7", "soc": "gs201"}
    with pytest.raises(UserError, match="Google Pixel 7, gs201"):
        lut.check_fingerprint(phone)
    with pytest.raises(UserError, match="not a readable latency table"):
        (tmp_path / "bad.json").write_text("{}")
        LatencyLUT.load(tmp_path / "bad.json")


def _synthetic(ms_of, sigs) -> LatencyLUT:
    return LatencyLUT(FP, "onnxruntime", 1, entries=[LutEntry(s, ms_of(s), ms_of(s), 0.0) for s in sigs])


def _affine(sig: BlockSig) -> float:
    ops, nbytes = sig.work()
    return 0.002 + 1e-8 * ops + 5e-9 * nbytes


def test_interpolation_of_unseen_shapes() -> None:
    grid = [BlockSig("conv", c, int(c * r), k=3, h=res, w=res, act="relu")
            for c in (16, 32, 64, 128) for r in (0.5, 1, 2) for res in (8, 16, 32)]
    lut = _synthetic(_affine, grid)
    # exact entries come back as stored
    assert lut.lookup(grid[5]) == _affine(grid[5])
    # between grid points (channels 48 and 96, 24 px) and beyond it (256 channels)
    for sig in (BlockSig("conv", 48, 96, k=3, h=24, w=24, act="relu"),
                BlockSig("conv", 96, 48, k=3, h=12, w=12, act="relu"),
                BlockSig("conv", 256, 256, k=3, h=16, w=16, act="relu")):
        assert lut.lookup(sig) == pytest.approx(_affine(sig), rel=0.03)
    # another activation or stride than the grid has: falls back to the same op's entries
    relaxed = BlockSig("conv", 64, 64, k=3, stride=2, h=16, w=16, act="relu6")
    assert lut.lookup(relaxed) == pytest.approx(_affine(relaxed), rel=0.10)
    with pytest.raises(UserError, match="no 'dwconv' blocks"):
        lut.lookup(BlockSig("dwconv", 32, 32, k=3, groups=32, h=8, w=8))
    with pytest.raises(UserError, match="litert at 1 thread"):
        lut.lookup(BlockSig("conv", 32, 32, k=3, h=8, w=8, runtime="litert"))


def test_interpolation_prefers_entries_of_the_same_alignment() -> None:
    """Aligned widths are fast, odd ones 3x slower: a query takes its neighbours from its own class."""

    def ms(sig: BlockSig) -> float:
        return _affine(sig) * (1 if sig.cin % 8 == 0 else 3)

    grid = [BlockSig("conv", c, c, k=1, h=16, w=16) for c in (16, 24, 32, 40, 48, 64, 17, 25, 33, 41, 49, 65)]
    lut = _synthetic(ms, grid)
    for c in (56, 57):
        sig = BlockSig("conv", c, c, k=1, h=16, w=16)
        assert lut.lookup(sig) == pytest.approx(ms(sig), rel=0.15)


def test_nnls_matches_the_known_solution() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((30, 4))
    x_true = np.array([0.5, 0.0, 2.0, 1.0])
    assert nnls(a, a @ x_true) == pytest.approx(x_true, abs=1e-8)
    # the unconstrained optimum has a negative coordinate: clipped to 0, rest refitted
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = nnls(a, np.array([-1.0, 2.0, 1.0]))
    assert x[0] == 0 and x[1] == pytest.approx(1.5)


@pytest.mark.parametrize("sig", [
    BlockSig("conv", 3, 16, k=3, stride=2, h=9, w=9, act="hardswish"),
    BlockSig("dwconv", 16, 16, k=5, groups=16, h=8, w=8, act="relu6"),
    BlockSig("gconv", 16, 32, k=1, groups=4, h=8, w=8, act="relu"),
    BlockSig("linear", 32, 10),
    BlockSig("maxpool", 8, 8, k=3, stride=2, h=9, w=9),
    BlockSig("avgpool", 8, 8, k=3, stride=2, h=8, w=8),
    BlockSig("gap", 8, 8, h=5, w=5),
    BlockSig("add", 8, 8, h=4, w=4, act="relu"),
    BlockSig("mul", 8, 8, h=4, w=4),
    BlockSig("act", 8, 8, h=4, w=4, act="affine"),
    BlockSig("concat", 8, 24, groups=3, h=4, w=4),
    BlockSig("split", 8, 8, groups=2, h=4, w=4),
    BlockSig("shuffle", 12, 12, groups=3, h=4, w=4),
])
def test_blocks_build_with_the_signature_shapes(sig: BlockSig) -> None:
    out = sig.build()(*[torch.randn(s) for s in sig.input_shapes()])
    first = out[0] if isinstance(out, tuple) else out
    ho, wo = sig.out_hw()
    if sig.op == "linear":
        assert tuple(first.shape) == (1, sig.cout)
    elif sig.op == "split":
        assert len(out) == sig.groups and tuple(first.shape) == (1, sig.cin // sig.groups, sig.h, sig.w)
    else:
        assert tuple(first.shape) == (1, sig.cout, ho, wo)
    assert sig.work()[1] > 0 and (sig.macs() > 0) == (sig.op in ("conv", "dwconv", "gconv", "linear"))


def test_signature_validation_and_keys() -> None:
    sig = BlockSig("conv", 32, 64, k=3, h=16, w=16, act="relu")
    assert sig.key == "conv|cin=32|cout=64|k=3|s=1|g=1|h=16|w=16|act=relu|onnxruntime|t1"
    assert BlockSig.from_dict(sig.to_dict()) == sig
    assert sig.macs() == 64 * 32 * 9 * 16 * 16
    with pytest.raises(ValueError, match="op = 'convolution'"):
        BlockSig("convolution", 8, 8)
    with pytest.raises(ValueError, match="groups = cin = cout"):
        BlockSig("dwconv", 8, 16, groups=8)
    with pytest.raises(ValueError, match="act = 'relu7'"):
        BlockSig("conv", 8, 8, act="relu7")


def test_grids_presets_files_and_errors(tmp_path) -> None:
    sizes = {name: len(load_grid(name).signatures("onnxruntime", 1)) for name in GRID_PRESETS}
    assert sizes["small"] < 60 and sizes["small"] < sizes["default"]
    ops = {s.op for s in load_grid("default").signatures("onnxruntime", 1)}
    assert ops == {"conv", "dwconv", "gconv", "linear", "maxpool", "avgpool", "gap", "add", "mul", "concat",
                   "split", "shuffle", "act"}
    ks = {s.k for s in load_grid("default").signatures("onnxruntime", 1) if s.op == "conv"}
    assert ks == {1, 3, 5}
    path = tmp_path / "g.yaml"
    path.write_text("families:\n  - {op: conv, k: [1], channels: [8, 16], cout_ratio: [1, 2], res: [4]}\n")
    grid = load_grid(path)
    assert grid.name == "g" and len(grid.signatures("litert", 2)) == 4
    assert all(s.runtime == "litert" and s.threads == 2 for s in grid.signatures("litert", 2))
    with pytest.raises(UserError, match="did you mean small"):
        load_grid("smal")
    path.write_text("families:\n  - {op: conv, kernel: [1], channels: [8]}\n")
    with pytest.raises(UserError, match="unknown key 'kernel'"):
        load_grid(path)


def test_profile_on_the_host_subtracts_the_invoke_overhead(tmp_path) -> None:
    from edgecompress.devices import LocalDevice

    grid = LutGrid("host", ({"op": "conv", "k": [3], "channels": [32], "res": [16], "act": ["relu"]},
                            {"op": "add", "channels": [32], "res": [16]}))
    lut = profile_lut(LocalDevice(), grid, runs=5, warmup=1, trials=1, progress=False, work_dir=tmp_path)
    conv = lut.entries[BlockSig("conv", 32, 32, k=3, h=16, w=16, act="relu").key]
    assert conv.overhead_ms > 0 and conv.raw_ms > conv.overhead_ms  # 2.4 M MACs are not free
    assert math.isclose(conv.ms, conv.raw_ms - conv.overhead_ms)
    assert lut.runtime_version == lut.fingerprint["runtimes"]["onnxruntime"]
    assert list(tmp_path.iterdir()) == []  # block files live in a scratch folder that is removed


def test_profile_command_writes_and_resumes_a_table(tmp_path) -> None:
    from click.testing import CliRunner

    from edgecompress.latency.profile_cli import profile

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"families": [{"op": "gap", "channels": [8, 16], "res": [4]}]}))
    out = tmp_path / "lut.json"
    args = ["--device", "host", "--grid", str(grid), "--out", str(out), "--runs", "5", "--warmup", "1"]
    result = CliRunner().invoke(profile, args)
    assert result.exit_code == 0, result.output
    assert "2 blocks in" in result.output
    assert len(json.loads(out.read_text())["entries"]) == 2
    again = CliRunner().invoke(profile, args)
    assert isinstance(again.exception, UserError) and "--resume" in str(again.exception)
    resumed = CliRunner().invoke(profile, [*args, "--resume"])
    assert resumed.exit_code == 0 and "2 blocks in" in resumed.output
    bad = CliRunner().invoke(profile, ["--grid", "tiny-grid", "--out", str(tmp_path / "x.json")])
    assert isinstance(bad.exception, UserError) and "neither a preset" in str(bad.exception)
