"""The VAE's ResNet blocks, computing their SiLUs and additions in place, give the stock block's
result bit for bit, leave their input alone, and take the stock forward for what they do not
cover (autograd, a time embedding, autocast, resampling, scale_shift, another nonlinearity or
other layers, a broadcasting residual sum, active dropout)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.resnet import ResnetBlock2D

from mimic_core import group_norm, winograd
from mimic_core.resnet_blocks import InPlaceResnetBlock2D, autocast_enabled, in_place_resnet_blocks
from mimic_core.winograd import winograd_convolutions
from tests.support import require_fixture


def _pair(**settings):
    """A stock block and its in-place copy, and the calls of the copy's stock SiLU module (which
    only the stock forward makes)."""
    torch.manual_seed(0)
    settings = {"in_channels": 8, "out_channels": 8, "temb_channels": None, "groups": 4, **settings}
    stock = ResnetBlock2D(**settings).eval()
    for parameter in stock.parameters():  # diffusers zero-initialises nothing here, but make every weight count
        torch.nn.init.normal_(parameter, 0, 0.3)
    in_place = copy.deepcopy(stock)
    assert in_place_resnet_blocks(in_place) == 1
    stock_calls = []
    in_place.nonlinearity.register_forward_hook(lambda *args: stock_calls.append(1))
    return stock, in_place, stock_calls


@pytest.mark.parametrize("settings", [{}, {"time_embedding_norm": "group"}, {"out_channels": 12},
                                      {"output_scale_factor": 2.0}],
                         ids=["the VAE encoder's", "the VAE decoder's", "with a 1x1 shortcut", "scaled"])
@pytest.mark.parametrize("grad_mode", [torch.inference_mode, torch.no_grad])
@pytest.mark.parametrize("norm_values", [group_norm.VALUES_AT_A_TIME, 100], ids=["whole", "a group at a time"])
def test_in_place_block_is_the_stock_block_bit_for_bit(settings, grad_mode, norm_values, monkeypatch):
    monkeypatch.setattr(group_norm, "VALUES_AT_A_TIME", norm_values)
    stock, in_place, stock_calls = _pair(**settings)
    norm2_calls = []  # its module runs only where the second GroupNorm does not write in place
    in_place.norm2.register_forward_hook(lambda *args: norm2_calls.append(1))
    x = torch.randn(2, 8, 9, 7)
    before = x.clone()
    with grad_mode():
        ours = in_place(x, None)
        theirs = stock(x, None)
    assert torch.equal(ours, theirs)
    assert torch.equal(x, before), "the block's input was written"
    assert stock_calls == [] and norm2_calls == []
    assert in_place.state_dict().keys() == stock.state_dict().keys()


@pytest.mark.parametrize("settings", [{"up": True}, {"down": True}, {"temb_channels": 16},
                                      {"time_embedding_norm": "scale_shift", "temb_channels": 16},
                                      {"non_linearity": "mish"}])
def test_blocks_and_calls_the_in_place_steps_do_not_cover_take_the_stock_forward(settings):
    stock, in_place, stock_calls = _pair(**settings)
    x = torch.randn(1, 8, 8, 8)
    temb = torch.randn(1, 16) if settings.get("temb_channels") else None
    with torch.inference_mode():
        assert torch.equal(in_place(x, temb), stock(x, temb))
    assert stock_calls


@pytest.mark.parametrize("settings, error", [({"temb_channels": 16}, TypeError),
                                             ({"time_embedding_norm": "scale_shift"}, ValueError)])
def test_a_block_that_needs_a_time_embedding_fails_without_one_as_the_stock_block_does(settings, error):
    stock, in_place, _ = _pair(**settings)
    x = torch.randn(1, 8, 8, 8)
    with torch.inference_mode():
        for block in (stock, in_place):
            with pytest.raises(error):
                block(x, None)


def test_a_time_embedding_given_to_a_block_without_a_projection_takes_the_stock_forward():
    """The stock block adds such an embedding as it is; the in-place steps have no place for it."""
    stock, in_place, stock_calls = _pair()
    x, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 1, 1)
    with torch.inference_mode():
        assert torch.equal(in_place(x, temb), stock(x, temb))
    assert stock_calls


@pytest.mark.parametrize("layer", ["norm1", "conv1"])
def test_a_layer_that_may_return_its_input_takes_the_stock_forward_and_keeps_the_input(layer):
    stock, in_place, stock_calls = _pair()
    for block in (stock, in_place):
        setattr(block, layer, torch.nn.Identity())
    x = torch.randn(1, 8, 8, 8)
    before = x.clone()
    with torch.inference_mode():
        assert torch.equal(in_place(x, None), stock(x, None))
    assert torch.equal(x, before) and stock_calls


def test_a_residual_sum_that_would_broadcast_takes_the_stock_forward():
    stock, in_place, stock_calls = _pair(in_channels=1, out_channels=8, groups=1, use_in_shortcut=False)
    x = torch.randn(1, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(in_place(x, None), stock(x, None))
    assert stock_calls


def test_autocast_is_read_on_torch_releases_before_2_4(monkeypatch):
    """Before PyTorch 2.4 ``torch.is_autocast_enabled`` took no device type (CUDA's alone) and the
    CPU had its own function."""
    by_device = torch.is_autocast_enabled

    def before_2_4(*args):
        if args:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments but 1 was given")
        return by_device("cuda")

    def read_as_before_2_4() -> bool:
        # torch.autocast itself reads the new function, so it is patched only while the engine reads
        with monkeypatch.context() as patch:
            patch.setattr(torch, "is_autocast_enabled", before_2_4)
            patch.setattr(torch, "is_autocast_cpu_enabled", lambda: by_device("cpu"))
            return autocast_enabled("cpu")

    assert read_as_before_2_4() is False
    with torch.autocast("cpu", torch.bfloat16):
        assert read_as_before_2_4() is True


def test_autocast_takes_the_stock_forward_and_its_dtype():
    stock, in_place, stock_calls = _pair()
    x = torch.randn(1, 8, 8, 8)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        ours, theirs = in_place(x, None), stock(x, None)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    assert stock_calls


def test_autograd_and_active_dropout_take_the_stock_forward():
    stock, in_place, stock_calls = _pair(dropout=0.5)
    x = torch.randn(2, 8, 8, 8)
    in_place.eval()
    stock(x, None).square().sum().backward()
    in_place(x, None).square().sum().backward()
    assert len(stock_calls) == 2
    for ours, theirs in zip(in_place.parameters(), stock.parameters()):
        assert torch.equal(ours.grad, theirs.grad)
    in_place.train()
    with torch.no_grad():
        in_place(x, None)
    assert len(stock_calls) == 4
    in_place.eval().requires_grad_(False)
    stock.requires_grad_(False)
    x.requires_grad_(True)
    in_place(x, None).square().sum().backward()
    assert len(stock_calls) == 6, "an input that records autograd takes the stock forward"


@pytest.mark.parametrize("settings", [{}, {"out_channels": 12}], ids=["same channels", "with a 1x1 shortcut"])
def test_winograd_convolutions_of_an_in_place_block_write_over_their_inputs(monkeypatch, settings):
    """In a block whose convolutions run by Winograd's algorithm, each convolution with as many output
    as input channels writes over the GroupNorm's tensor it reads; the result is the stock block's."""
    stock, in_place, _ = _pair(**settings)
    monkeypatch.setattr(winograd, "winograd_gains", lambda *size: True)
    for block in (stock, in_place):
        winograd_convolutions(block)
    in_place_calls = []
    convolution = winograd.winograd_conv2d

    def recorded(*args, in_place=False):
        in_place_calls.append(in_place)
        return convolution(*args, in_place=in_place)

    x = torch.randn(2, 8, 12, 8)
    before = x.clone()
    with torch.inference_mode():
        theirs = stock(x, None)
        monkeypatch.setattr(winograd, "winograd_conv2d", recorded)
        ours = in_place(x, None)
    assert torch.equal(ours, theirs) and torch.equal(x, before)
    # conv1 maps 8 channels to out_channels, conv2 out_channels to out_channels
    assert in_place_calls == [stock.conv1.in_channels == stock.conv1.out_channels, True]


def test_the_fixture_vae_encodes_and_decodes_bit_for_bit_with_in_place_blocks():
    fixture = require_fixture()
    stock = AutoencoderKL.from_config(json.loads((fixture / "vae_config.json").read_text())).eval()
    ours = copy.deepcopy(stock)
    blocks = [m for m in ours.modules() if isinstance(m, ResnetBlock2D)]
    assert in_place_resnet_blocks(ours) == len(blocks) > 0
    assert all(type(m) is InPlaceResnetBlock2D for m in blocks)
    stock_calls = []
    for block in blocks:  # only the stock forward calls the SiLU module
        block.nonlinearity.register_forward_hook(lambda *args: stock_calls.append(1))
    torch.manual_seed(1)
    pixels, latents = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, stock.config.latent_channels, 8, 8)
    with torch.inference_mode():
        assert torch.equal(ours.encode(pixels).latent_dist.mean, stock.encode(pixels).latent_dist.mean)
        assert torch.equal(ours.decode(latents).sample, stock.decode(latents).sample)
    assert stock_calls == [], "a block of the VAE took the stock forward"
