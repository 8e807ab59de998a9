from __future__ import annotations

import torch

from edgecompress.data.transforms import fit_to_shape, match_channels, normalise, random_crop_flip


def test_fit_pads_small_difference_and_resizes_large():
    x = torch.ones(1, 1, 28, 28)
    padded = fit_to_shape(x, 32, 32)
    assert padded.shape == (1, 1, 32, 32) and padded.sum().item() == 28 * 28
    assert padded[0, 0, 2:30, 2:30].min().item() == 1 and padded[0, 0, :2].abs().sum().item() == 0
    resized = fit_to_shape(x, 56, 56)
    assert resized.shape == (1, 1, 56, 56) and torch.allclose(resized, torch.ones_like(resized))
    assert fit_to_shape(x, 14, 20).shape == (1, 1, 14, 20)


def test_match_channels_and_normalise():
    x = torch.rand(2, 1, 4, 4)
    x3 = match_channels(x, 3)
    assert x3.shape == (2, 3, 4, 4) and torch.equal(x3[:, 2], x[:, 0])
    assert torch.allclose(match_channels(x3, 1), x)
    n = normalise(torch.full((1, 3, 1, 1), 0.5), (0.5, 0.25, 0.0), (0.5, 0.25, 0.5))
    assert n.flatten().tolist() == [0.0, 1.0, 1.0]


def test_random_crop_flip_matches_reference_loop():
    x = torch.rand(16, 2, 6, 5)
    g = torch.Generator().manual_seed(3)
    out = random_crop_flip(x, padding=2, generator=g)
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 5, (16,), generator=g)
    ox = torch.randint(0, 5, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, oy[i] : oy[i] + 6, ox[i] : ox[i] + 5]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
