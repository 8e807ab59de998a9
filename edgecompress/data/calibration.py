"""Calibration subsets (for int8 quantization, importance scores) and seeded loaders."""

from __future__ import annotations

import random
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from edgecompress.errors import UserError


def dataset_targets(dataset: Dataset) -> np.ndarray | None:
    """The labels of every item as an int array, without loading images, or None if unknown.

    Reads a `targets` attribute (tensor, array or list), looking through `Subset`s.
    """
    if isinstance(dataset, Subset):
        inner = dataset_targets(dataset.dataset)
        return None if inner is None else inner[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    if isinstance(targets, torch.Tensor):
        targets = targets.cpu().numpy()
    arr = np.asarray(targets)
    if arr.ndim != 1 or len(arr) != len(dataset) or not np.issubdtype(arr.dtype, np.integer):  # type: ignore[arg-type]
        return None
    return arr.astype(np.int64)


def calibration_subset(dataset: Dataset, n: int, seed: int = 0) -> Subset:
    """`n` items of `dataset`, the same ones for the same seed.

    Stratified when the labels are readable (see `dataset_targets`): each class gets
    n * its share of the dataset, rounded by largest remainder so the counts add up
    to `n`. Otherwise a uniform random sample. Indices are returned sorted.
    """
    total = len(dataset)  # type: ignore[arg-type]
    if not 1 <= n <= total:
        raise UserError(f"calibration size {n} must be between 1 and the dataset size {total}; pass a smaller --calib-size")
    rng = np.random.default_rng(seed)
    labels = dataset_targets(dataset)
    if labels is None:
        return Subset(dataset, sorted(rng.choice(total, size=n, replace=False).tolist()))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / total
    take = np.floor(quota).astype(np.int64)
    # Largest remainder; ties broken by class order so the result depends only on the seed.
    short = n - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:short]] += 1
    chosen: list[int] = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        chosen.extend(rng.choice(members, size=int(k), replace=False).tolist())
    return Subset(dataset, sorted(chosen))


def _seed_worker(worker_id: int) -> None:
    # Each worker's torch seed is derived from the loader's generator; give numpy and
    # random the same so augmentation written with either is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    *,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeds) come from a generator seeded with `seed`."""
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be >= 1")
    if num_workers < 0:
        raise UserError(f"num_workers {num_workers} must be >= 0")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )

