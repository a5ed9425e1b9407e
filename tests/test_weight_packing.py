"""The U-Nets' weights packed side by side before an edit's first step: the layers and inputs a meta
pass finds are those the edit calls, packing them first leaves the edit nothing to pack, and the
edit is the same."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from mimic_core.attention import last_recorded_block
from mimic_core.checkpoint import default_config
from mimic_core.models import load_models
from mimic_core.pipeline import MimicBrushPipeline
from mimic_core import prepacked
from mimic_core.prepacked import (FLOAT32_PACKED_BELOW_SIDE, PackedWeight, PrepackedConv2d, PrepackedLinear,
                                  channels_last_in)
from mimic_core.weight_packing import U_NETS, layer_input_shapes, pack_for_working_size

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this torch build")


def _load(fixture_dir, **options):
    return load_models(fixture_dir / "mimicbrush_tiny.bin", fixture_dir / "vae", fixture_dir / "depth_anything_tiny.pth",
                       config_dir=fixture_dir, **options)


def _packed(models) -> dict[str, torch.Tensor]:
    return {f"{part}.{name}": layer._packed[0] for part in ("unet", "referencenet")
            for name, layer in getattr(models, part).named_modules()
            if isinstance(layer, PackedWeight) and layer._packed is not None}


def _edit(models, working_size):
    torch.manual_seed(0)
    source, reference = torch.rand(1, 96, 80, 3), torch.rand(1, 70, 50, 3)
    mask = torch.zeros(96, 80)
    mask[20:60, 24:64] = 1
    return MimicBrushPipeline(models, working_size=working_size).edit(source, mask, reference, steps=2, seed=3)


# 256: the tiny U-Nets' outermost level is 32x32, where float32 convolutions stay stock; 64: all below
@pytest.mark.parametrize("working_size", [256, 64])
def test_packing_before_the_first_step_is_what_the_layers_would_pack_as_called(fixture_dir, working_size):
    lazy = _load(fixture_dir)
    assert not _packed(lazy)  # loading packs nothing
    lazy.packed_for.update((part, working_size) for part in U_NETS)  # as if packed ahead: each layer packs as called
    lazy_result = _edit(lazy, working_size)
    packed_as_called = _packed(lazy)

    ahead = _load(fixture_dir)
    ahead.pack_for(working_size)
    packed_ahead = _packed(ahead)
    assert packed_ahead.keys() == packed_as_called.keys()
    if working_size == 256:  # some layers do stay stock, so the comparison is not of everything with everything
        convolutions = [name for part in ("unet", "referencenet") for name, layer in getattr(ahead, part).named_modules()
                        if isinstance(layer, PrepackedConv2d)]
        assert 0 < len(set(convolutions) & {name.split(".", 1)[1] for name in packed_ahead}) < len(convolutions)
    result = _edit(ahead, working_size)
    after = _packed(ahead)
    assert after.keys() == packed_ahead.keys()
    assert all(after[name] is packed_ahead[name] for name in after)  # the edit packed nothing again
    torch.testing.assert_close(result.latents, lazy_result.latents, rtol=0, atol=1e-5)


def test_an_edit_packs_ahead_once_per_working_size(fixture_dir):
    models = _load(fixture_dir)
    _edit(models, 64)
    assert models.packed_for == {("unet", 64), ("referencenet", 64)} and _packed(models)
    kept = _packed(models)
    _edit(models, 64)
    assert all(_packed(models)[name] is kept[name] for name in kept)
    models.to(dtype=torch.float32)  # no real move or cast: the packing stays, the record is cleared
    assert models.packed_for == set() and _packed(models).keys() == kept.keys()


def test_an_edit_with_no_reference_packs_the_imitative_u_net_alone(fixture_dir):
    models = _load(fixture_dir)
    torch.manual_seed(0)
    source, mask = torch.rand(1, 96, 80, 3), torch.zeros(96, 80)
    mask[20:60, 24:64] = 1
    pipeline = MimicBrushPipeline(models, working_size=64)
    pipeline.edit(source, mask, pipeline.no_reference(), steps=2, seed=3)
    assert models.packed_for == {("unet", 64)}
    assert _packed(models) and all(name.startswith("unet.") for name in _packed(models))
    imitative = _packed(models)
    _edit(models, 64)  # an edit with a reference then packs the reference U-Net, and the imitative one stays
    assert models.packed_for == {("unet", 64), ("referencenet", 64)}
    assert any(name.startswith("referencenet.") for name in _packed(models))
    assert all(_packed(models)[name] is imitative[name] for name in imitative)


def test_the_meta_pass_sees_the_released_u_nets_as_an_edit_at_512_runs_them():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(default_config("unet"))
        reference = UNet2DConditionModel.from_config(default_config("referencenet"))
    imitative = layer_input_shapes(unet, (2, 13, 64, 64), (2, 257, 768))
    assert imitative["conv_in"] == (2, 13, 64, 64)
    assert imitative["mid_block.resnets.0.conv1"] == (2, 1280, 8, 8)
    assert imitative["up_blocks.1.resnets.0.conv1"] == (2, 2560, 16, 16)
    assert imitative["up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k"] == (2, 257, 768)
    assert imitative["conv_out"] == (2, 320, 64, 64)
    assert {name for name, module in unet.named_modules() if type(module) in (torch.nn.Conv2d, torch.nn.Linear)} \
        == imitative.keys()  # every layer runs; no other module is counted
    # the reference U-Net stops at its last recorded block's self-attention, before its projections
    last = last_recorded_block(reference)
    assert last == "up_blocks.3.attentions.2.transformer_blocks.0"
    referenced = layer_input_shapes(reference, (1, 4, 64, 64), (1, 257, 768), stop_at=last + ".attn1")
    assert referenced["up_blocks.3.attentions.2.proj_in"] == (1, 320, 64, 64)  # SD-1.5: a 1x1 convolution
    assert f"{last}.attn1.to_q" not in referenced and "conv_out" not in referenced
    assert referenced["up_blocks.3.attentions.1.transformer_blocks.0.ff.net.2"] == (1, 4096, 1280)


@pytest.mark.parametrize("side", [16, 17])
def test_the_meta_pass_finds_the_shapes_a_real_forward_gives_each_layer(side):
    """The meta pass lets normalisations pass their input on unchanged; a real forward of a small random
    U-Net (a side of 17 is odd where it is halved and doubled again) gives every layer the input it found."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=side, in_channels=13, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                                norm_num_groups=8, attention_head_dim=8)
    called: dict[str, torch.Size] = {}

    def record(name: str, args: tuple) -> None:  # a pre-hook's result would replace the layer's arguments
        called.setdefault(name, args[0].shape)

    for name, layer in unet.named_modules():
        if type(layer) in (torch.nn.Conv2d, torch.nn.Linear):
            layer.register_forward_pre_hook(lambda layer, args, _name=name: record(_name, args))
    with torch.inference_mode():
        unet(torch.randn(2, 13, side, side), torch.tensor(10), encoder_hidden_states=torch.randn(2, 5, 24))
    assert layer_input_shapes(unet, (2, 13, side, side), (2, 5, 24)) == called
    assert any(type(layer) is torch.nn.GroupNorm for layer in unet.modules())
    assert any(type(layer) is torch.nn.LayerNorm for layer in unet.modules())


def test_a_layer_packs_ahead_only_for_an_input_its_call_would_pack():
    convolution = torch.nn.Conv2d(8, 8, 3, padding=1)
    convolution.__class__ = PrepackedConv2d
    convolution._convert()
    assert not convolution.pack_for((2, 8, FLOAT32_PACKED_BELOW_SIDE, FLOAT32_PACKED_BELOW_SIDE))  # float32 at 32: stock
    assert convolution._packed is None
    assert convolution.pack_for((2, 8, 16, 16))
    packed = convolution._packed[0]
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(convolution(x), torch.nn.functional.conv2d(x, convolution.weight, convolution.bias, padding=1),
                              atol=1e-5)
    assert convolution._packed[0] is packed
    half = torch.nn.Linear(8, 8).half()
    half.__class__ = PrepackedLinear
    half._convert()
    assert not half.pack_for((4, 8)) and half._packed is None  # float16 does not pack


def test_nothing_packs_where_no_layer_would(fixture_dir):
    half = _load(fixture_dir, dtype=torch.float16)
    assert pack_for_working_size(half, 64) == 0 and not _packed(half)
    stock = _load(fixture_dir, inference_layers=False)  # training's layers
    assert pack_for_working_size(stock, 64) == 0


def _packed_convolution(weight: torch.Tensor, shape: tuple[int, ...], staging: torch.Tensor | None) -> PrepackedConv2d:
    convolution = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=1)
    with torch.no_grad():
        convolution.weight.copy_(weight)
        convolution.bias.zero_()
    convolution.__class__ = PrepackedConv2d
    convolution._convert()
    assert convolution.pack_for(shape, staging)
    return convolution


def test_a_convolution_packed_through_the_staging_buffer_is_the_one_packed_without_it():
    torch.manual_seed(0)
    weight, x = torch.randn(40, 24, 3, 3), torch.randn(2, 24, 16, 16)
    staging = torch.empty(weight.nbytes + 64, dtype=torch.uint8)
    staged = channels_last_in(staging, weight)
    assert torch.equal(staged, weight) and staged.is_contiguous(memory_format=torch.channels_last)
    assert staged.data_ptr() == staging.data_ptr()
    plain, through_staging = (_packed_convolution(weight, tuple(x.shape), buffer) for buffer in (None, staging))
    with torch.no_grad():
        expected = plain(x)
        assert torch.equal(through_staging(x), expected)
        staging.fill_(255)  # the packed weight is a copy: the buffer is free for the next layer
        assert torch.equal(through_staging(x), expected)


def test_packing_ahead_stages_each_3x3_convolution_in_a_kept_buffer(fixture_dir, monkeypatch):
    models = _load(fixture_dir)
    staged: list[tuple[int, int]] = []

    def recorded(staging: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        staged.append((staging.nbytes, weight.nbytes))
        return channels_last_in(staging, weight)

    monkeypatch.setattr(prepacked, "channels_last_in", recorded)
    models.pack_for(64)
    packed_3x3 = [layer for part in (models.unet, models.referencenet) for layer in part.modules()
                  if isinstance(layer, PrepackedConv2d) and layer._packed is not None and layer.kernel_size == (3, 3)]
    assert len(staged) == len(packed_3x3) > 0
    assert len({size for size, _ in staged}) == 1 and all(size >= weight for size, weight in staged)
