"""analyze() on small models whose params, MACs and bytes are computed by hand."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from edgecompress.errors import UserError
from edgecompress.graph import LayerCost, ModelAnalysis, analyze
from edgecompress.graph.cost import FUNCTIONAL, SCHEMA, _human
from edgecompress.graph.macs import counted_ops

F32 = 4  # bytes per fp32 element


def only(result: ModelAnalysis) -> LayerCost:
    assert len(result.layers) == 1, result.layers
    return result.layers[0]


def test_conv2d_macs_params_bytes():
    layer = only(analyze(nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8)))
    assert layer.macs == 8 * 3 * 9 * 64 == 13824
    assert layer.params == 8 * 3 * 9 + 8
    assert layer.act_bytes == (3 * 64 + 8 * 64) * F32
    assert (layer.input_shape, layer.output_shape) == ((1, 3, 8, 8), (1, 8, 8, 8))
    assert (layer.name, layer.type) == ("", "Conv2d")


def test_depthwise_and_grouped_conv():
    dw = only(analyze(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (8, 8, 8)))
    assert dw.macs == 8 * 9 * 64  # one 3x3 filter per channel
    assert dw.params == 8 * 9
    grouped = only(analyze(nn.Conv2d(8, 16, 1, groups=4), (8, 5, 5)))
    assert grouped.macs == 16 * (8 // 4) * 25


def test_strided_conv_counts_output_pixels():
    layer = only(analyze(nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 8, 8)))
    assert layer.output_shape == (1, 4, 4, 4)
    assert layer.macs == 4 * 3 * 9 * 16


def test_transposed_conv_counts_input_pixels():
    layer = only(analyze(nn.ConvTranspose2d(4, 2, 2, stride=2), (4, 3, 3)))
    assert layer.output_shape == (1, 2, 6, 6)
    assert layer.macs == 4 * 2 * 4 * 9  # every input pixel scatters a 2x2x2 patch


def test_linear_2d_3d_and_no_bias():
    assert only(analyze(nn.Linear(16, 10), (16,), batch_size=2)).macs == 2 * 16 * 10
    assert only(analyze(nn.Linear(16, 10), (5, 16), batch_size=2)).macs == 2 * 5 * 16 * 10
    layer = only(analyze(nn.Linear(16, 10, bias=False), (7, 3, 16)))
    assert layer.macs == 7 * 3 * 16 * 10
    assert layer.params == 160


def test_relu_bytes_in_fp32_and_bf16():
    relu = only(analyze(nn.ReLU(), (4, 4, 4)))
    assert relu.act_bytes == 2 * 64 * 4 and relu.macs == 0
    # In place still reads the input and writes the output.
    assert only(analyze(nn.ReLU(inplace=True), (4, 4, 4))).act_bytes == 2 * 64 * 4
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).to(torch.bfloat16)
    result = analyze(model, (4, 4, 4))
    assert result.layers[1].act_bytes == 2 * 64 * 2  # the model's own dtype: 2 bytes


def test_numpy_ints_are_accepted():
    import numpy as np

    result = analyze(nn.ReLU(), (np.int64(4), 4, 4), batch_size=np.int32(2))
    assert result.input_shape == (2, 4, 4, 4)
    assert all(type(d) is int for d in result.input_shape)


def test_batch_size_scales_macs_and_bytes():
    one = analyze(nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8))
    four = analyze(nn.Conv2d(3, 8, 3, padding=1), (3, 8, 8), batch_size=4)
    assert four.input_shape == (4, 3, 8, 8)
    assert four.total_macs == 4 * one.total_macs
    assert four.total_act_bytes == 4 * one.total_act_bytes
    assert four.total_params == one.total_params == 224


class Block(nn.Module):
    """Conv-BN-ReLU with a residual add done in the block's own forward."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Block(4)
        self.shared = nn.Conv2d(4, 4, 1, bias=False)
        self.unused = nn.Linear(100, 100)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.shared(self.block(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def test_layers_in_execution_order_with_shared_and_functional():
    result = analyze(Net(), (3, 6, 6))
    names = [layer.name for layer in result.layers]
    assert names == ["stem", "block.conv", "block.bn", "block.act", "block", "shared", "", "fc"]
    by_name = {layer.name: layer for layer in result.layers}
    hw = 36
    # Called twice: MACs and bytes accumulate, params are counted once.
    assert by_name["shared"].macs == 2 * 4 * 4 * hw
    assert by_name["shared"].act_bytes == 2 * (2 * 4 * hw) * F32
    assert by_name["shared"].params == 16
    # The residual add: reads two activations, writes one; weights are not activations.
    assert by_name["block"].type == FUNCTIONAL
    assert by_name["block"].act_bytes == 3 * 4 * hw * F32
    assert by_name["block"].params == 0
    assert by_name["block"].input_shape == by_name["block"].output_shape == (1, 4, 6, 6)
    # The root's own mean(): reads 1x4x6x6, writes 1x4.
    assert by_name[""].type == FUNCTIONAL
    assert by_name[""].act_bytes == (4 * hw + 4) * F32
    assert by_name["block.conv"].macs == 4 * 4 * 9 * hw
    assert by_name["fc"].macs == 4 * 2
    # The unused Linear does not appear, but its parameters are in the total.
    assert "unused" not in by_name
    model_params = sum(p.numel() for p in Net().parameters())
    assert result.total_params == model_params == 16 + 144 + 8 + 16 + 10100 + 10
    assert result.total_macs == sum(layer.macs for layer in result.layers)
    assert result.total_macs == 4 * 3 * hw + 4 * 4 * 9 * hw + 2 * 16 * hw + 8


class Attention(nn.Module):
    """Functional scaled-dot-product attention over its own child projections."""

    def __init__(self, e: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(e, 3 * e)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        explicit = (q @ k.transpose(-2, -1)).softmax(-1) @ v  # decomposes into bmm
        fused = nn.functional.scaled_dot_product_attention(q, k, v)
        return explicit + fused


def test_attention_counts_qk_and_av():
    result = analyze(Attention(), (5, 8))
    attn = {layer.name: layer for layer in result.layers}[""]
    assert attn.type == FUNCTIONAL
    qk_av = 2 * 5 * 5 * 8  # per batch: QK^T and AV, each L*L*E over all heads
    assert attn.macs == 2 * qk_av  # once as explicit matmuls, once fused
    assert result.total_macs == 5 * 8 * 24 + 2 * qk_av


@pytest.mark.parametrize("fastpath", [True, False])
def test_multihead_attention_fast_and_slow_path_agree(fastpath: bool):
    e, heads, length = 16, 4, 6

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(e, heads, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        result = analyze(Wrap(), (length, e), batch_size=2)
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    projections = 2 * length * 4 * e * e
    attention = 2 * 2 * length * length * e
    assert result.total_macs == projections + attention
    # The MHA module uses its weights directly, not through its out_proj child.
    assert [(layer.name, layer.type) for layer in result.layers] == [("mha", FUNCTIONAL)]
    assert result.layers[0].params == 3 * e * e + 3 * e


def test_model_is_left_as_it_was():
    model = Net()
    model.train()
    model.block.bn.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, (3, 6, 6))
    assert model.training and model.stem.training and not model.block.bn.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # eval mode: BN stats untouched
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_forward_failure_is_a_user_error_and_cleans_up():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(10, 2))
    model.train()
    with pytest.raises(UserError) as info:
        analyze(model, (3, 8, 8))
    message = str(info.value)
    assert "[1, 3, 8, 8]" in message and "--input-size C,H,W" in message
    assert "mat1 and mat2 shapes cannot be multiplied" in message
    assert "\n" not in message
    assert model.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("shape", [(), (3, 0, 8), (3, -1), "3,8,8", (3.0, 8, 8), None])
def test_bad_input_shape(shape):
    with pytest.raises(UserError, match="--input-size"):
        analyze(nn.ReLU(), shape)


@pytest.mark.parametrize("batch", [0, -1, 1.5, True])
def test_bad_batch_size(batch):
    with pytest.raises(UserError, match="batch size"):
        analyze(nn.ReLU(), (3, 4, 4), batch_size=batch)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_torchscript_model_is_charged_to_the_root():
    model = torch.jit.trace(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                            torch.zeros(1, 3, 8, 8))
    layer = only(analyze(model, (3, 8, 8)))
    assert (layer.name, layer.type, layer.macs) == ("", FUNCTIONAL, 13824)
    assert (layer.input_shape, layer.output_shape) == ((1, 3, 8, 8), (1, 8, 8, 8))
    # conv reads the input and writes 8 channels; relu reads and writes them again.
    assert layer.act_bytes == (3 * 64 + 8 * 64 + 2 * 8 * 64) * F32


def test_to_dict_is_json():
    result = analyze(Net(), (3, 6, 6))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["schema"] == SCHEMA == "edgecompress.analysis/1"
    assert data["input_shape"] == [1, 3, 6, 6]
    assert data["total"] == {"params": result.total_params, "macs": result.total_macs,
                             "act_bytes": result.total_act_bytes}
    assert data["layers"][0] == {"name": "stem", "type": "Conv2d", "input_shape": [1, 3, 6, 6],
                                 "output_shape": [1, 4, 6, 6], "params": 16,
                                 "macs": 4 * 3 * 36, "act_bytes": (3 + 4) * 36 * F32}


def test_human_units():
    assert _human(999) == "999"
    assert _human(3_504_872) == "3.50 M"
    assert _human(45_600_000) == "45.6 M"
    assert _human(300_774_272) == "300.8 M"
    assert _human(17_563_828_000) == "17.6 G"
    assert _human(13_824) == "13.8 K"
    assert _human(999_990) == "1.00 M"
    assert _human(1_016_716_764_000) == "1.02 T"


def test_render_table_rows_and_totals():
    result = analyze(Net(), (3, 6, 6))
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    result.render_table(console=console, max_rows=3)
    text = out.getvalue()
    assert "block.conv" in text and "Conv2d" in text and "1x4x6x6" in text
    assert "block.bn" in text and "│ fc " not in text  # cut after 3 rows
    assert f"... {len(result.layers) - 3} more layers" in text
    assert "total" in text and "10.3 K" in text  # 10.3 K params in the totals row
    full = io.StringIO()
    result.render_table(console=Console(file=full, width=200, color_system=None))
    assert "(root)" in full.getvalue() and "more layers" not in full.getvalue()


def test_counted_ops_cover_conv_matmul_attention():
    ops = counted_ops()
    for name in ("aten.convolution", "aten.addmm", "aten.bmm", "aten.baddbmm",
                 "aten._scaled_dot_product_flash_attention_for_cpu",
                 "aten._native_multi_head_attention"):
        assert name in ops
