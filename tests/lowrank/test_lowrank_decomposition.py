from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from edgecompress.graph.cost import analyze
from edgecompress.lowrank.decomposition import (
    METHODS,
    LowRank,
    decompose,
    energy_rank,
    evbmf_rank,
    factorized_macs,
    factorized_params,
    full_rank,
    rank_for_ratio,
    reconstruct,
    spectrum,
    unsupported,
    vbmf_ranks,
)

torch.set_num_threads(1)


def seeded(make, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def conv(*args, **kwargs) -> nn.Conv2d:
    return seeded(lambda: nn.Conv2d(*args, **kwargs))


def random_input(layer: nn.Module, hw: tuple[int, int] = (11, 13)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(3, layer.in_features, generator=g)
    return torch.randn(2, layer.in_channels, *hw, generator=g)


CONVS = {
    "3x3": lambda: conv(8, 12, 3),
    "stride2-pad1": lambda: conv(8, 12, 3, stride=2, padding=1),
    "3x5-dilation2": lambda: conv(8, 12, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2),
    "no-bias-same": lambda: conv(8, 12, 3, padding="same", bias=False),
}
FULL_CASES = [(name, method) for name in CONVS for method in ("spatial-svd", "tucker2", "cp")]
SVD_LAYERS = {
    "linear": lambda: seeded(lambda: nn.Linear(20, 16)),
    "1x1": lambda: conv(8, 12, 1),
    "1x1-stride2-pad1": lambda: conv(12, 8, 1, stride=2, padding=1),
}


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize(("name", "method"), FULL_CASES)
def test_full_rank_is_exact_for_convs(name, method):
    layer = CONVS[name]()
    f = decompose(layer, method, full_rank(layer, method))
    x = random_input(layer)
    assert f.rel_error < 1e-5
    assert f.rank == f.full_rank
    torch.testing.assert_close(f.module(x), layer(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(reconstruct(f.module), layer.weight.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SVD_LAYERS)
def test_full_rank_is_exact_for_svd(name):
    layer = SVD_LAYERS[name]()
    f = decompose(layer, "svd", full_rank(layer, "svd"))
    x = random_input(layer)
    assert f.rel_error < 1e-5
    torch.testing.assert_close(f.module(x), layer(x), atol=1e-4, rtol=0)


def test_full_ranks():
    layer = conv(8, 12, (3, 5))
    assert full_rank(layer, "spatial-svd") == min(8 * 3, 12 * 5) == 24
    assert full_rank(layer, "tucker2") == (8, 12)
    assert full_rank(layer, "cp") == 8 * 3 * 5 == 120  # smallest product of all dims but one
    assert full_rank(seeded(lambda: nn.Linear(20, 16)), "svd") == 16
    assert full_rank(conv(30, 4, 3), "cp") == 4 * 3 * 3  # here the ci mode carries the slices


def test_dtype_device_mode_and_grad_follow_the_layer():
    layer = conv(8, 12, 3).double().eval()
    module = decompose(layer, "tucker2", (4, 6)).module
    assert isinstance(module, LowRank) and module.method == "tucker2"
    assert all(p.dtype == torch.float64 and p.device == layer.weight.device and p.requires_grad
               for p in module.parameters())
    assert not module.training and not any(m.training for m in module.modules())
    assert decompose(conv(8, 12, 3).train(), "cp", 4).module.training


def test_decompose_leaves_the_global_rng_alone():
    layer = conv(8, 12, 3)
    state = torch.random.get_rng_state()
    decompose(layer, "cp", 5)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_cp_is_deterministic():
    layer = conv(8, 12, 3)
    a, b = decompose(layer, "cp", 6), decompose(layer, "cp", 6)
    assert a.rel_error == b.rel_error
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


# ---------------------------------------------------------------- truncation error


@pytest.mark.parametrize(("method", "ranks"), [
    ("svd", [1, 2, 4, 6, 8]),
    ("spatial-svd", [1, 2, 4, 8, 16, 24]),
    ("tucker2", [(1, 1), (2, 3), (4, 6), (6, 9), (8, 12)]),
    ("cp", [1, 4, 16, 72]),
])
def test_error_decreases_with_rank(method, ranks):
    layer = conv(8, 12, 1) if method == "svd" else conv(8, 12, 3)
    errors = [decompose(layer, method, r).rel_error for r in ranks]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6


@pytest.mark.parametrize(("make", "method"), [
    (lambda: seeded(lambda: nn.Linear(20, 16)), "svd"),
    (lambda: conv(8, 12, 1), "svd"),
    (lambda: conv(8, 12, (3, 5), stride=2, padding=1), "spatial-svd"),
])
def test_truncated_error_is_the_eckart_young_tail(make, method):
    layer = make()
    s = spectrum(layer, method)
    assert s.dtype == torch.float64 and torch.all(s[:-1] >= s[1:])
    norm = float(layer.weight.detach().double().norm())
    for r in (1, 3, 7):
        tail = math.sqrt(float((s[r:] ** 2).sum())) / norm
        assert decompose(layer, method, r).rel_error == pytest.approx(tail, abs=1e-6)


def test_tucker2_spectra_and_one_sided_truncation():
    layer = conv(8, 12, 3)
    s_in, s_out = spectrum(layer, "tucker2")
    assert (s_in.numel(), s_out.numel()) == (8, 12)
    w = layer.weight.detach().double()
    torch.testing.assert_close(s_out, torch.linalg.svdvals(w.reshape(12, -1)))
    # Keeping all input channels, Tucker-2 is a truncated SVD of the mode-0 unfolding.
    tail = math.sqrt(float((s_out[5:] ** 2).sum())) / float(w.norm())
    assert decompose(layer, "tucker2", (8, 5)).rel_error == pytest.approx(tail, abs=1e-6)


# ---------------------------------------------------------------- structure, params, MACs


def _shapes(module: nn.Module) -> list[tuple]:
    out = []
    for c in module:
        if isinstance(c, nn.Linear):
            out.append(("Linear", c.in_features, c.out_features, c.bias is not None))
        else:
            out.append((c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                        c.dilation, c.groups, c.bias is not None))
    return out


def test_child_layers_of_each_method():
    layer = conv(8, 12, (3, 5), stride=2, padding=(1, 2), dilation=(2, 1))
    assert _shapes(decompose(layer, "spatial-svd", 6).module) == [
        (8, 6, (3, 1), (2, 1), (1, 0), (2, 1), 1, False),
        (6, 12, (1, 5), (1, 2), (0, 2), (1, 1), 1, True),
    ]
    assert _shapes(decompose(layer, "tucker2", (3, 5)).module) == [
        (8, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1, False),
        (3, 5, (3, 5), (2, 2), (1, 2), (2, 1), 1, False),
        (5, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    ]
    assert _shapes(decompose(layer, "cp", 7).module) == [
        (8, 7, (1, 1), (1, 1), (0, 0), (1, 1), 1, False),
        (7, 7, (3, 1), (2, 1), (1, 0), (2, 1), 7, False),
        (7, 7, (1, 5), (1, 2), (0, 2), (1, 1), 7, False),
        (7, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    ]
    assert _shapes(decompose(conv(8, 12, 1, stride=2, padding=1), "svd", 4).module) == [
        (8, 4, (1, 1), (2, 2), (1, 1), (1, 1), 1, False),
        (4, 12, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    ]
    assert _shapes(decompose(seeded(lambda: nn.Linear(20, 16, bias=False)), "svd", 5).module) == [
        ("Linear", 20, 5, False), ("Linear", 5, 16, False),
    ]


CASES = [  # (layer, method, rank)
    (lambda: seeded(lambda: nn.Linear(20, 16)), "svd", 5),
    (lambda: conv(16, 32, 1, stride=2), "svd", 4),
    (lambda: conv(16, 32, 3, stride=2, padding=1), "spatial-svd", 8),
    (lambda: conv(16, 32, 3, stride=2, padding=1), "tucker2", (4, 8)),
    (lambda: conv(16, 32, 3, stride=2, padding=1), "cp", 8),
    (lambda: conv(8, 12, (3, 5), stride=2, padding=(1, 2), dilation=2, bias=False), "cp", 5),
]


@pytest.mark.parametrize(("make", "method", "rank"), CASES)
def test_factorized_params_counts_the_built_module(make, method, rank):
    layer = make()
    module = decompose(layer, method, rank).module
    assert factorized_params(layer, method, rank) == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("index", "expected"), [
    (0, 20 * 5 + 5 * 16),
    (1, (16 * 4 + 4 * 32) * 4 * 4),
    (2, 8 * 16 * 3 * (4 * 8) + 32 * 8 * 3 * (4 * 4)),  # vertical conv runs at (h_out, w_in)
    (3, 16 * 4 * 8 * 8 + 8 * 4 * 9 * 4 * 4 + 32 * 8 * 4 * 4),  # first 1x1 at the input size
    (4, 16 * 8 * 8 * 8 + 8 * 3 * 4 * 8 + 8 * 3 * 4 * 4 + 32 * 8 * 4 * 4),
])
def test_factorized_macs_by_hand(index, expected):
    make, method, rank = CASES[index]
    layer = make()
    in_hw, out_hw = ((1, 1), (1, 1)) if method == "svd" and index == 0 else ((8, 8), (4, 4))
    assert factorized_macs(layer, method, rank, in_hw, out_hw) == expected


@pytest.mark.parametrize(("make", "method", "rank"), CASES[1:])
def test_factorized_macs_match_the_op_counter(make, method, rank):
    layer = make()
    module = decompose(layer, method, rank).module
    out_hw = tuple(layer(torch.zeros(1, layer.in_channels, 9, 10)).shape[2:])
    counted = analyze(module, (layer.in_channels, 9, 10)).total_macs
    assert factorized_macs(layer, method, rank, (9, 10), out_hw) == counted


def test_factorized_macs_rejects_an_inconsistent_out_hw():
    with pytest.raises(ValueError, match=r"out_hw \(8, 8\) does not match.*expected \(4, 4\)"):
        factorized_macs(conv(16, 32, 3, stride=2, padding=1), "cp", 8, (8, 8), (8, 8))


@pytest.mark.parametrize(("make", "method", "rank"), CASES)
def test_spec_round_trip(make, method, rank):
    layer = make()
    module = decompose(layer, method, rank).module
    spec = json.loads(json.dumps(module.spec()))
    rebuilt = LowRank.from_spec(spec)
    assert rebuilt.spec() == module.spec() and rebuilt.method == method
    assert _shapes(rebuilt) == _shapes(module)
    rebuilt.load_state_dict(module.state_dict())
    x = random_input(layer, (8, 8))
    assert torch.equal(rebuilt(x), module(x))


def test_from_spec_rejects_an_unknown_layer_type():
    with pytest.raises(ValueError, match="layer type 'ReLU' must be one of"):
        LowRank.from_spec({"method": "svd", "layers": [{"type": "ReLU"}]})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("make", "method", "rank", "match"), [
    (lambda: conv(8, 12, 3), "cp", 0, r"cp rank 0 must be an int in \[1, 72\]"),
    (lambda: conv(8, 12, 3), "spatial-svd", 25, r"spatial-svd rank 25 must be an int in \[1, 24\]"),
    (lambda: seeded(lambda: nn.Linear(20, 16)), "svd", 17, r"svd rank 17 must be an int in \[1, 16\]"),
    (lambda: conv(8, 12, 1), "svd", 2.5, r"svd rank 2.5 must be an int"),
    (lambda: conv(8, 12, 3), "tucker2", 4, r"tucker2 rank must be a pair \(rank_in, rank_out\), got 4"),
    (lambda: conv(8, 12, 3), "tucker2", (9, 4), r"tucker2 rank_in 9 must be an int in \[1, 8\]"),
    (lambda: conv(8, 12, 3), "tucker2", (4, 0), r"tucker2 rank_out 0 must be an int in \[1, 12\]"),
    (lambda: conv(8, 12, 3), "svd", 2, r"3x3 kernel: svd needs 1x1"),
    (lambda: conv(8, 12, 3, groups=4), "tucker2", 2, r"grouped conv \(groups=4\)"),
    (lambda: conv(8, 12, 1), "spatial-svd", 2, r"1x1 kernel: use svd"),
    (lambda: conv(8, 12, 1), "cp", 2, r"1x1 kernel: use svd"),
    (lambda: conv(8, 12, 3, padding=1, padding_mode="reflect"), "cp", 2, r"padding_mode 'reflect'"),
    (lambda: nn.ReLU(), "svd", 1, r"cannot factorize ReLU with 'svd': not a Conv2d or Linear \(ReLU\)"),
    (lambda: seeded(lambda: nn.Linear(20, 16)), "tucker2", (2, 2), r"Linear layer: use svd"),
    (lambda: conv(8, 12, 3), "tuker2", (2, 2), r"unknown low-rank method 'tuker2' \(did you mean tucker2"),
])
def test_decompose_errors(make, method, rank, match):
    with pytest.raises(ValueError, match=match):
        decompose(make(), method, rank)


def test_unsupported_reasons():
    assert unsupported(conv(8, 12, 3), "tucker2") is None
    assert unsupported(conv(8, 12, 1), "tucker2") is None  # pointless but allowed
    assert unsupported(conv(8, 8, 3, groups=8), "cp") == "grouped conv (groups=8)"
    assert unsupported(nn.ConvTranspose2d(4, 4, 3), "svd") == "not a Conv2d or Linear (ConvTranspose2d)"
    assert [unsupported(seeded(lambda: nn.Linear(4, 4)), m) for m in METHODS] == [
        None, "Linear layer: use svd", "Linear layer: use svd", "Linear layer: use svd"]


# ---------------------------------------------------------------- rank choice


def test_rank_for_ratio_rounds_up_to_multiples():
    layer = conv(30, 40, 3)
    assert full_rank(layer, "spatial-svd") == 90
    assert rank_for_ratio(layer, "spatial-svd", 0.1) == 9
    assert rank_for_ratio(layer, "spatial-svd", 0.1, multiple=4) == 12
    assert rank_for_ratio(layer, "spatial-svd", 0.01, multiple=8) == 8  # at least `multiple`
    assert rank_for_ratio(layer, "spatial-svd", 1.0, multiple=8) == 90  # at most full rank
    assert rank_for_ratio(layer, "tucker2", 0.1) == (3, 4)  # 0.1 * 30 is not rounded up to 4
    assert rank_for_ratio(layer, "tucker2", 0.25, multiple=8) == (8, 16)
    assert rank_for_ratio(conv(30, 40, 1), "svd", 0.5, multiple=16) == 16
    for bad in (0, 0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=rf"rank ratio {bad!r} must be a number in \(0, 1\]"):
            rank_for_ratio(layer, "cp", bad)
    with pytest.raises(ValueError, match="rank multiple 0 must be an int >= 1"):
        rank_for_ratio(layer, "cp", 0.5, multiple=0)


def test_energy_rank_on_a_known_spectrum():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert energy_rank(s, 16 / 22) == 1
    assert energy_rank(s, 0.73) == 2
    assert energy_rank(s, 20 / 22) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 4
    assert energy_rank([0.0, 0.0], 1.0) == 1
    with pytest.raises(ValueError, match=r"energy keep 0 must be a number in \(0, 1\]"):
        energy_rank(s, 0)


@pytest.mark.parametrize(("shape", "noise"), [((40, 60), 0.01), ((60, 40), 0.1), ((40, 60), 1.0)])
def test_evbmf_recovers_the_true_rank(shape, noise):
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(shape[0], 5, generator=g) @ torch.randn(5, shape[1], generator=g)
    assert evbmf_rank(signal + noise * torch.randn(*shape, generator=g)) == 5


def test_evbmf_on_pure_noise_and_zero():
    g = torch.Generator().manual_seed(0)
    assert evbmf_rank(torch.randn(40, 60, generator=g)) == 1
    assert evbmf_rank(torch.zeros(5, 7)) == 1
    with pytest.raises(ValueError, match=r"2-D matrix, got shape \(2, 3, 4\)"):
        evbmf_rank(torch.zeros(2, 3, 4))


def test_vbmf_ranks_of_a_low_rank_conv():
    g = torch.Generator().manual_seed(0)
    layer = conv(16, 24, 3)
    core = torch.randn(6, 4, 3, 3, generator=g)
    w = torch.einsum("os,srab,ir->oiab", torch.randn(24, 6, generator=g), core, torch.randn(16, 4, generator=g))
    with torch.no_grad():
        layer.weight.copy_(w + 0.01 * torch.randn(w.shape, generator=g))
    assert vbmf_ranks(layer) == (4, 6)
    assert decompose(layer, "tucker2", (4, 6)).rel_error < 0.01
