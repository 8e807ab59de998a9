"""A user's own images laid out as root/<class name>/<image>.png|jpg.

Same contract as the Fashion-MNIST dataset: items are (float tensor (C, H, W)
normalised with `mean`/`std`, int label), fitted to the model's input shape by
zero padding (up to 4 px per side) or bilinear resize. Images are read with Pillow
(installed with torchvision), imported only when an image is opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgecompress.data.transforms import fit_to_shape, normalise
from edgecompress.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# ImageNet statistics: the usual defaults for RGB models; grey uses their average.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (0.449,)
GREY_STD = (0.226,)


class ImageFolder(Dataset):
    """Images under root/<class>/ with classes sorted by name (label i = i-th class folder).

    `input_shape` is the model's (C, H, W); C=1 reads images as grey ('L'), C=3 as RGB.
    `mean`/`std` (one value or one per channel) default to ImageNet's statistics.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        input_shape: Sequence[int],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
            raise UserError(f"input shape {list(input_shape)} must be (C, H, W) with C 1 or 3 and H, W >= 1")
        self.input_shape = shape
        c = shape[0]
        self.mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if c == 3 else GREY_MEAN)
        self.std = tuple(std) if std is not None else (IMAGENET_STD if c == 3 else GREY_STD)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, c):
                raise UserError(f"{name} {list(values)} must have 1 or {c} values for a {c}-channel model")
        if any(s <= 0 for s in self.std):
            raise UserError(f"std {list(self.std)} must be > 0")
        self.root = Path(root)
        self.samples, self.classes = _scan(self.root, tuple(e.lower() for e in extensions))
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> torch.Tensor:
        """One image file as float (C, h, w) in [0, 1] at its own size."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L" if self.input_shape[0] == 1 else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image {path}: {e}; remove or replace the file") from e
        x = torch.from_numpy(arr.copy()).float().div_(255.0)
        return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        _, h, w = self.input_shape
        x = fit_to_shape(self.load(path).unsqueeze(0), h, w)
        return normalise(x, self.mean, self.std)[0], label


def _scan(root: Path, extensions: tuple[str, ...]) -> tuple[list[tuple[Path, int]], list[str]]:
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a directory; pass a folder laid out as root/<class>/<image>.png")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders; lay images out as {root}/<class>/<image>.png")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
        )
        samples.extend((p, label) for p in files)
    if not samples:
        raise UserError(
            f"image folder {root} has class folders ({', '.join(classes[:5])}) but no images "
            f"with extension {', '.join(extensions)}"
        )
    return samples, classes


def image_folder_splits(root: str | os.PathLike, input_shape: Sequence[int], *, val_size: int = 0, seed: int = 0):
    """(train, val, test) from an image folder, for `compress` recipes with `dataset: image-folder`.

    `root/train/<class>/…` and `root/test/<class>/…` (or `root/val/`) when present: test is
    that folder and val holds `val_size` images carved from train by a permutation seeded
    with `seed`. A plain `root/<class>/…` is carved the same way into val and test
    (`val_size` images each); train is the rest.
    """
    from torch.utils.data import Subset

    from edgecompress.data.fashion_mnist import Splits

    root = Path(root)
    held_out = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        train_all, test = ImageFolder(root / "train", input_shape), ImageFolder(held_out, input_shape)
        carve = 1
    else:
        train_all = test = ImageFolder(root, input_shape)
        carve = 2
    n = len(train_all)
    if val_size < 0 or carve * val_size >= n:
        raise UserError(f"val_size {val_size} leaves no training images in {str(root)!r} ({n} images); use a smaller data.val_size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val = Subset(train_all, sorted(perm[:val_size]))
    if carve == 2:
        test = Subset(train_all, sorted(perm[val_size:2 * val_size]))
    train = Subset(train_all, sorted(perm[carve * val_size:]))
    return Splits(train=train, val=val, test=test)
