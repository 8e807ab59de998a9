"""A latency function that exports and measures on a device (edgecompress/latency/source.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.devices import get_device
from edgecompress.errors import UserError
from edgecompress.latency.source import measured_latency_fn

torch.set_num_threads(1)


def test_measured_latency_is_positive_and_grows_with_the_model(tmp_path) -> None:
    fn = measured_latency_fn(get_device("host"), (3, 32, 32), runtime="onnxruntime", runs=20, warmup=3, work_dir=tmp_path)
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    big = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))
    t_small, t_big = fn(small), fn(big)
    assert 0 < t_small < t_big  # ~0.3 M vs ~150 M MACs: far apart even on a busy machine
    assert list(tmp_path.iterdir()) == []  # candidates are exported to a temporary folder and removed


def test_unknown_runtime_is_a_user_error() -> None:
    with pytest.raises(UserError, match="latency runtime 'tensorrt'"):
        measured_latency_fn(get_device("host"), (3, 8, 8), runtime="tensorrt")


# -- LatencySource kinds ------------------------------------------------------------------

from edgecompress.latency.lut import BlockSig, LatencyLUT, LutEntry  # noqa: E402
from edgecompress.latency.predictor import LatencyPredictor, decompose  # noqa: E402
from edgecompress.latency.source import (  # noqa: E402
    LatencySource,
    LutLatency,
    MacsLatency,
    MeasuredLatency,
    PredictorLatency,
    as_latency_fn,
    make_latency_source,
    model_macs,
)

SHAPE = (3, 16, 16)


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def _lut(fingerprint: dict) -> LatencyLUT:
    def ms(sig: BlockSig) -> float:
        ops, nbytes = sig.work()
        return 0.001 + 1e-8 * ops + 1e-8 * nbytes

    sigs = [k.sig for k in decompose(_tiny(), SHAPE).kernels]
    return LatencyLUT(fingerprint, "onnxruntime", 1, entries=[LutEntry(s, ms(s), ms(s), 0.0) for s in sigs])


def test_every_source_kind_gives_a_positive_latency(tmp_path) -> None:
    host = get_device("host")
    lut = _lut(host.fingerprint())
    lut_path = lut.save(tmp_path / "lut.json")
    predictor = LatencyPredictor(lut)
    predictor.correction.intercept_ms = 0.004
    pred_path = predictor.save(tmp_path / "predictor.json")
    sources = [
        MeasuredLatency(host, runs=5, warmup=1, work_dir=tmp_path),
        LutLatency(lut_path, device=host),
        PredictorLatency(pred_path, device=host),
        MacsLatency(1e-8),
        make_latency_source("lut", lut=lut),
        make_latency_source("predictor", predictor=predictor),
        make_latency_source("macs", ms_per_mac=2e-8),
        make_latency_source("measured", device=host, runs=5, warmup=1),
    ]
    model = _tiny()
    values = {}
    for source in sources:
        assert isinstance(source, LatencySource)
        values[source.name] = source.latency_ms(model, SHAPE)
        assert values[source.name] > 0, source.name
    lut_ms = values["lut:onnxruntime:t1"]
    assert values["predictor:onnxruntime:t1"] == pytest.approx(lut_ms + 0.004)
    assert values["macs"] == pytest.approx(2e-8 * model_macs(model, SHAPE))
    assert as_latency_fn(sources[1], SHAPE)(model) == lut_ms


def test_macs_latency_fit_minimises_relative_error() -> None:
    fitted = MacsLatency.fit([1e6, 2e6, 4e6], [1.0, 2.0, 4.0])
    assert fitted.ms_per_mac == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="ms_per_mac"):
        MacsLatency(0.0)


def test_source_errors_name_what_is_missing(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown latency source 'lutt'.*did you mean lut"):
        make_latency_source("lutt")
    with pytest.raises(UserError, match="needs a device"):
        make_latency_source("measured")
    with pytest.raises(UserError, match="needs a latency table"):
        make_latency_source("lut")
    with pytest.raises(UserError, match="needs ms_per_mac"):
        make_latency_source("macs")
    other = _lut({"id": "ffff00000000", "cpu_model": "Elsewhere CPU"})
    with pytest.raises(UserError, match="ffff00000000.*Elsewhere CPU"):
        LutLatency(other, device=get_device("host"))


def test_measured_latency_through_the_cache_measures_once(tmp_path) -> None:
    source = MeasuredLatency(get_device("host"), runs=5, warmup=1, cache=tmp_path / "latency.sqlite")
    model = _tiny()
    first = source.latency_ms(model, SHAPE)
    assert source.last_result.runtime_info["cache"] == "miss"
    again = source.latency_ms(model, SHAPE)  # the same weights export to the same bytes
    assert source.last_result.runtime_info["cache"] == "hit" and again == first
