"""Datasets (Fashion-MNIST from the Debian package, image folders) and calibration subsets."""

from __future__ import annotations

from edgecompress.data.calibration import calibration_subset, dataset_targets, make_loader
from edgecompress.data.fashion_mnist import (
    CLASS_NAMES,
    FashionMNIST,
    Splits,
    fashion_mnist_splits,
    load_split,
    read_idx,
    resolve_data_dir,
)
from edgecompress.data.image_folder import ImageFolder

__all__ = [
    "CLASS_NAMES",
    "FashionMNIST",
    "ImageFolder",
    "Splits",
    "calibration_subset",
    "dataset_targets",
    "fashion_mnist_splits",
    "load_split",
    "make_loader",
    "read_idx",
    "resolve_data_dir",
]
