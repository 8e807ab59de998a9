"""Per-layer sensitivity and mixed precision (edgecompress/quantize/sensitivity.py) on a small CNN
trained on real Fashion-MNIST, made fragile on purpose in one layer."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from edgecompress.data.fashion_mnist import fashion_mnist_splits
from edgecompress.errors import UserError
from edgecompress.export.onnx_export import export_onnx
from edgecompress.quantize.onnx_quant import quantize_onnx_static
from edgecompress.quantize.sensitivity import LayerSensitivity, layer_sensitivity, mixed_precision, top1_evaluator

torch.set_num_threads(1)
SHAPE = (1, 28, 28)
FRAGILE = "/conv2/Conv"
OUTLIER = 500.0


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 2, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.conv3 = nn.Conv2d(16, 32, 3, 2, 1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.flatten(1))


def _take(dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = dataset.__getitems__(idx)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3) -> None:
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            batch = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(robust.onnx, fragile.onnx, calibration images, evaluate): ~5 s of training on 6000 images.

    fragile: conv1's channel 0 is made dead (zero weights and bias: exactly 0 after ReLU) and
    every output channel of conv2 gets a weight of 500 on that channel. In float the 500 meets
    only zeros, so top-1 is unchanged; in int8 it sets conv2's per-channel scale to 500/127,
    which rounds all its real weights (|w| ~ 0.09) to 0: conv2 alone destroys the model.
    """
    torch.manual_seed(0)
    splits = fashion_mnist_splits(SHAPE)
    x_train, y_train = _take(splits.train, 6000, seed=0)
    x_test, y_test = _take(splits.test, 500, seed=1)
    net = SmallCNN()
    _train(net, x_train, y_train)
    folder = tmp_path_factory.mktemp("sensitivity")
    robust = folder / "robust.onnx"
    export_onnx(net, torch.zeros(1, *SHAPE), robust)
    with torch.no_grad():
        net.conv1.weight[0] = 0.0
        net.conv1.bias[0] = 0.0
        net.conv2.weight[:, 0, 1, 1] = OUTLIER
    fragile = folder / "fragile.onnx"
    export_onnx(net, torch.zeros(1, *SHAPE), fragile)
    return robust, fragile, x_train[:200], top1_evaluator(x_test, y_test)


def test_fragile_layer_ranks_first(task):
    _, fragile, calib, evaluate = task
    ranking = layer_sensitivity(fragile, calib, evaluate, input_shape=SHAPE)

    assert [r.name for r in ranking][0] == FRAGILE
    assert {r.name for r in ranking} == {"/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc/Gemm"}
    fp32 = evaluate(fragile)
    assert fp32 > 0.75  # measured 82.8% on these 500 test images
    first = ranking[0]
    assert first.drop == pytest.approx(fp32 - first.accuracy)
    # Measured: conv2 alone drops 76 points (to chance); every other layer alone within 1 point.
    assert first.drop > 0.5 and first.accuracy < 0.2
    assert all(abs(r.drop) < 0.02 for r in ranking[1:])
    assert [r.drop for r in ranking] == sorted((r.drop for r in ranking), reverse=True)
    assert first.label == "conv2"


def test_sensitivity_of_chosen_layers_by_module_path(task):
    _, fragile, calib, evaluate = task
    ranking = layer_sensitivity(fragile, calib, evaluate, input_shape=SHAPE, layers=["fc", "conv2"])
    assert [r.name for r in ranking] == [FRAGILE, "/fc/Gemm"]
    assert isinstance(ranking[0], LayerSensitivity) and ranking[0].to_dict()["label"] == "conv2"


def test_mixed_precision_keeps_exactly_the_fragile_layer_float(task, tmp_path):
    _, fragile, calib, evaluate = task
    out = tmp_path / "mixed.onnx"
    # Measured: full int8 drops 76 points; with conv2 float the drop is 1.4 points.
    budget = 0.04
    art, report = mixed_precision(fragile, calib, evaluate, out, input_shape=SHAPE, budget=budget)

    assert list(art.float_layers) == [FRAGILE]
    assert art.float_layers[FRAGILE].startswith("kept float: drop ")
    assert art.float_layers[FRAGILE].endswith("points when quantized alone (rank 1)")
    assert report["within_budget"] and report["drop"] <= budget
    assert report["float_layers"] == art.float_layers
    assert [step["float_layers"] for step in report["path"]] == [[], [FRAGILE]]
    assert report["path"][0]["drop"] > 0.5
    assert report["path"][-1]["accuracy"] == report["accuracy"] == pytest.approx(evaluate(out))
    # fp32 + full int8 + 4 one-layer probes + the file with conv2 float
    assert report["evaluations"] == 7
    assert report["sensitivity"][0]["name"] == FRAGILE
    assert "3 of 4 layers int8, 1 kept float" in report["message"]
    assert art.path == out and sorted(p.name for p in tmp_path.iterdir()) == ["mixed.onnx"]


def test_mixed_precision_stops_at_full_int8_when_within_budget(task, tmp_path):
    robust, _, calib, evaluate = task
    art, report = mixed_precision(robust, calib, evaluate, tmp_path / "m.onnx", input_shape=SHAPE, budget=0.03)
    assert art.float_layers == {} and report["within_budget"]
    assert report["sensitivity"] is None and report["evaluations"] == 2  # never computed: not needed


def test_mixed_precision_says_when_nothing_is_left_to_keep_float(task, tmp_path):
    robust, _, calib, _ = task
    # An evaluation under which no int8 file is ever good enough: every file but fp32 scores 50%.
    def evaluate(path):
        return 1.0 if path == robust else 0.5

    art, report = mixed_precision(robust, calib, evaluate, tmp_path / "m.onnx", input_shape=SHAPE, budget=0.01)
    assert not report["within_budget"]
    assert set(art.float_layers) == {"/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc/Gemm"}
    assert "every layer kept float" in report["message"] and "ship the fp32 file" in report["message"]
    assert report["message"] in art.notes
    assert report["evaluations"] == 1 + 1 + 4 + 4  # fp32, full int8, 4 probes, 4 files with one more float


def test_an_excluded_layer_really_runs_float(task, tmp_path):
    """ORT quantizes at load time the weights of a float Conv fed by DequantizeLinear; the
    excluded layer must read the float tensor instead, or the fragile model still collapses."""
    _, fragile, calib, evaluate = task
    out = tmp_path / "ex.onnx"
    quantize_onnx_static(fragile, calib, out, input_shape=SHAPE, exclude=["conv2"])
    producer = {o: n.op_type for n in onnx.load(out).graph.node for o in n.output}
    conv2 = next(n for n in onnx.load(out).graph.node if n.name == FRAGILE)
    assert producer.get(conv2.input[0]) != "DequantizeLinear"
    assert evaluate(fragile) - evaluate(out) < 0.04  # measured 1.4 points (7% top-1 without the bypass)


def test_evaluate_must_return_a_fraction(task):
    _, fragile, calib, _ = task
    with pytest.raises(ValueError, match="fraction in"):
        layer_sensitivity(fragile, calib, lambda path: 82.8, input_shape=SHAPE, layers=["fc"])
    with pytest.raises(UserError, match="budget 1.5"):
        mixed_precision(fragile, calib, lambda path: 0.5, "x.onnx", input_shape=SHAPE, budget=1.5)
