"""Batched image transforms shared by the datasets: fit to the model's input, normalise, augment.

All functions take float tensors shaped (N, C, H, W) with pixel values in [0, 1]
(before normalisation), so padding with 0 is padding with the image background
(black), whatever the mean/std used afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Up to this many pixels per side, a smaller image is centred on a zero border instead of
# being resized: 28 -> 32 is the classic LeNet/CIFAR-style input and keeps strokes sharp.
MAX_PAD_PER_SIDE = 4


def fit_to_shape(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bring a batch (N, C, h, w) to (N, C, height, width).

    If the target is larger by at most `MAX_PAD_PER_SIDE` px per side in both dims
    (e.g. 28 -> 32), the image is centred on a zero border; otherwise it is resized
    bilinearly (antialiased when shrinking).
    """
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    dh, dw = height - h, width - w
    if 0 <= dh <= 2 * MAX_PAD_PER_SIDE and 0 <= dw <= 2 * MAX_PAD_PER_SIDE:
        top, left = dh // 2, dw // 2
        return F.pad(x, (left, dw - left, top, dh - top), value=0.0)
    shrinking = height < h or width < w
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a grey channel to `channels`, or average RGB to grey when `channels` is 1."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot map {c} image channels to {channels} model input channels")


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel; `mean`/`std` have one value or one per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    return (x - m) / s


def random_crop_flip(x: torch.Tensor, padding: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding by `padding` px, plus a random horizontal flip.

    Draws from `generator` (or torch's global RNG), so a seeded run is reproducible.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), value=0.0)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    pw = w + 2 * padding
    rows = oy[:, None] + torch.arange(h)  # (N, H)
    cols = ox[:, None] + torch.arange(w)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # One gather over the flattened padded images: out[n, c, i, j] = padded[n, c, rows[n, i], cols[n, j]].
    flat_idx = (rows[:, :, None] * pw + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = padded.reshape(n, c, -1).gather(2, flat_idx)
    return out.reshape(n, c, h, w)
