"""Feed-forwards computed a block of rows at a time compute the stock function, and step aside
wherever blocks would change it (autograd, active dropout) or gain nothing (one block's rows)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention import FeedForward

from mimic_core.feed_forward import CHUNK_ROWS, RowChunkedFeedForward, chunk_feed_forwards


def _pair(bias: bool = True, dropout: float = 0.0):
    torch.manual_seed(0)
    stock = FeedForward(16, activation_fn="geglu", bias=bias, dropout=dropout).eval()
    chunked = copy.deepcopy(stock)
    assert chunk_feed_forwards(chunked) == 1
    projections = []
    chunked.net[0].proj.register_forward_hook(lambda module, args, output: projections.append(args[0].shape[0]))
    return stock, chunked, projections


@pytest.mark.parametrize("shape", [(2, CHUNK_ROWS + 300, 16), (1, 3 * CHUNK_ROWS, 16), (3, CHUNK_ROWS, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_blocks_of_rows_compute_the_stock_feed_forward(shape, bias):
    stock, chunked, projections = _pair(bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        torch.testing.assert_close(chunked(x), stock(x), rtol=1e-6, atol=1e-6)
    rows = shape[0] * shape[1]
    assert projections == [min(CHUNK_ROWS, rows - start) for start in range(0, rows, CHUNK_ROWS)]
    assert chunked.state_dict().keys() == stock.state_dict().keys()


def test_one_block_of_rows_takes_the_stock_forward():
    stock, chunked, projections = _pair()
    x = torch.randn(1, CHUNK_ROWS, 16)
    with torch.no_grad():
        assert torch.equal(chunked(x), stock(x))
    assert projections == [1]  # the stock forward projects the 3-D batch in one call


def test_autograd_takes_the_stock_forward_and_its_gradients():
    stock, chunked, projections = _pair()
    x = torch.randn(2, CHUNK_ROWS, 16)
    stock(x).square().sum().backward()
    chunked(x).square().sum().backward()
    assert projections == [2]
    for ours, theirs in zip(chunked.parameters(), stock.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_active_dropout_takes_the_stock_forward():
    _, chunked, projections = _pair(dropout=0.5)
    chunked.train()
    with torch.no_grad():
        chunked(torch.randn(2, CHUNK_ROWS, 16))
    assert projections == [2]


def test_every_feed_forward_of_the_engine_u_nets_is_chunked(tiny_models):
    """As loaded, with their linear layers packed too, every feed-forward runs in blocks of rows and
    computes the stock function (the packed output layer once kept it on the stock forward)."""
    for unet in (tiny_models.unet, tiny_models.referencenet):
        layers = [m for m in unet.modules() if isinstance(m, FeedForward)]
        assert layers and all(type(m) is RowChunkedFeedForward for m in layers)
        layer = layers[0]
        stock = FeedForward(layer.net[0].proj.in_features, activation_fn="geglu", inner_dim=layer.net[2].in_features)
        stock.load_state_dict(layer.state_dict())
        projections = []
        hook = layer.net[0].proj.register_forward_hook(lambda module, args, output: projections.append(args[0].shape[0]))
        x = torch.randn(2, CHUNK_ROWS, layer.net[0].proj.in_features)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), stock.eval()(x), rtol=1e-5, atol=1e-5)
        hook.remove()
        assert projections == [CHUNK_ROWS, CHUNK_ROWS]
