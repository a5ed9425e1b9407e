"""The VAE decoder's upsamplers (mimic_core.upsampling): the stock layer's function, convolving the
input as it is where that serves, the stock forward everywhere else."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.upsampling import Upsample2D

from mimic_core.upsampling import MIN_INPUT_SIDE, WinogradUpsample2D, winograd_upsamplers
from mimic_core.winograd import WinogradConv2d, winograd_convolutions, winograd_upsampled_conv2d


def _pair(channels: int = 64, **options) -> tuple[Upsample2D, WinogradUpsample2D]:
    """A stock upsampler and a converted copy with the same weights, the converted one's convolution
    by Winograd as the loaded VAE's is."""
    torch.manual_seed(0)
    stock = Upsample2D(channels, use_conv=True, **options)
    converted = Upsample2D(channels, use_conv=True, **options)
    converted.load_state_dict(stock.state_dict())
    winograd_convolutions(converted)
    assert winograd_upsamplers(converted) == 1
    return stock, converted


def test_a_large_input_is_convolved_as_it_is():
    stock, converted = _pair()
    input = torch.randn(1, 64, MIN_INPUT_SIDE, MIN_INPUT_SIDE + 8)
    with torch.no_grad():
        output = converted(input)
        expected = stock(input)
        assert torch.equal(output, winograd_upsampled_conv2d(input, converted.conv.weight, converted.conv.bias))
    assert output.shape == expected.shape == (1, 64, 2 * MIN_INPUT_SIDE, 2 * MIN_INPUT_SIDE + 16)
    assert ((output - expected).abs().max() / expected.abs().max()).item() < 1e-5


@pytest.mark.parametrize("case", ["small input", "output size", "double", "autograd"])
def test_other_calls_take_the_stock_forward(case):
    stock, converted = _pair()
    side = MIN_INPUT_SIDE // 2 if case == "small input" else MIN_INPUT_SIDE
    input = torch.randn(1, 64, side, side)
    kwargs = {"output_size": (2 * side, 2 * side)} if case == "output size" else {}
    if case == "double":
        stock, converted, input = stock.double(), converted.double(), input.double()
    if case == "autograd":
        input.requires_grad_(True)
        output = converted(input)
        output.sum().backward()
        assert input.grad is not None and converted.conv.weight.grad is not None
        with torch.no_grad():  # under autograd the convolution too is PyTorch's, bit for bit
            assert torch.equal(output, stock(input))
        return
    with torch.no_grad():  # the stock forward, which upsamples and then calls the (Winograd) convolution
        assert torch.equal(converted(input, **kwargs), Upsample2D.forward(converted, input, **kwargs))


def test_upsamplers_that_are_not_a_plain_convolution_keep_their_function():
    torch.manual_seed(1)
    input = torch.randn(1, 64, MIN_INPUT_SIDE, MIN_INPUT_SIDE)
    for options in ({"use_conv": False}, {"use_conv_transpose": True}, {"use_conv": True, "kernel_size": 1, "padding": 0}):
        stock = Upsample2D(64, **options)
        converted = Upsample2D(64, **options)
        converted.load_state_dict(stock.state_dict())
        winograd_upsamplers(converted)
        with torch.no_grad():
            assert torch.equal(converted(input), stock(input))


def test_the_loaded_vae_decoder_has_its_upsamplers_converted(tiny_models):
    upsamplers = [layer for layer in tiny_models.vae.modules() if isinstance(layer, Upsample2D)]
    assert len(upsamplers) == 3 and all(type(layer) is WinogradUpsample2D for layer in upsamplers)
    assert all(type(layer.conv) is WinogradConv2d for layer in upsamplers)
    # the U-Nets' upsamplers (inputs of at most 32x32) keep the stock one
    assert not any(isinstance(layer, WinogradUpsample2D)
                   for unet in (tiny_models.unet, tiny_models.referencenet) for layer in unet.modules())
