from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from edgecompress.data.calibration import calibration_subset, dataset_targets, make_loader
from edgecompress.errors import UserError


class Labelled(Dataset):
    def __init__(self, targets):
        self.targets = torch.tensor(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), int(self.targets[i])


def test_stratified_counts():
    # 600 of class 0, 300 of class 1, 100 of class 2.
    ds = Labelled([0] * 600 + [1] * 300 + [2] * 100)
    sub = calibration_subset(ds, 100, seed=0)
    assert len(sub) == 100 and len(set(sub.indices)) == 100
    assert torch.bincount(ds.targets[sub.indices]).tolist() == [60, 30, 10]
    # Remainders: 7 * (0.6, 0.3, 0.1) = 4.2, 2.1, 0.7 -> floors 4, 2, 0; the largest remainder (class 2) gets the last one.
    assert torch.bincount(ds.targets[calibration_subset(ds, 7).indices], minlength=3).tolist() == [4, 2, 1]


def test_same_seed_same_subset_and_subset_of_subset():
    ds = Labelled([i % 4 for i in range(400)])
    assert calibration_subset(ds, 40, seed=1).indices == calibration_subset(ds, 40, seed=1).indices
    assert calibration_subset(ds, 40, seed=1).indices != calibration_subset(ds, 40, seed=2).indices
    inner = Subset(ds, list(range(0, 400, 2)))  # classes 0 and 2 only
    assert dataset_targets(inner).tolist() == [0, 2] * 100
    sub = calibration_subset(inner, 10)
    assert sorted(dataset_targets(sub).tolist()) == [0] * 5 + [2] * 5


def test_unlabelled_falls_back_to_random_and_bounds():
    ds = TensorDataset(torch.arange(50.0))
    assert dataset_targets(ds) is None
    sub = calibration_subset(ds, 20, seed=0)
    assert len(set(sub.indices)) == 20 and all(0 <= i < 50 for i in sub.indices)
    with pytest.raises(UserError, match="51"):
        calibration_subset(ds, 51)
    with pytest.raises(UserError):
        calibration_subset(ds, 0)


def test_make_loader_seeded_order():
    ds = TensorDataset(torch.arange(32))
    order = lambda seed: torch.cat([b[0] for b in make_loader(ds, 8, shuffle=True, seed=seed)]).tolist()  # noqa: E731
    assert order(3) == order(3) and order(3) != order(4) and sorted(order(3)) == list(range(32))
    assert torch.cat([b[0] for b in make_loader(ds, 8, shuffle=False)]).tolist() == list(range(32))
