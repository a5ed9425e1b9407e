"""Winograd's F(4x4, 3x3) convolution (mimic_core.winograd): the same function as PyTorch's 3x3
convolution within its rounding, where the layers use it, and the golden fixture's parity with every
eligible convolution of the tiny models computed by it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_core import upsampling, winograd
from mimic_core.edit_options import SamplingOptions
from mimic_core.pipeline import EncodedReference
from mimic_core.prepacked import PrepackedConv2d, prepack_convolutions
from mimic_core.winograd import (PrepackedWinogradConv2d, WinogradConv2d, winograd_conv2d, winograd_convolutions,
                                 winograd_gains, winograd_upsampled_conv2d)

from tests.support import as_image_tensor

RELATIVE_ERROR = 1e-5
"""F(4x4, 3x3) in float32 stays within 3-5e-6 of the output's largest value (direct: 3e-7; with the
usual points 0, ±1, ±2 about 9e-6)."""


def _relative_error(actual: torch.Tensor, input, weight, bias) -> float:
    exact = F.conv2d(input.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    return ((actual.double() - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("batch, in_channels, out_channels, height, width, bias", [
    (1, 8, 16, 16, 16, True),
    (2, 24, 8, 13, 22, True),  # sizes that are not multiples of the 4x4 output block
    (3, 5, 7, 1, 9, False),
    (1, 64, 64, 64, 48, False),
])
def test_winograd_convolution_is_the_3x3_convolution(batch, in_channels, out_channels, height, width, bias):
    generator = torch.Generator().manual_seed(height * width + in_channels)
    input = torch.randn(batch, in_channels, height, width, generator=generator)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) / (9 * in_channels) ** 0.5
    bias = torch.randn(out_channels, generator=generator) if bias else None
    output = winograd_conv2d(input, weight, bias)
    assert output.shape == (batch, out_channels, height, width) and output.is_contiguous()
    assert _relative_error(output, input, weight, bias) < RELATIVE_ERROR


def _upsampled_relative_error(actual: torch.Tensor, input, weight, bias) -> float:
    return _relative_error(actual, F.interpolate(input.double(), scale_factor=2.0, mode="nearest"), weight, bias)


@pytest.mark.parametrize("batch, in_channels, out_channels, height, width, bias", [
    (1, 8, 16, 16, 16, True),
    (2, 24, 8, 13, 22, True),  # output sizes that are not multiples of the phases' 8x8 blocks
    (3, 5, 7, 1, 9, False),
    (1, 64, 32, 32, 20, True),
])
def test_winograd_upsampled_convolution_is_the_convolution_of_the_nearest_upsampling(
        batch, in_channels, out_channels, height, width, bias):
    generator = torch.Generator().manual_seed(height * width + out_channels)
    input = torch.randn(batch, in_channels, height, width, generator=generator)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) / (9 * in_channels) ** 0.5
    bias = torch.randn(out_channels, generator=generator) if bias else None
    output = winograd_upsampled_conv2d(input, weight, bias)
    assert output.shape == (batch, out_channels, 2 * height, 2 * width) and output.is_contiguous()
    assert _upsampled_relative_error(output, input, weight, bias) < RELATIVE_ERROR


@pytest.mark.parametrize("upsampled", [False, True])
def test_slices_of_rows_give_the_whole_image_result(monkeypatch, upsampled):
    """Large images are computed a slice of block rows at a time; the slices tile the output exactly."""
    convolution, error = ((winograd_upsampled_conv2d, _upsampled_relative_error) if upsampled
                          else (winograd_conv2d, _relative_error))
    generator = torch.Generator().manual_seed(3)
    input = torch.randn(2, 16, 37, 29, generator=generator)
    weight = torch.randn(12, 16, 3, 3, generator=generator)
    bias = torch.randn(12, generator=generator)
    whole = convolution(input, weight, bias)
    monkeypatch.setattr(winograd, "BLOCK_VALUES", 36 * 16 * 2 * 8 * 3)  # three rows of blocks a slice
    sliced = convolution(input, weight, bias)
    assert torch.allclose(sliced, whole, rtol=0, atol=1e-6)
    assert error(sliced, input, weight, bias) < RELATIVE_ERROR


def _inference_tensor(*shape: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.randn(*shape)


@pytest.mark.parametrize("batch, height, width, bias, rows_a_slice", [
    (1, 36, 28, True, 2),  # slices of two rows of blocks: each slice's output covers the next one's top row
    (2, 20, 44, False, 3),
    (1, 16, 16, True, None),  # one slice
])
def test_a_convolution_in_place_writes_the_result_over_its_input(monkeypatch, batch, height, width, bias, rows_a_slice):
    generator = torch.Generator().manual_seed(height + width)
    input = torch.randn(batch, 12, height, width, generator=generator)
    weight = torch.randn(12, 12, 3, 3, generator=generator) / 36 ** 0.5
    bias = torch.randn(12, generator=generator) if bias else None
    if rows_a_slice:
        monkeypatch.setattr(winograd, "BLOCK_VALUES", 36 * 12 * batch * (width // 4) * rows_a_slice)
    expected = winograd_conv2d(input, weight, bias)
    assert winograd.convolves_in_place(input, weight)
    output = winograd_conv2d(input, weight, bias, in_place=True)
    assert output is input
    assert torch.equal(output, expected)


@pytest.mark.parametrize("input, weight", [
    (torch.randn(1, 8, 16, 16), torch.randn(4, 8, 3, 3)),  # fewer output channels: another shape
    (torch.randn(1, 8, 18, 16), torch.randn(8, 8, 3, 3)),  # a side that is not whole blocks
    (torch.randn(1, 16, 16, 8).permute(0, 3, 1, 2), torch.randn(8, 8, 3, 3)),  # not contiguous
    (torch.zeros(0, 8, 16, 16), torch.randn(8, 8, 3, 3)),
    (_inference_tensor(1, 8, 16, 16), torch.randn(8, 8, 3, 3)),  # made in inference mode, written outside it
], ids=["channels", "side", "layout", "empty", "inference tensor"])
def test_a_convolution_refuses_to_write_over_an_input_it_cannot_replace(input, weight):
    before = input.clone()
    assert not winograd.convolves_in_place(input, weight)
    with pytest.raises(ValueError, match="in place"):
        winograd_conv2d(input, weight, None, in_place=True)
    assert torch.equal(input, before)


def test_a_layer_writes_over_its_input_only_where_winograd_serves_it():
    torch.manual_seed(7)
    layer = nn.Conv2d(64, 64, 3, padding=1)
    winograd_convolutions(layer)
    large, small = torch.randn(1, 64, 32, 32), torch.randn(1, 64, 16, 16)  # small: below MIN_SIDE, stock
    with torch.inference_mode():
        expected_large, expected_small = layer(large), layer(small)
        small_before = small.clone()
        assert layer.forward_in_place(large) is large and torch.equal(large, expected_large)
        output = layer.forward_in_place(small)
    assert output is not small and torch.equal(small, small_before) and torch.equal(output, expected_small)


def test_kept_buffers_do_not_carry_one_call_into_another():
    generator = torch.Generator().manual_seed(5)
    small, large = torch.randn(1, 8, 12, 12, generator=generator), torch.randn(2, 24, 40, 36, generator=generator)
    small_weight, large_weight = torch.randn(4, 8, 3, 3, generator=generator), torch.randn(16, 24, 3, 3, generator=generator)
    first = winograd_conv2d(small, small_weight, None).clone()
    winograd_conv2d(large, large_weight, None)
    again = winograd_conv2d(small, small_weight, None)
    assert torch.equal(again, first)
    assert all(again.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
               for buffer in winograd._workspace.buffers.values())
    assert winograd._workspace.buffers
    winograd.release_workspace()
    assert not winograd._workspace.buffers
    assert torch.equal(winograd_conv2d(small, small_weight, None), first)


def test_buffers_made_in_inference_mode_serve_outside_it():
    """ComfyUI runs in inference mode, tests and other hosts under no_grad or plain; one thread's
    kept buffers serve them all."""
    winograd.release_workspace()
    generator = torch.Generator().manual_seed(6)
    input, weight = torch.randn(1, 8, 16, 16, generator=generator), torch.randn(8, 8, 3, 3, generator=generator)
    with torch.inference_mode():
        in_inference = winograd_conv2d(input, weight, None)
    with torch.no_grad():
        assert torch.equal(winograd_conv2d(input, weight, None), in_inference)
    assert torch.equal(winograd_conv2d(input, weight, None), in_inference)


def test_the_measured_sizes_choose_winograd():
    assert winograd_gains(320, 320, 64, 64) and winograd_gains(1280, 640, 32, 32) and winograd_gains(640, 640, 32, 32)
    assert winograd_gains(512, 512, 256, 256) and winograd_gains(128, 128, 512, 512)
    assert not winograd_gains(1280, 1280, 16, 16)  # thin products: the kernel's transform costs more
    assert not winograd_gains(1280, 1280, 8, 8)
    assert not winograd_gains(3, 128, 512, 512) and not winograd_gains(128, 3, 512, 512)


def test_an_empty_batch_gives_an_empty_output():
    output = winograd_conv2d(torch.zeros(0, 8, 16, 16), torch.randn(4, 8, 3, 3), torch.randn(4))
    assert output.shape == (0, 4, 16, 16)
    upsampled = winograd_upsampled_conv2d(torch.zeros(0, 8, 16, 12), torch.randn(4, 8, 3, 3), torch.randn(4))
    assert upsampled.shape == (0, 4, 32, 24)


def test_layers_take_winograd_only_where_it_is_their_function_and_gains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1, stride=2),
                          nn.Conv2d(64, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=2), nn.Conv2d(64, 64, 3),
                          nn.Conv2d(64, 64, 3, padding=2, dilation=2), nn.Conv2d(64, 64, 3, padding="same"),
                          nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    packed = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1))
    prepack_convolutions(packed)
    assert winograd_convolutions(model) == 1 and winograd_convolutions(packed) == 1
    assert [type(layer) for layer in model] == [WinogradConv2d] + [nn.Conv2d] * 7
    assert type(packed[0]) is PrepackedWinogradConv2d and isinstance(packed[0], PrepackedConv2d)

    layer = model[0]
    large, small = torch.randn(1, 64, 32, 40), torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        assert torch.equal(layer(large), winograd_conv2d(large, layer.weight, layer.bias))
        assert torch.equal(layer(small), F.conv2d(small, layer.weight, layer.bias, padding=1))
        assert torch.equal(packed[0](large), winograd_conv2d(large, packed[0].weight, packed[0].bias))
        assert torch.allclose(packed[0](small), F.conv2d(small, packed[0].weight, packed[0].bias, padding=1),
                              rtol=0, atol=1e-5)
        wide = copy.deepcopy(layer).double()
        assert torch.equal(wide(large.double()), F.conv2d(large.double(), wide.weight, wide.bias, padding=1))
        # a layer built as WinogradConv2d checks its own shape: reflect padding is not Winograd's function
        reflecting = WinogradConv2d(64, 64, 3, padding=1, padding_mode="reflect")
        stock = nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect")
        stock.load_state_dict(reflecting.state_dict())
        assert torch.equal(reflecting(large), stock(large))
    # autograd records the stock convolution, whose gradients it knows
    large.requires_grad_(True)
    out = layer(large)
    assert torch.equal(out, F.conv2d(large, layer.weight, layer.bias, padding=1))
    out.sum().backward()
    assert large.grad is not None and layer.weight.grad is not None


@pytest.fixture
def every_convolution_by_winograd(monkeypatch, tiny_models):
    """The tiny models' every eligible 3x3 convolution computed by Winograd (the fixture's channels
    are far below the sizes where it gains), counting the calls."""
    calls = []

    def counted(convolution):
        def call(*args, **kwargs):
            calls.append((convolution.__name__, args[0].shape))
            return convolution(*args, **kwargs)
        return call

    monkeypatch.setattr(winograd, "winograd_gains", lambda *size: True)
    monkeypatch.setattr(upsampling, "MIN_INPUT_SIDE", 1)
    for convolution in (winograd_conv2d, winograd_upsampled_conv2d):
        monkeypatch.setattr(winograd, convolution.__name__, counted(convolution))
    return calls


def _max_error(actual, expected) -> float:
    return (actual.double() - expected.double()).abs().max().item()


@pytest.mark.parametrize("case", ["on", "off"])
def test_golden_denoising_loop_and_decoding_hold_with_winograd(every_convolution_by_winograd, tiny_pipeline,
                                                               tiny_models, golden, case):
    g, expected = golden["inputs"], golden[case]
    encoded = EncodedReference([], g["image_prompt_embeds_cond"], g["image_prompt_embeds_uncond"])
    with torch.no_grad():
        final = tiny_pipeline._denoise(
            g["initial_noise"], g["reference_latents"], g["masked_image_latents"], g["mask_latent"],
            expected["depth_feature"], encoded, SamplingOptions(steps=4, guidance=5.0), lambda *progress: None)
        unet_calls = len(every_convolution_by_winograd)
        assert not winograd._workspace.buffers  # the loop gives its kept buffers back at its end
        decoded = tiny_models.vae.decode(golden["on"]["final_latents"] / 0.18215).sample
    assert unet_calls > 0 and len(every_convolution_by_winograd) > unet_calls
    decoder_calls = every_convolution_by_winograd[unet_calls:]
    # the tiny VAE's three upsamplers convolve their input as it is, not its upsampled copy
    assert [shape[-1] for name, shape in decoder_calls if name == "winograd_upsampled_conv2d"] == [64, 128, 256]
    assert _max_error(final, expected["final_latents"]) <= 1e-4
    assert _max_error(decoded, golden["on"]["decoded"]) <= 1e-4


def test_golden_vae_encodings_hold_with_winograd(every_convolution_by_winograd, tiny_pipeline, golden,
                                                fixture_images):
    """The VAE encoder is the stage most sensitive to rounding (the channels-last layout moved it 4e-3)."""
    g = golden["inputs"]
    encoded = tiny_pipeline.encode_reference(as_image_tensor(fixture_images["reference"]))
    mean, _ = tiny_pipeline._posterior([g["collage_512_uint8"].numpy().copy()], 512)
    assert every_convolution_by_winograd
    assert _max_error(encoded.posteriors[512][0] * 0.18215, g["reference_latents"]) <= 1e-4
    assert _max_error(mean * 0.18215, g["masked_image_latents"]) <= 1e-4


def test_golden_edit_from_the_pngs_holds_with_winograd(every_convolution_by_winograd, tiny_pipeline, golden,
                                                      fixture_images):
    with torch.no_grad():
        result = tiny_pipeline.edit(
            as_image_tensor(fixture_images["source"]), torch.from_numpy(fixture_images["mask"].astype(np.float32)),
            as_image_tensor(fixture_images["reference"]), keep_shape=True, steps=4, guidance=5.0, seed=1)
    assert every_convolution_by_winograd
    assert _max_error(result.latents, golden["on"]["final_latents"]) <= 1e-3
    difference = np.abs(np.asarray(result.square[0], dtype=np.int64)
                        - golden["on"]["output_512_uint8"].numpy().astype(np.int64))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001
    assert not winograd._workspace.buffers  # an edit keeps none of its buffers after it
