"""Smoke test of tools/train_demo_model.py on a tiny synthetic Fashion-MNIST."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import torch

from edgecompress.fsutil import sha256_file

TOOL = Path(__file__).resolve().parents[2] / "tools" / "train_demo_model.py"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def fake_fashion_mnist(root: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 80), ("t10k", 20)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def load_tool():
    spec = importlib.util.spec_from_file_location("train_demo_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_tool_end_to_end(tmp_path, capsys):
    torch.set_num_threads(1)
    fake_fashion_mnist(tmp_path)
    out = tmp_path / "out" / "demo.pt"
    argv = ["--epochs", "1", "--width-mult", "0.35", "--data-dir", str(tmp_path), "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--val-size", "16", "--batch-size", "16", "--threads", "1",
            "--progress", "never"]
    tool = load_tool()
    assert tool.main(argv) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["sha256"] == sha256_file(out) and sidecar["bytes"] == out.stat().st_size
    assert sidecar["recipe"]["train"]["epochs"] == 1 and sidecar["recipe"]["arch_kwargs"]["width_mult"] == 0.35
    assert sidecar["metrics"]["test"]["n"] == 20 and sidecar["metrics"]["val"]["n"] == 16
    assert 0 <= sidecar["metrics"]["test"]["top1"] <= sidecar["metrics"]["test"]["top5"] <= 1
    assert {"torch", "torchvision", "python", "edgecompress"} <= set(sidecar["versions"])
    assert "test top1" in capsys.readouterr().out

    from edgecompress.models.loading import load_model

    loaded = load_model(str(out))
    assert loaded.input_shape == (1, 28, 28) and loaded.arch["spec"] == "zoo:mobilenet_v2"
    assert loaded.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)

    # --resume of a finished run trains nothing more and reports the same epoch history.
    assert tool.main([*argv, "--resume"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["resumed_from_epoch"] == 1 and again["history"][0]["train_loss"] == sidecar["history"][0]["train_loss"]


def test_demo_tool_missing_data(tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt"), "--progress", "never"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
