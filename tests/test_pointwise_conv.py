"""The VAE's 1x1 convolutions as matrix products compute the stock convolution within float32
rounding, and take the stock forward for what they do not cover."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_core.pointwise_conv import PointwiseConv2d, is_pointwise, pointwise_convolutions


def _layer(in_channels: int, out_channels: int, bias: bool = True) -> tuple[nn.Conv2d, PointwiseConv2d]:
    torch.manual_seed(0)
    stock = nn.Conv2d(in_channels, out_channels, 1, bias=bias).eval()
    ours = copy.deepcopy(stock)
    assert pointwise_convolutions(ours) == 1 and type(ours) is PointwiseConv2d
    return stock, ours


@pytest.mark.parametrize("batch, in_channels, out_channels, side, bias", [
    (1, 256, 128, 32, True), (2, 64, 96, 17, True), (3, 8, 4, 5, False)],
    ids=["the decoder's shortcut", "batch 2, odd side", "no bias"])
def test_the_product_is_the_convolution(batch, in_channels, out_channels, side, bias):
    stock, ours = _layer(in_channels, out_channels, bias)
    x = torch.randn(batch, in_channels, side, side)
    with torch.inference_mode():
        expected = torch.nn.functional.conv2d(x.double(), stock.weight.double(),
                                              None if stock.bias is None else stock.bias.double())
        result = ours(x)
        stock_result = stock(x)
    assert result.shape == stock_result.shape and result.is_contiguous()
    scale = expected.abs().max().item()
    assert (result.double() - expected).abs().max().item() <= 2e-6 * scale
    assert (stock_result.double() - expected).abs().max().item() <= 2e-6 * scale


def test_calls_it_does_not_cover_take_the_stock_forward(monkeypatch):
    stock, ours = _layer(8, 4)
    calls = []
    original = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    with torch.inference_mode():
        ours(torch.randn(2, 8, 6, 6))
        assert calls == []
        ours(torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last))
        ours.double()(torch.randn(2, 8, 6, 6, dtype=torch.float64))
    assert len(calls) == 2  # channels-last, and float64
    x = torch.randn(1, 8, 3, 3, requires_grad=True)
    _layer(8, 2)[1](x).sum().backward()  # autograd records: the stock forward, whose gradient autograd knows
    assert x.grad is not None and len(calls) == 3


def test_only_plain_pointwise_convolutions_are_taken():
    assert is_pointwise(nn.Conv2d(4, 4, 1))
    assert not is_pointwise(nn.Conv2d(4, 4, 3, padding=1))
    assert not is_pointwise(nn.Conv2d(4, 4, 1, stride=2))
    assert not is_pointwise(nn.Conv2d(4, 4, 1, groups=2))
    assert not is_pointwise(nn.Conv2d(4, 4, 1, padding=1))


def test_an_empty_batch_and_a_wrong_channel_count_get_the_stock_answers():
    stock, ours = _layer(8, 4)
    with torch.inference_mode():
        assert ours(torch.randn(0, 8, 5, 5)).shape == (0, 4, 5, 5)
        with pytest.raises(RuntimeError, match="channels"):
            ours(torch.randn(1, 5, 4, 4))


def test_the_loaded_vae_gets_them_and_the_u_nets_do_not(tiny_models):
    stock_pointwise = [layer for layer in tiny_models.vae.modules()
                       if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1)]
    assert stock_pointwise and all(type(layer) is PointwiseConv2d for layer in stock_pointwise)
    assert not any(isinstance(layer, PointwiseConv2d)
                   for unet in (tiny_models.unet, tiny_models.referencenet) for layer in unet.modules())
