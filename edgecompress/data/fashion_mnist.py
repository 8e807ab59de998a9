"""Fashion-MNIST from the IDX files of the Debian package `dataset-fashion-mnist`.

Nothing is downloaded: the files are looked up in (first match wins) the `data_dir`
argument, the `EDGECOMPRESS_DATA` environment variable, or
`/usr/share/datasets/fashion-mnist`. A split is held in memory as one uint8 tensor
(60000 x 28 x 28 = 47 MB for train) and transformed a whole batch at a time.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgecompress.data.transforms import fit_to_shape, match_channels, normalise, random_crop_flip
from edgecompress.errors import UserError

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "EDGECOMPRESS_DATA"
# Statistics of the 60000 training images, pixel values scaled to [0, 1].
MEAN = 0.2860
STD = 0.3530
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}

# IDX type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/ format).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the four Fashion-MNIST IDX files; UserError if absent.

    Order: `data_dir` argument, then `$EDGECOMPRESS_DATA`, then the Debian package's path.
    """
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir)
    elif os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
    else:
        path = DEFAULT_DATA_DIR
    for images, labels in FILES.values():
        for name in (images, labels):
            if not (path / name).is_file():
                raise UserError(
                    f"Fashion-MNIST not found in {path} (looked for {name}); install it with "
                    f"`apt-get install dataset-fashion-mnist` or pass --data-dir / set {ENV_VAR}"
                )
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped if its name ends in .gz) into an array of its dims and type.

    Raises UserError naming the file when the magic number, dims or length are wrong.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; reinstall it (apt-get install --reinstall dataset-fashion-mnist)") from e
    bad = f"corrupt IDX file {path}"
    fix = "reinstall it (apt-get install --reinstall dataset-fashion-mnist) or point --data-dir at good files"
    if len(raw) < 4:
        raise UserError(f"{bad}: {len(raw)} bytes, too short for a header; {fix}")
    zero0, zero1, code, ndim = struct.unpack(">BBBB", raw[:4])
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise UserError(f"{bad}: bad magic number 0x{raw[:4].hex()}; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{bad}: header truncated ({len(raw)} bytes); {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(f"{bad}: {len(raw)} bytes but dims {list(dims)} need {expected}; {fix}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_cache_lock = threading.Lock()


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the 'train' or 'test' split.

    Cached per process (keyed by path and file mtimes): treat the tensors as read-only.
    """
    if split not in FILES:
        raise UserError(f"unknown Fashion-MNIST split {split!r}; use one of {sorted(FILES)}")
    root = resolve_data_dir(data_dir)
    files = [root / name for name in FILES[split]]
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    images, labels = (read_idx(p) for p in files)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"corrupt IDX file {files[0]}: expected uint8 images (N, H, W), got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"corrupt IDX file {files[1]}: {list(labels.shape)} labels for {len(images)} images")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise UserError(f"corrupt IDX file {files[1]}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    out = torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
    with _cache_lock:
        _cache[key] = out
    return out


class FashionMNIST(Dataset):
    """In-memory Fashion-MNIST images fitted to a model input shape (C, H, W).

    Items are (float tensor (C, H, W) normalised with mean 0.2860 / std 0.3530, int label).
    28 -> 32 is done by zero padding (the border gets the normalised background value),
    other sizes by bilinear resize; C=3 repeats the grey channel. `augment=True` adds a
    random crop (zero padding 2) and horizontal flip drawn from torch's global RNG.
    The DataLoader fetches whole batches through `__getitems__`, so a batch is one
    vectorised transform rather than N small ones.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        input_shape: Sequence[int] = (1, 28, 28),
        *,
        augment: bool = False,
        indices: torch.Tensor | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {list(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.input_shape = _check_input_shape(input_shape)
        self.images = images
        self.targets = labels
        self.augment = augment
        # Positions of these images in their IDX file (provenance of carved splits).
        self.indices = indices if indices is not None else torch.arange(len(images))
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.images)

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, h, w) -> normalised float (N, C, H, W)."""
        c, h, w = self.input_shape
        x = batch.unsqueeze(1).float().div_(255.0)
        if self.augment:
            x = random_crop_flip(x, padding=2)
        x = fit_to_shape(x, h, w)
        x = normalise(x, (MEAN,), (STD,))
        return match_channels(x, c)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index].unsqueeze(0))[0], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.transform(self.images[idx])
        return list(zip(x.unbind(0), self.targets[idx].tolist()))


@dataclass(frozen=True)
class Splits:
    """Train / validation / test datasets; val is carved out of the official train split."""

    train: FashionMNIST
    val: FashionMNIST
    test: FashionMNIST


def fashion_mnist_splits(
    input_shape: Sequence[int] = (1, 28, 28),
    data_dir: str | os.PathLike | None = None,
    val_size: int = 5000,
    seed: int = 0,
    *,
    augment: bool = False,
) -> Splits:
    """Fashion-MNIST as (train, val, test) for a model taking `input_shape` (C, H, W).

    val: `val_size` images of the official 60000-image train split chosen by a
    permutation seeded with `seed` (the same for every run with that seed); train:
    the rest; test: the official 10000-image t10k split. `augment` applies to train only.
    """
    images, labels = load_split("train", data_dir)
    if not 0 <= val_size < len(images):
        raise UserError(f"val_size {val_size} must be in [0, {len(images) - 1}]")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    # Sorted indices keep the carved splits in file order, so they do not depend on
    # anything but the set chosen by the seed.
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:].sort().values
    test_images, test_labels = load_split("test", data_dir)
    return Splits(
        train=FashionMNIST(images[train_idx], labels[train_idx], input_shape, augment=augment, indices=train_idx),
        val=FashionMNIST(images[val_idx], labels[val_idx], input_shape, indices=val_idx),
        test=FashionMNIST(test_images, test_labels, input_shape),
    )


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
        raise UserError(f"input shape {list(input_shape)} must be (C, H, W) with C 1 or 3 and H, W >= 1")
    return shape  # type: ignore[return-value]
