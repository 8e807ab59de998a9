"""Multiply-accumulate (MAC) counts of single aten ops, from shapes alone.

One MAC is one multiply plus one add (FLOPs ~= 2 x MACs). Only the ops that do
dense multiply-accumulate work are counted: convolutions (plain, grouped,
depthwise, transposed), matrix products (mm, addmm, bmm, baddbmm, ...), and the
fused attention kernels, whose QK^T and AV products are counted in full
(causal masks and dropout do not reduce the count). Bias adds, elementwise ops,
normalization, pooling and softmax count zero, which is the convention of
torchvision's published `_ops` figures.

`op_macs(func, args, out)` is what a dispatch-mode counter calls for every op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

_aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _conv(args: Sequence[Any], out: Any) -> int:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    # Weight is (C_out, C_in/groups, *k) or, transposed, (C_in, C_out/groups, *k): either way
    # prod(weight) is the MACs per output (resp. input) pixel, groups included.
    # A transposed conv scatters from every *input* pixel, so it is counted on the input grid.
    grid = _shape(x)[2:] if transposed else _shape(_first(out))[2:]
    return _shape(x)[0] * math.prod(_shape(w)) * math.prod(grid)


def _mm(a: Any, b: Any) -> int:
    # (..., n, k) @ (k, m) -> n*k*m per leading index.
    return math.prod(_shape(a)) * _shape(b)[-1]


def _bmm(a: Any, b: Any) -> int:
    bsz, n, k = _shape(a)
    return bsz * n * k * _shape(b)[-1]


def _matmul(args: Sequence[Any], out: Any) -> int:
    # General broadcasting matmul: every output element is a length-k dot product.
    a = args[0]
    k = _shape(a)[-1]
    return math.prod(_shape(_first(out))) * k


def _linear(args: Sequence[Any], out: Any) -> int:
    x, w = args[0], args[1]
    return math.prod(_shape(x)[:-1]) * math.prod(_shape(w))


def _attention(q: Any, k: Any, v: Any) -> int:
    """QK^T plus AV for (..., L_q, E) queries against (..., L_k, E) keys/(..., L_k, E_v) values."""
    qs, ks, vs = _shape(q), _shape(k), _shape(v)
    rows = math.prod(qs[:-1])  # every query row of every batch and head
    return rows * ks[-2] * (qs[-1] + vs[-1])


def _sdpa(args: Sequence[Any], out: Any) -> int:
    return _attention(args[0], args[1], args[2])


def _native_mha(args: Sequence[Any], out: Any) -> int:
    # _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight,
    # qkv_bias, proj_weight, proj_bias, ...): (B, L, E) tensors, heads packed in E.
    q, k, v, embed = args[0], args[1], args[2], int(args[3])
    lq = math.prod(_shape(q)[:-1])
    lk = math.prod(_shape(k)[:-1])
    projections = (lq + 2 * lk) * embed * embed + lq * embed * embed
    return projections + _attention(q, k, v)


def _encoder_layer(args: Sequence[Any], out: Any) -> int:
    # _transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_w, qkv_b, proj_w, proj_b,
    # use_gelu, norm_first, eps, n1_w, n1_b, n2_w, n2_b, ffn_w1, ffn_b1, ffn_w2, ffn_b2, ...)
    src, embed = args[0], int(args[1])
    tokens = math.prod(_shape(src)[:-1])
    ffn = math.prod(_shape(args[14])) + math.prod(_shape(args[16]))
    return tokens * (4 * embed * embed + ffn) + _attention(src, src, src)


_RULES: dict[Any, Callable[[Sequence[Any], Any], int]] = {
    _aten.convolution: _conv,
    _aten._convolution: _conv,
    _aten.convolution_overrideable: _conv,
    _aten.mm: lambda a, o: _mm(a[0], a[1]),
    _aten.addmm: lambda a, o: _mm(a[1], a[2]),
    _aten.bmm: lambda a, o: _bmm(a[0], a[1]),
    _aten.baddbmm: lambda a, o: _bmm(a[1], a[2]),
    _aten.addbmm: lambda a, o: _bmm(a[1], a[2]),
    _aten.mv: lambda a, o: math.prod(_shape(a[0])),
    _aten.addmv: lambda a, o: math.prod(_shape(a[1])),
    _aten.dot: lambda a, o: _shape(a[0])[0],
    _aten.vdot: lambda a, o: _shape(a[0])[0],
    # Composite ops are normally decomposed before a dispatch mode sees them; kept in case a
    # backend hands them over whole.
    _aten.matmul: _matmul,
    _aten.linear: _linear,
    _aten.scaled_dot_product_attention: _sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    _aten._scaled_dot_product_flash_attention: _sdpa,
    _aten._scaled_dot_product_efficient_attention: _sdpa,
    _aten._scaled_dot_product_cudnn_attention: _sdpa,
    _aten._scaled_dot_product_fused_attention_overrideable: _sdpa,
    _aten._native_multi_head_attention: _native_mha,
    _aten._transformer_encoder_layer_fwd: _encoder_layer,
}


def op_macs(func: Any, args: Sequence[Any], out: Any) -> int:
    """MACs of one aten op call (`func` an OpOverload), 0 for ops that are not counted."""
    rule = _RULES.get(func.overloadpacket)
    return int(rule(args, out)) if rule is not None else 0


def counted_ops() -> list[str]:
    """Names of the aten ops that carry MACs, for documentation and tests."""
    return sorted(str(packet) for packet in _RULES)
