from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from edgecompress.data import fashion_mnist as fm
from edgecompress.data.fashion_mnist import FashionMNIST, fashion_mnist_splits, load_split, read_idx, resolve_data_dir
from edgecompress.errors import UserError


def write_idx(path, array: np.ndarray, code: int, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_fake_dataset(root, n_train=12, n_test=4, size=28) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = fm.FILES[split]
        write_idx(root / images, rng.integers(0, 256, (n, size, size), dtype=np.uint8), 0x08)
        write_idx(root / labels, (np.arange(n) % 10).astype(np.uint8), 0x08)


def test_read_idx_uint8_and_int32(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a, 0x08)
    got = read_idx(tmp_path / "a.gz")
    assert got.shape == (2, 3, 4) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, a)
    b = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "b.idx", b, 0x0C, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.idx"), b)


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"\x00\x00\x08", "too short"),
        (b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc", "bad magic"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "need"),  # truncated data
        (b"\x00\x00\x08\x02" + b"\x00\x00", "header truncated"),
    ],
)
def test_read_idx_corrupt_names_file(tmp_path, payload, why):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(UserError, match="broken-idx1-ubyte.gz") as e:
        read_idx(path)
    assert why in str(e.value)


def test_read_idx_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="x.gz"):
        read_idx(path)


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGECOMPRESS_DATA", raising=False)
    with pytest.raises(UserError) as e:
        resolve_data_dir(tmp_path / "nowhere")
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "--data-dir" in msg and "EDGECOMPRESS_DATA" in msg
    assert str(tmp_path / "nowhere") in msg and "train-images-idx3-ubyte.gz" in msg


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    write_fake_dataset(tmp_path)
    monkeypatch.setenv("EDGECOMPRESS_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    with pytest.raises(UserError, match="elsewhere"):
        resolve_data_dir(tmp_path / "elsewhere")
    monkeypatch.delenv("EDGECOMPRESS_DATA")
    assert resolve_data_dir() == fm.DEFAULT_DATA_DIR


def test_fake_dataset_loads(tmp_path):
    write_fake_dataset(tmp_path, n_train=12, n_test=4)
    images, labels = load_split("train", tmp_path)
    assert images.shape == (12, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 10 for i in range(12)]
    splits = fashion_mnist_splits((1, 28, 28), tmp_path, val_size=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 4)


def test_mismatched_label_count_is_error(tmp_path):
    write_fake_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), 0x08)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        load_split("train", tmp_path)


def test_real_dataset_shapes():
    # CI installs dataset-fashion-mnist (Makefile), so a missing package is a failure here.
    images, labels = load_split("train")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).tolist() == [6000] * 10
    test_images, test_labels = load_split("test")
    assert test_images.shape == (10000, 28, 28)
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    # The published mean/std are those of the train pixels.
    x = images.float() / 255
    assert abs(x.mean().item() - fm.MEAN) < 1e-3 and abs(x.std().item() - fm.STD) < 1e-3


def test_real_splits_disjoint_and_deterministic():
    a = fashion_mnist_splits((1, 28, 28), val_size=5000, seed=0)
    b = fashion_mnist_splits((1, 28, 28), val_size=5000, seed=0)
    c = fashion_mnist_splits((1, 28, 28), val_size=5000, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (55000, 5000, 10000)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.targets, b.train.targets)
    assert not torch.equal(a.val.images, c.val.images)
    train_pos, val_pos = set(a.train.indices.tolist()), set(a.val.indices.tolist())
    assert not train_pos & val_pos and len(train_pos | val_pos) == 60000
    full_images, full_labels = load_split("train")
    assert torch.equal(a.val.images, full_images[a.val.indices])
    assert torch.equal(a.train.targets, full_labels[a.train.indices])
    # Each class is represented in val roughly in proportion (500 each, +-15%).
    counts = torch.bincount(a.val.targets, minlength=10)
    assert counts.min() > 425 and counts.max() < 575


def test_padding_28_to_32_uses_background_value():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[:, 10, 10] = 255
    ds = FashionMNIST(images, torch.tensor([3, 4]), (1, 32, 32))
    x, y = ds[0]
    background = (0 - fm.MEAN) / fm.STD
    assert x.shape == (1, 32, 32) and y == 3
    assert x[0, 0, 0].item() == pytest.approx(background, abs=1e-6)
    assert x[0, 12, 12].item() == pytest.approx((1 - fm.MEAN) / fm.STD, abs=1e-6)  # shifted by 2
    assert (x != x[0, 0, 0]).sum().item() == 1


def test_three_channels_and_resize():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    ds3 = FashionMNIST(images, torch.arange(5), (3, 32, 32))
    items = ds3.__getitems__([0, 4])
    x = items[0][0]
    assert x.shape == (3, 32, 32) and [lbl for _, lbl in items] == [0, 4]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(ds3[4][0], items[1][0])
    big = FashionMNIST(images, torch.arange(5), (1, 64, 64))[0][0]
    assert big.shape == (1, 64, 64)
    # Bilinear upscale keeps the mean brightness within a few percent.
    raw = (images[0].float() / 255 - fm.MEAN) / fm.STD
    assert abs(big.mean().item() - raw.mean().item()) < 0.05


def test_augmentation_is_seeded_and_label_preserving():
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    ds = FashionMNIST(images, torch.arange(8), (1, 28, 28), augment=True)
    torch.manual_seed(5)
    a = ds.__getitems__(list(range(8)))
    torch.manual_seed(5)
    b = ds.__getitems__(list(range(8)))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    plain = FashionMNIST(images, torch.arange(8), (1, 28, 28)).__getitems__(list(range(8)))
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(a, plain))
    assert [lbl for _, lbl in a] == list(range(8))
