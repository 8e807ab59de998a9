from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgecompress.data.image_folder import ImageFolder
from edgecompress.errors import UserError


def make_folder(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.fromarray(np.full((28, 28, 3), 255, np.uint8)).save(root / "cat" / "a.png")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(root / "dog" / "b.jpg")
    Image.fromarray(np.full((10, 10), 128, np.uint8)).save(root / "dog" / "c.PNG")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_classes_labels_and_shapes(tmp_path):
    make_folder(tmp_path)
    ds = ImageFolder(tmp_path, (3, 32, 32), mean=(0.5,), std=(0.5,))
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 1, 1] and len(ds) == 3
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0
    # 28 -> 32 pads with black (0 -> -1 after (x - 0.5) / 0.5); the centre is white (+1).
    assert x[:, 0, 0].tolist() == [-1.0, -1.0, -1.0] and x[:, 16, 16].tolist() == [1.0, 1.0, 1.0]
    x1, _ = ds[1]
    assert x1.shape == (3, 32, 32) and x1.max().item() == -1.0  # black image resized


def test_grey_model_and_default_stats(tmp_path):
    make_folder(tmp_path)
    ds = ImageFolder(tmp_path, (1, 20, 20))
    x, y = ds[2]
    assert x.shape == (1, 20, 20) and y == 1
    assert x.mean().item() == pytest.approx((128 / 255 - 0.449) / 0.226, abs=1e-4)


def test_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(tmp_path / "missing", (3, 32, 32))
    with pytest.raises(UserError, match="no class sub-folders"):
        ImageFolder(tmp_path, (3, 32, 32))
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageFolder(tmp_path, (3, 32, 32))
    make_folder(tmp_path / "ok")
    with pytest.raises(UserError, match="mean"):
        ImageFolder(tmp_path / "ok", (3, 32, 32), mean=(0.1, 0.2), std=(0.5,))
    (tmp_path / "ok" / "cat" / "bad.png").write_bytes(b"garbage")
    ds = ImageFolder(tmp_path / "ok", (3, 32, 32))
    with pytest.raises(UserError, match="bad.png"):
        ds[1]


def test_image_folder_splits_single_folder_and_train_test(tmp_path):
    from edgecompress.data.image_folder import image_folder_splits

    one = tmp_path / "one"
    for cls in ("a", "b"):
        (one / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(one / cls / f"{i}.png")
    s = image_folder_splits(one, (1, 16, 16), val_size=2, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 2)
    assert not set(s.train.indices) & set(s.val.indices) and not set(s.val.indices) & set(s.test.indices)
    assert image_folder_splits(one, (1, 16, 16), val_size=2, seed=3).val.indices == s.val.indices
    assert s.train[0][0].shape == (1, 16, 16)
    with pytest.raises(UserError, match="val_size 5"):
        image_folder_splits(one, (1, 16, 16), val_size=5)

    two = tmp_path / "two"
    make_folder(two / "train")
    make_folder(two / "test")
    s = image_folder_splits(two, (3, 32, 32), val_size=1)
    assert (len(s.train), len(s.val), len(s.test)) == (2, 1, 3)
