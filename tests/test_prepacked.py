"""Convolutions and linear layers on prepacked oneDNN weights compute the stock function, follow
their weights when those change, and step aside wherever they cannot serve (autograd, other dtypes)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from mimic_core.files import load_safetensors
from mimic_core.prepacked import (FLOAT32_PACKED_BELOW_SIDE, PrepackedConv2d, PrepackedLinear, packs_dtype,
                                  prepack_convolutions, prepack_linears)
from mimic_core.resnet_blocks import InPlaceResnetBlock2D
from mimic_core.winograd import PrepackedWinogradConv2d, WinogradConv2d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this torch build")

SHAPES = [  # (in, out, kernel, stride, padding, input batch/size): the U-Nets' kinds of convolution
    (8, 16, 3, 1, 1, (2, 8, 16, 16)),
    (16, 16, 3, 2, 1, (1, 16, 16, 16)),
    (16, 8, 1, 1, 0, (2, 16, 8, 8)),
    (13, 8, 3, 1, 1, (1, 13, 12, 12)),
]


def _pair(cin, cout, kernel, stride, padding):
    torch.manual_seed(0)
    stock = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    packed = copy.deepcopy(stock)
    assert prepack_convolutions(packed) == 1
    return stock, packed


@pytest.mark.parametrize("cin,cout,kernel,stride,padding,shape", SHAPES)
def test_packed_convolution_is_the_stock_one(cin, cout, kernel, stride, padding, shape):
    stock, packed = _pair(cin, cout, kernel, stride, padding)
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = stock(x)
        first = packed(x)
        assert packed._packed is not None  # it did run on the packed weight
        torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
        # packed once for this input; inputs of another batch and size reuse that packing
        other = torch.randn(3, cin, shape[2] * 2, shape[3] * 2)
        torch.testing.assert_close(packed(other), stock(other), rtol=1e-5, atol=1e-5)
        channels_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(packed(channels_last), expected, rtol=1e-5, atol=1e-5)
    assert packed.state_dict().keys() == stock.state_dict().keys()


def _packed_once():
    """A stock and a packed 8-channel convolution, the packed one already run (so packed), and its input."""
    stock, packed = _pair(8, 8, 3, 1, 1)
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        packed(x)
    assert packed._packed is not None
    return stock, packed, x


def test_a_changed_weight_is_packed_again():
    stock, packed, x = _packed_once()
    with torch.no_grad():
        for conv in (stock, packed):
            conv.weight.mul_(-2.0)  # in place: the version counter moves
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)
        replacement = torch.randn_like(stock.weight)
        for conv in (stock, packed):
            conv.weight = nn.Parameter(replacement.clone())
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_autograd_take_the_stock_path():
    stock, packed, x = _packed_once()
    kept = packed._packed
    packed.to("cpu", torch.float32)  # already there: the packing stays
    assert packed._packed is kept
    for conv in (stock, packed):
        conv.double()
    assert packed._packed is None  # cast: the old packing is dropped
    with torch.no_grad():
        torch.testing.assert_close(packed(x.double()), stock(x.double()))
    for conv in (stock, packed):
        conv.float()
    grad_in = x.clone().requires_grad_(True)
    packed(grad_in).square().sum().backward()
    stock(x.clone().requires_grad_(True)).square().sum().backward()
    assert grad_in.grad is not None
    torch.testing.assert_close(packed.weight.grad, stock.weight.grad)


@pytest.mark.skipif(not packs_dtype(torch.bfloat16), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
@pytest.mark.parametrize("cin,cout,kernel,stride,padding,shape", SHAPES)
def test_bf16_runs_packed_where_the_cpu_has_it_within_bf16_rounding(cin, cout, kernel, stride, padding, shape):
    stock, packed = _pair(cin, cout, kernel, stride, padding)
    stock, packed = stock.bfloat16(), packed.bfloat16()
    x = torch.randn(shape)
    with torch.inference_mode():
        in_fp32 = nn.functional.conv2d(x, stock.weight.float(), stock.bias.float(), stride, padding)
        result = packed(x.bfloat16())
        assert packed._packed is not None and result.dtype == torch.bfloat16
        # both bf16 results are the fp32 one of the bf16 weights, each rounded its own way
        scale = in_fp32.abs().max()
        assert (result.float() - in_fp32).abs().max() <= 2e-2 * scale
        assert (stock(x.bfloat16()).float() - in_fp32).abs().max() <= 2e-2 * scale


def test_bf16_takes_the_stock_path_where_the_cpu_only_emulates_it(monkeypatch):
    monkeypatch.setattr("mimic_core.prepacked.native_cpu_precision", lambda dtype: dtype == torch.float32)
    stock, packed = _pair(8, 8, 3, 1, 1)
    stock, packed = stock.bfloat16(), packed.bfloat16()
    x = torch.randn(1, 8, 8, 8).bfloat16()
    with torch.inference_mode():
        assert torch.equal(packed(x), stock(x))
    assert packed._packed is None


def test_weights_made_in_inference_mode_are_packed():
    with torch.inference_mode():
        torch.manual_seed(0)
        stock = nn.Conv2d(8, 8, 3, padding=1)
        packed = copy.deepcopy(stock)
        prepack_convolutions(packed)
        x = torch.randn(1, 8, 8, 8)
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)
        assert packed._packed is not None


def _mapped_pair(tmp_path):
    """A stock convolution and a packed one whose weights are views of a memory-mapped file
    (147 kB: whole pages of the mapping can be given back)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    stock = nn.Conv2d(64, 64, 3, padding=1)
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(tmp_path / "conv.safetensors"))
    packed = nn.Conv2d(64, 64, 3, padding=1, device="meta")
    packed.load_state_dict(load_safetensors(tmp_path / "conv.safetensors")[0], assign=True)
    prepack_convolutions(packed)
    return stock, packed


def test_memory_mapped_weights_stay_valid_once_packed(tmp_path):
    stock, packed = _mapped_pair(tmp_path)
    x = torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(packed.weight, stock.weight)  # read in again from the file after release


def test_a_mapped_weight_written_in_place_keeps_what_was_written(tmp_path):
    """Pages of the file mapping that were written hold the only copy of what was written: they
    must not be given back, or the weight would silently return to the file's values."""
    stock, packed = _mapped_pair(tmp_path)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        for conv in (stock, packed):
            conv.weight.mul_(3.0)
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(packed.weight, stock.weight)


def test_converting_again_packs_afresh():
    stock, packed, x = _packed_once()
    with torch.no_grad():
        for conv in (stock, packed):
            conv.weight.data.add_(1.0)  # through .data: no version counter sees it
        assert prepack_convolutions(packed) == 1
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)


def test_only_plain_zero_padded_convolutions_are_converted():
    class Custom(nn.Conv2d):
        pass

    module = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding="same"),
                           nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), Custom(4, 4, 1), nn.Linear(4, 4))
    assert prepack_convolutions(module) == 1
    assert [type(m) for m in module] == [PrepackedConv2d, nn.Conv2d, nn.Conv2d, Custom, nn.Linear]


def test_the_loaded_networks_run_prepacked(tiny_models):
    """The golden-parity tests load through :func:`load_models`, so they check the packed path
    (the U-Nets' 3x3 convolutions packed and by Winograd where it gains, the VAE's by Winograd only,
    and the VAE's ResNet blocks in place, the U-Nets' stock)."""
    for unet in (tiny_models.unet, tiny_models.referencenet):
        convs = [m for m in unet.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(isinstance(m, PrepackedConv2d) for m in convs)
        assert any(type(m) is PrepackedWinogradConv2d for m in convs)
        linears = [m for m in unet.modules() if isinstance(m, nn.Linear)]
        assert linears and all(type(m) is PrepackedLinear for m in linears)
    assert not any(isinstance(m, (PrepackedConv2d, PrepackedLinear)) for m in tiny_models.vae.modules())
    assert any(type(m) is WinogradConv2d for m in tiny_models.vae.modules())
    assert not any(type(m) is PrepackedLinear for m in tiny_models.image_encoder.modules())
    vae_blocks = [m for m in tiny_models.vae.modules() if isinstance(m, ResnetBlock2D)]
    assert vae_blocks and all(type(m) is InPlaceResnetBlock2D for m in vae_blocks)
    for unet in (tiny_models.unet, tiny_models.referencenet):
        assert all(type(m) is ResnetBlock2D for m in unet.modules() if isinstance(m, ResnetBlock2D))


# --- linear layers -----------------------------------------------------------------------------------

def _linear_pair(bias: bool = True):
    torch.manual_seed(0)
    stock = nn.Linear(40, 96, bias=bias)
    packed = copy.deepcopy(stock)
    assert prepack_linears(nn.Sequential(packed, nn.Conv2d(2, 2, 1))) == 1
    return stock, packed


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_the_stock_one(bias):
    stock, packed = _linear_pair(bias)
    tokens = torch.randn(2, 50, 40)
    with torch.inference_mode():
        expected = stock(tokens)
        torch.testing.assert_close(packed(tokens), expected, rtol=1e-5, atol=1e-5)
        assert packed._packed is not None  # it did run on the packed weight
        # packed for 100 rows; other row counts, flat rows and strided views reuse that packing
        kept = packed._packed
        for other in (torch.randn(7, 40), torch.randn(3, 300, 40), tokens.transpose(0, 1)):
            torch.testing.assert_close(packed(other), stock(other), rtol=1e-5, atol=1e-5)
        assert packed._packed is kept
    assert packed.state_dict().keys() == stock.state_dict().keys()


def test_a_linear_follows_its_weight_and_steps_aside_for_other_dtypes_and_autograd():
    stock, packed = _linear_pair()
    x = torch.randn(4, 40)
    with torch.no_grad():
        packed(x)
        for linear in (stock, packed):
            linear.weight.mul_(-2.0)
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)
        replacement = torch.randn(96)
        for linear in (stock, packed):
            linear.bias = nn.Parameter(replacement.clone())
        torch.testing.assert_close(packed(x), stock(x), rtol=1e-5, atol=1e-5)
    for linear in (stock, packed):
        linear.double()
    assert packed._packed is None
    with torch.no_grad():
        torch.testing.assert_close(packed(x.double()), stock(x.double()))
    for linear in (stock, packed):
        linear.float()
    packed(x).square().sum().backward()
    stock(x).square().sum().backward()
    torch.testing.assert_close(packed.weight.grad, stock.weight.grad)


def test_a_bf16_linear_takes_the_stock_path():
    stock, packed = _linear_pair()
    stock, packed = stock.bfloat16(), packed.bfloat16()
    x = torch.randn(64, 40).bfloat16()
    with torch.inference_mode():
        assert torch.equal(packed(x), stock(x))
    assert packed._packed is None


def test_float32_convolutions_pack_only_below_the_size_where_packing_gains():
    """In float32, inputs of 32 or more on a side run the stock convolution (no packed weight is
    made; the function is the same) until a smaller one has made the packed weight; bf16 packs at any size."""
    stock, packed = _pair(8, 8, 1, 1, 0)
    large, small = torch.randn(2, 8, FLOAT32_PACKED_BELOW_SIDE, 40), torch.randn(2, 8, 40, FLOAT32_PACKED_BELOW_SIDE - 1)
    with torch.inference_mode():
        torch.testing.assert_close(packed(large), stock(large), rtol=1e-5, atol=1e-5)
        assert packed._packed is None
        torch.testing.assert_close(packed(small), stock(small), rtol=1e-5, atol=1e-5)
        assert packed._packed is not None
        kept = packed._packed
        # once packed it stays packed at every size: the plain weight's pages were given back
        torch.testing.assert_close(packed(large), stock(large), rtol=1e-5, atol=1e-5)
        assert packed._packed is kept
        if packs_dtype(torch.bfloat16):
            packed_bf16 = copy.deepcopy(stock).bfloat16()
            prepack_convolutions(packed_bf16)
            packed_bf16(large.bfloat16())
            assert packed_bf16._packed is not None
