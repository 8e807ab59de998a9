from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.errors import UserError
from edgecompress.train.evaluate import evaluate


class Lookup(nn.Module):
    """Returns a fixed row of logits for each integer input: outputs known in advance."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, x):
        return self.table[x.long()]


# 6 classes; logits ranked descending 0..5 unless stated.
TABLE = [
    [6.0, 5, 4, 3, 2, 1],  # label 0: top-1 hit
    [6.0, 5, 4, 3, 2, 1],  # label 4: top-5 hit only (rank 5)
    [6.0, 5, 4, 3, 2, 1],  # label 5: miss (rank 6)
    [1.0, 9, 0, 0, 0, 0],  # label 1: top-1 hit
]
LABELS = [0, 4, 5, 1]


def expected_loss():
    total = 0.0
    for row, y in zip(TABLE, LABELS):
        lse = math.log(sum(math.exp(v) for v in row))
        total += lse - row[y]
    return total / len(LABELS)


def loader(batch_size=3):
    return DataLoader(TensorDataset(torch.arange(4), torch.tensor(LABELS)), batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_top1_top5_loss_exact(batch_size):
    r = evaluate(Lookup(TABLE), loader(batch_size), progress=False)
    assert r.n == 4 and r.top1 == 0.5 and r.top5 == 0.75
    assert r.loss == pytest.approx(expected_loss(), rel=1e-6)


def test_max_batches_and_mode_restored():
    model = Lookup(TABLE)
    model.train()
    r = evaluate(model, loader(1), progress=False, max_batches=2)
    assert (r.n, r.top1, r.top5) == (2, 0.5, 1.0)
    assert model.training


def test_few_classes_top5_equals_top1():
    table = [[2.0, 1, 0], [2.0, 1, 0], [0.0, 0, 3]]
    dl = DataLoader(TensorDataset(torch.arange(3), torch.tensor([0, 1, 1])), batch_size=2)
    r = evaluate(Lookup(table), dl, progress=False)
    assert r.top1 == pytest.approx(1 / 3) and r.top5 == r.top1


def test_forced_progress_gives_same_numbers(capsys):
    r = evaluate(Lookup(TABLE), loader(), progress="always")
    assert (r.top1, r.top5) == (0.5, 0.75)
    assert "evaluate" in capsys.readouterr().err


def test_empty_and_bad_outputs():
    empty = DataLoader(TensorDataset(torch.zeros(0), torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(UserError, match="empty"):
        evaluate(Lookup(TABLE), empty, progress=False)

    class Flat(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2, 2)

    with pytest.raises(UserError, match="logits"):
        evaluate(Flat(), loader(), progress=False)
