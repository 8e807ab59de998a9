"""Low-rank decomposition of one layer into a drop-in chain of plain Conv2d/Linear layers.

Methods (W is the weight: [out, in] for Linear, [co, ci, kh, kw] for Conv2d):

- "svd": Linear or 1x1 conv. W ≈ (U√S)(√S Vᵀ) truncated to rank r: in→r, then r→out.
- "spatial-svd" (Jaderberg et al. 2014): M[(ci,kh),(co,kw)] = W regrouped, truncated SVD:
  a (kh,1) conv ci→r, then a (1,kw) conv r→co.
- "tucker2" (Kim et al. 2016): W ≈ G ×₀ U_out ×₁ U_in by HOSVD + HOOI: 1x1 ci→r_in,
  core kh×kw r_in→r_out, 1x1 r_out→co. Rank is the pair (rank_in, rank_out).
- "cp" (Lebedev et al. 2015): W ≈ Σ_r A[co,r] B[ci,r] C[kh,r] D[kw,r] by CP-ALS: 1x1 ci→R,
  depthwise (kh,1), depthwise (1,kw), 1x1 R→co.

Every chain computes exactly the original conv (same stride/padding/dilation, zero padding)
when the factors reproduce W: the bias sits on the last layer and the layers before it are
bias-free, so zero padding of an intermediate equals the intermediate of zero padding.
All maths runs in float64 on the CPU; the replacement gets the layer's dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from torch import nn
from torch.nn.utils import skip_init

from edgecompress.errors import suggest

METHODS = ("svd", "spatial-svd", "tucker2", "cp")
Rank = int | tuple[int, int]  # tuple only for tucker2: (rank_in, rank_out)
Tensor = torch.Tensor


# ---------------------------------------------------------------- checks


def _method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown low-rank method {method!r}{suggest(str(method), METHODS)}; "
                         f"valid: {', '.join(METHODS)}")
    return method


def unsupported(layer: nn.Module, method: str) -> str | None:
    """None if `method` can factorize `layer`, else a short human reason."""
    _method(method)
    # Exact types: a subclass (QAT, fused, custom) may change forward in ways a chain drops.
    if type(layer) not in (nn.Conv2d, nn.Linear):
        return f"not a Conv2d or Linear ({type(layer).__name__})"
    if isinstance(layer, nn.Linear):
        return None if method == "svd" else "Linear layer: use svd"
    if layer.groups != 1:
        return f"grouped conv (groups={layer.groups})"
    if layer.padding_mode != "zeros":
        return f"padding_mode {layer.padding_mode!r}"
    one_by_one = tuple(layer.kernel_size) == (1, 1)
    if method == "svd" and not one_by_one:
        kh, kw = layer.kernel_size
        return f"{kh}x{kw} kernel: svd needs 1x1 (use spatial-svd, tucker2 or cp)"
    if method in ("spatial-svd", "cp") and one_by_one:
        return "1x1 kernel: use svd"
    return None


def _supported(layer: nn.Module, method: str) -> None:
    reason = unsupported(layer, method)
    if reason is not None:
        raise ValueError(f"cannot factorize {type(layer).__name__} with {method!r}: {reason}")


def _weight(layer: nn.Module) -> Tensor:
    return layer.weight.detach().to(device="cpu", dtype=torch.float64)


def _unfold(w: Tensor, mode: int) -> Tensor:
    """Mode-`mode` unfolding: [w.shape[mode], product of the other dims] (C order)."""
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def full_rank(layer: nn.Module, method: str) -> Rank:
    """The smallest rank at which `decompose` is exact (and the largest it accepts)."""
    _supported(layer, method)
    if method == "svd":
        return min(layer.weight.shape[:2])
    co, ci, kh, kw = layer.weight.shape
    if method == "spatial-svd":
        return min(ci * kh, co * kw)
    if method == "tucker2":
        return (ci, co)
    # CP: one mode carries the slices of W, the others indicator vectors (see _cp_exact).
    return min(ci * kh * kw, co * kh * kw, co * ci * kw, co * ci * kh)


def _check_rank(layer: nn.Module, method: str, rank: Any) -> Rank:
    full = full_rank(layer, method)
    if method == "tucker2":
        if not (isinstance(rank, (tuple, list)) and len(rank) == 2):
            raise ValueError(f"tucker2 rank must be a pair (rank_in, rank_out), got {rank!r}")
        for name, r, top in zip(("rank_in", "rank_out"), rank, full):
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= top:
                raise ValueError(f"tucker2 {name} {r!r} must be an int in [1, {top}]")
        return (int(rank[0]), int(rank[1]))
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"{method} rank {rank!r} must be an int in [1, {full}] for this layer")
    return int(rank)


# ---------------------------------------------------------------- spectra and rank choice


def spectrum(layer: nn.Module, method: str) -> Tensor | tuple[Tensor, Tensor]:
    """Singular values that govern truncation, float64, descending.

    svd: of W [out, in]; spatial-svd: of M [(ci,kh), (co,kw)]; tucker2: (of the mode-1
    unfolding [ci, co·kh·kw], of the mode-0 unfolding [co, ci·kh·kw]); cp: of the mode-0
    unfolding, as a proxy (CP has no singular values).
    """
    _supported(layer, method)
    w = _weight(layer)
    if method == "svd":
        return torch.linalg.svdvals(w.reshape(w.shape[0], w.shape[1]))
    if method == "spatial-svd":
        return torch.linalg.svdvals(_spatial_matrix(w))
    if method == "tucker2":
        return torch.linalg.svdvals(_unfold(w, 1)), torch.linalg.svdvals(_unfold(w, 0))
    return torch.linalg.svdvals(_unfold(w, 0))


def rank_for_ratio(layer: nn.Module, method: str, ratio: float, multiple: int = 1) -> Rank:
    """`ratio` in (0, 1] of the full rank (tucker2: of ci and co separately), rounded up to a
    multiple of `multiple`, at least `multiple` and at most the full rank."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"rank ratio {ratio!r} must be a number in (0, 1]")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"rank multiple {multiple!r} must be an int >= 1")

    def one(full: int) -> int:
        # round() first: 0.1 * 30 is 3.0000000000000004, which must not round up to 4.
        r = math.ceil(round(ratio * full, 9))
        return min(full, max(multiple, math.ceil(r / multiple) * multiple))

    full = full_rank(layer, method)
    return (one(full[0]), one(full[1])) if isinstance(full, tuple) else one(full)


def energy_rank(singular_values: Sequence[float] | Tensor, keep: float) -> int:
    """Smallest r with Σ_{i≤r} s_i² ≥ keep·Σ s_i² (keep in (0, 1]); at least 1."""
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 < keep <= 1.0:
        raise ValueError(f"energy keep {keep!r} must be a number in (0, 1]")
    s = torch.as_tensor(singular_values, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError("energy_rank needs at least one singular value")
    energy = torch.cumsum(s.abs().sort(descending=True).values ** 2, 0)
    # The total is the last cumsum entry, so keep=1 is reached exactly, not missed by rounding.
    r = int(torch.searchsorted(energy, keep * energy[-1])) + 1
    return min(r, s.numel())


def _vb_psi(tau: np.ndarray, alpha: float) -> np.ndarray:
    # Free-energy change (÷M) of keeping one component at τ: negative means "keep it".
    return np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau


def evbmf_rank(matrix: Tensor) -> int:
    """Rank estimate by empirical variational Bayesian matrix factorisation (≥ 1).

    Global analytic EVB solution of Nakajima, Sugiyama, Babacan & Tomioka (JMLR 2013) for an
    L×M matrix (L ≤ M, α = L/M) with singular values γ_h: with x_h = γ_h²/(Mσ²), component h
    is kept iff x_h > x̲ = (1+τ̲)(1+α/τ̲), τ̲ the positive zero of ψ(τ) = log(1+τ) +
    α·log(1+τ/α) − τ. The noise variance σ² minimises the free energy
        F(σ²)/M = L·log σ² + Σ_h γ_h²/(Mσ²) + Σ_{kept} ψ(τ(x_h)),
        τ(x) = ½(x − 1 − α + √((x − 1 − α)² − 4α)),
    over the paper's bounds [σ̲², σ̄²].
    """
    v = torch.as_tensor(matrix).detach().to(device="cpu", dtype=torch.float64)
    if v.ndim != 2:
        raise ValueError(f"evbmf_rank needs a 2-D matrix, got shape {tuple(v.shape)}")
    big_l, big_m = sorted(v.shape)
    s2 = torch.linalg.svdvals(v).numpy() ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1
    alpha = big_l / big_m
    tau_lo = brentq(lambda t: _vb_psi(np.array(t), alpha), 0.1 * math.sqrt(alpha), 10.0)
    x_lo = (1 + tau_lo) * (1 + alpha / tau_lo)

    def free_energy(sigma2: float) -> float:
        x = s2 / (big_m * sigma2)
        z = x[x > x_lo] - 1 - alpha
        tau = 0.5 * (z + np.sqrt(np.maximum(z * z - 4 * alpha, 0.0)))
        return big_l * math.log(sigma2) + float(x.sum()) + float(_vb_psi(tau, alpha).sum())

    # At most h_max components can be kept, which bounds σ² from below (the paper's Thm).
    h_max = min(math.ceil(big_l / (1 + alpha)) - 1, big_l)
    upper = total / (big_l * big_m)
    lower = max(s2[h_max] / (big_m * x_lo), float(s2[h_max:].sum()) / (big_m * (big_l - h_max)))
    if lower < upper:
        # F is not unimodal in σ²: a log grid finds the basin, Brent refines inside it.
        grid = np.geomspace(lower, upper, 64)
        best = int(np.argmin([free_energy(g) for g in grid]))
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        sigma2 = minimize_scalar(free_energy, bounds=(lo, hi), method="bounded").x
    else:
        sigma2 = upper
    return max(1, int((s2 / (big_m * sigma2) > x_lo).sum()))


def vbmf_ranks(layer: nn.Module) -> tuple[int, int]:
    """Tucker-2 (rank_in, rank_out) from `evbmf_rank` of the mode-1 and mode-0 unfoldings."""
    _supported(layer, "tucker2")
    w = _weight(layer)
    return evbmf_rank(_unfold(w, 1)), evbmf_rank(_unfold(w, 0))


# ---------------------------------------------------------------- child layer plans


def _conv(cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1, 1),
          padding: Sequence[int] | str = (0, 0), dilation: Sequence[int] = (1, 1),
          groups: int = 1, bias: bool = False) -> dict[str, Any]:
    return {"type": "Conv2d", "in_channels": cin, "out_channels": cout, "kernel_size": list(kernel),
            "stride": list(stride), "padding": padding if isinstance(padding, str) else list(padding),
            "dilation": list(dilation), "groups": groups, "bias": bias}


def _split(layer: nn.Conv2d) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stride/padding/dilation of the vertical (kh,1) and horizontal (1,kw) halves."""
    (sh, sw), (dh, dw), pad = layer.stride, layer.dilation, layer.padding
    # 'same'/'valid' split exactly: each half pads only along its own kernel axis.
    vpad, hpad = (pad, pad) if isinstance(pad, str) else ((pad[0], 0), (0, pad[1]))
    return (dict(stride=(sh, 1), padding=vpad, dilation=(dh, 1)),
            dict(stride=(1, sw), padding=hpad, dilation=(1, dw)))


def _plan(layer: nn.Module, method: str, rank: Rank) -> list[dict[str, Any]]:
    """Constructor arguments of the replacement's children, in order."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return [{"type": "Linear", "in_features": layer.in_features, "out_features": rank, "bias": False},
                {"type": "Linear", "in_features": rank, "out_features": layer.out_features, "bias": bias}]
    ci, co, (kh, kw) = layer.in_channels, layer.out_channels, layer.kernel_size
    if method == "svd":  # 1x1: the first conv takes the stride (cheaper) and the padding
        return [_conv(ci, rank, (1, 1), layer.stride, layer.padding),
                _conv(rank, co, (1, 1), bias=bias)]
    if method == "spatial-svd":
        vert, horiz = _split(layer)
        return [_conv(ci, rank, (kh, 1), **vert), _conv(rank, co, (1, kw), **horiz, bias=bias)]
    if method == "tucker2":
        r_in, r_out = rank
        return [_conv(ci, r_in, (1, 1)),
                _conv(r_in, r_out, (kh, kw), layer.stride, layer.padding, layer.dilation),
                _conv(r_out, co, (1, 1), bias=bias)]
    vert, horiz = _split(layer)
    return [_conv(ci, rank, (1, 1)), _conv(rank, rank, (kh, 1), **vert, groups=rank),
            _conv(rank, rank, (1, kw), **horiz, groups=rank), _conv(rank, co, (1, 1), bias=bias)]


def _entry_weight_numel(e: dict[str, Any]) -> int:
    if e["type"] == "Linear":
        return e["in_features"] * e["out_features"]
    return e["out_channels"] * e["in_channels"] // e["groups"] * math.prod(e["kernel_size"])


def _bias_numel(e: dict[str, Any]) -> int:
    return e["out_features"] if e["type"] == "Linear" else e["out_channels"]


def _out_size(size: int, k: int, s: int, p: int | str, d: int) -> int:
    if p == "same":
        return size
    p = 0 if p == "valid" else p
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def factorized_params(layer: nn.Module, method: str, rank: Rank) -> int:
    """Parameter count (elements, biases included) of the replacement, without building it."""
    rank = _check_rank(layer, method, rank)
    return sum(_entry_weight_numel(e) + (_bias_numel(e) if e["bias"] else 0)
               for e in _plan(layer, method, rank))


def factorized_macs(layer: nn.Module, method: str, rank: Rank,
                    in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """MACs (one per weight element per output pixel, biases free) of the replacement.

    `in_hw`/`out_hw` are the input/output spatial sizes of the ORIGINAL layer (Linear: (1, 1)
    for one row). Each child is counted at its own output size, e.g. the vertical conv of
    spatial-svd at (h_out, w_in). ValueError if `out_hw` does not follow from `in_hw`.
    """
    rank = _check_rank(layer, method, rank)
    h, w = in_hw
    macs = 0
    for e in _plan(layer, method, rank):
        if e["type"] == "Conv2d":
            (kh, kw), (sh, sw), (dh, dw) = e["kernel_size"], e["stride"], e["dilation"]
            ph, pw = (e["padding"],) * 2 if isinstance(e["padding"], str) else e["padding"]
            h, w = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
        macs += _entry_weight_numel(e) * h * w
    if (h, w) != tuple(out_hw):
        raise ValueError(f"out_hw {tuple(out_hw)} does not match in_hw {tuple(in_hw)} for this "
                         f"layer (expected {(h, w)})")
    return macs


# ---------------------------------------------------------------- factors


def _spatial_matrix(w: Tensor) -> Tensor:
    co, ci, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(ci * kh, co * kw)


def _svd_factors(w: Tensor, rank: int) -> list[Tensor]:
    """[√S Vᵀ (r, in), U√S (out, r)] of the truncated SVD of a 2-D w."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    return [root[:, None] * vh[:rank], u[:, :rank] * root]


def _spatial_factors(w: Tensor, rank: int) -> list[Tensor]:
    co, ci, kh, kw = w.shape
    row, col = _svd_factors(_spatial_matrix(w), rank)  # √S Vᵀ (r, co·kw), U√S (ci·kh, r)
    # The (kh,1) conv wants [r, ci, kh, 1], the (1,kw) conv [co, r, 1, kw].
    return [col.T, row.reshape(rank, co, kw).permute(1, 0, 2)]


def _leading(mat: Tensor, r: int) -> Tensor:
    """r orthonormal columns spanning the leading left singular subspace of `mat` [n, m]."""
    u = torch.linalg.svd(mat, full_matrices=False)[0]
    if u.shape[1] >= r:
        return u[:, :r]
    # More columns than the matrix has singular vectors (r > m): complete the basis; the
    # extra directions carry nothing but keep the requested layer width.
    q = torch.linalg.qr(torch.cat([u, torch.eye(mat.shape[0], dtype=mat.dtype)], 1))[0]
    return q[:, :r]


def _tucker2_factors(w: Tensor, rank: tuple[int, int], iters: int = 3,
                     tol: float = 1e-10) -> list[Tensor]:
    """HOSVD start, then HOOI sweeps (each raises ‖G‖, i.e. lowers ‖W − Ŵ‖ = √(‖W‖² − ‖G‖²))."""
    r_in, r_out = rank
    u_out, u_in = _leading(_unfold(w, 0), r_out), _leading(_unfold(w, 1), r_in)
    core_norm = 0.0
    for _ in range(iters):
        u_out = _leading(_unfold(torch.einsum("oikl,ir->orkl", w, u_in), 0), r_out)
        z = torch.einsum("oikl,os->sikl", w, u_out)
        u_in = _leading(_unfold(z, 1), r_in)
        new = float(torch.einsum("sikl,ir->srkl", z, u_in).norm())
        if new - core_norm <= tol * new:
            break
        core_norm = new
    core = torch.einsum("oikl,os,ir->srkl", w, u_out, u_in)
    return [u_in.T, core, u_out]


def _cp_exact(w: Tensor) -> list[Tensor]:
    """Exact CP of rank = product of all dims but one: that mode's factor holds the slices of
    W, the other three are indicator vectors of every index combination."""
    dims = w.shape
    mode = min(range(4), key=lambda n: math.prod(dims) // dims[n])
    others = [n for n in range(4) if n != mode]
    idx = torch.cartesian_prod(*(torch.arange(dims[n]) for n in others))  # C order, as _unfold
    factors: list[Tensor] = [torch.empty(0)] * 4
    factors[mode] = _unfold(w, mode)
    for k, n in enumerate(others):
        factors[n] = torch.eye(dims[n], dtype=w.dtype)[:, idx[:, k]]
    return factors


def _cp_als(w: Tensor, rank: int, iters: int = 100, tol: float = 1e-8, ridge: float = 1e-10,
            seed: int = 0) -> list[Tensor]:
    """CP-ALS: each sweep solves the least-squares problem of one factor given the others."""
    letters = "oikl"
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for n in range(4):
        # Leading singular vectors where the mode has enough of them, seeded random for the rest.
        u = _leading(_unfold(w, n), min(rank, w.shape[n]))
        extra = torch.randn(w.shape[n], rank - u.shape[1], generator=gen, dtype=w.dtype)
        factors.append(torch.cat([u, extra / w.shape[n] ** 0.5], 1))
    norm2 = float((w * w).sum())
    prev = math.inf
    for _ in range(iters):
        for n in range(4):
            others = [m for m in range(4) if m != n]
            gram = math.prod(factors[m].T @ factors[m] for m in others)
            subs = f"{letters}," + ",".join(f"{letters[m]}r" for m in others) + f"->{letters[n]}r"
            mttkrp = torch.einsum(subs, w, *(factors[m] for m in others))
            # A small ridge keeps the solve defined when columns are (nearly) collinear.
            eye = torch.eye(rank, dtype=w.dtype) * (ridge * float(gram.diagonal().mean()) + 1e-300)
            f = torch.linalg.solve(gram + eye, mttkrp.T).T
            # Unit columns on all but the last-solved factor keep the scales from drifting apart.
            factors[n] = f / f.norm(dim=0).clamp_min(1e-300) if n < 3 else f
        # ‖W − Ŵ‖² = ‖W‖² − 2⟨W, Ŵ⟩ + ‖Ŵ‖², from quantities of the last solve (no rebuild).
        err2 = norm2 - 2 * float((mttkrp * f).sum()) + float((f.T @ f * gram).sum())
        rel = math.sqrt(max(err2, 0.0) / norm2) if norm2 > 0 else 0.0
        if abs(prev - rel) < tol:
            break
        prev = rel
    return factors


def _balance(factors: list[Tensor]) -> list[Tensor]:
    """Give each factor's column the same norm (the 4th root of the component's scale), so
    no layer of the chain has tiny weights and another huge ones (fp16/int8 friendly)."""
    norms = [f.norm(dim=0) for f in factors]
    scale = math.prod(norms) ** 0.25
    return [f / n.clamp_min(1e-300) * scale for f, n in zip(factors, norms)]


def _cp_factors(w: Tensor, rank: int) -> list[Tensor]:
    exact = rank == min(math.prod(w.shape) // d for d in w.shape)
    a, b, c, d = _balance(_cp_exact(w) if exact else _cp_als(w, rank))
    return [b.T, c.T, d.T, a]


def _factors(w: Tensor, method: str, rank: Rank) -> list[Tensor]:
    """Weights of the children in plan order (any shape with the child's element order)."""
    if method == "svd":
        return _svd_factors(w.reshape(w.shape[0], w.shape[1]), rank)
    if method == "spatial-svd":
        return _spatial_factors(w, rank)
    if method == "tucker2":
        return _tucker2_factors(w, rank)
    return _cp_factors(w, rank)


# ---------------------------------------------------------------- the replacement module


_TYPES: dict[str, Callable[..., nn.Module]] = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}


def _entry(child: nn.Module) -> dict[str, Any]:
    if type(child) is nn.Linear:
        return {"type": "Linear", "in_features": child.in_features,
                "out_features": child.out_features, "bias": child.bias is not None}
    if type(child) is nn.Conv2d:
        return _conv(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                     child.padding, child.dilation, child.groups, child.bias is not None)
    raise ValueError(f"LowRank child {type(child).__name__} is not a Conv2d or Linear")


def _build(entry: dict[str, Any], init: bool = True) -> nn.Module:
    args = {k: v for k, v in entry.items() if k != "type"}
    cls = _TYPES.get(entry.get("type"))
    if cls is None:
        raise ValueError(f"LowRank spec layer type {entry.get('type')!r} must be one of {sorted(_TYPES)}")
    # skip_init: the weights are overwritten at once, and default init would use the global RNG.
    return cls(**args) if init else skip_init(cls, **args, dtype=torch.float64)


class LowRank(nn.Sequential):
    """The factorized replacement of one layer: plain Conv2d/Linear children, so export,
    quantization, tracing and MAC counting see ordinary layers. Build with `decompose`."""

    def __init__(self, method: str, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.method = _method(method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"

    def spec(self) -> dict[str, Any]:
        """JSON-able structure: {"method": ..., "layers": [constructor args of each child]}."""
        return {"method": self.method, "layers": [_entry(child) for child in self]}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LowRank:
        """The same structure with fresh (default-initialised) weights, for a state_dict to load into."""
        return cls(spec["method"], *(_build(e) for e in spec["layers"]))


def reconstruct(module: LowRank) -> Tensor:
    """Effective weight of the chain, in the original layer's weight shape (and module dtype)."""
    ws = [child.weight for child in module]
    if module.method == "svd":
        first, last = (w.reshape(w.shape[0], w.shape[1]) for w in ws)
        return (last @ first).reshape(ws[1].shape[0], ws[0].shape[1], *ws[0].shape[2:])
    if module.method == "spatial-svd":
        return torch.einsum("orb,ria->oiab", ws[1][:, :, 0, :], ws[0][..., 0])
    if module.method == "tucker2":
        return torch.einsum("os,srab,ri->oiab", ws[2][..., 0, 0], ws[1], ws[0][..., 0, 0])
    return torch.einsum("or,ri,ra,rb->oiab", ws[3][..., 0, 0], ws[0][..., 0, 0],
                        ws[1][:, 0, :, 0], ws[2][:, 0, 0, :])


@dataclass(frozen=True)
class Factorized:
    """Result of `decompose`. `rel_error` = ‖W − Ŵ‖_F / ‖W‖_F of the decomposition (float64)."""

    module: LowRank
    method: str
    rank: Rank
    full_rank: Rank
    rel_error: float


def decompose(layer: nn.Module, method: str, rank: Rank) -> Factorized:
    """Factorize `layer` with `method` at `rank` into a drop-in `LowRank` replacement.

    ValueError for a method/layer pair `unsupported` refuses (with the reason) and for a rank
    outside [1, full_rank] (the message gives the range). The replacement has the layer's
    dtype, device and train/eval mode; its parameters require grad.
    """
    rank = _check_rank(layer, _method(method), rank)
    w = _weight(layer)
    children = [_build(e, init=False) for e in _plan(layer, method, rank)]
    with torch.no_grad():
        for child, weight in zip(children, _factors(w, method, rank)):
            child.weight.copy_(weight.reshape(child.weight.shape))
        if layer.bias is not None:
            children[-1].bias.copy_(layer.bias.detach())
    module = LowRank(method, *children)
    with torch.no_grad():
        norm = float(w.norm())
        rel = float((w - reconstruct(module)).norm()) / norm if norm > 0 else 0.0
    module.to(device=layer.weight.device, dtype=layer.weight.dtype).train(layer.training)
    return Factorized(module, method, rank, full_rank(layer, method), rel)
