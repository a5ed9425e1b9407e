"""Reusing the imitative U-Net's deep features (fast mode): the shallow pass computes the stock
forward pass's function when its kept features are current, deep blocks are skipped where they
should be, and the result stays within a stated deviation of sampling without reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from mimic_core.attention import install_reference_attention
from mimic_core.deep_cache import DeepFeatureCache
from mimic_core.errors import InputError, MimicBrushError

DEEP_REUSE_BOUND = 2.0
"""uint8 mean abs deviation of the fixture's 512² output, deep features every 3 steps vs every step,
12 DDIM steps; measured 0.96 (random weights; on the demo model, which has learnt, see bench/fast_mode_quality.py)."""


def test_a_shallow_pass_on_current_deep_features_is_the_whole_forward_pass(unets):
    imitative, reference = unets
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 13, 32, 32, generator=generator)
    context = torch.randn(2, 7, 32, generator=generator)
    t = torch.tensor(700)
    with torch.no_grad(), install_reference_attention(reference, imitative) as handle:
        handle.record(torch.randn(1, 4, 32, 32, generator=generator), t, context[-1:])
        handle.bank.conditional_rows = 1
        cache = DeepFeatureCache(imitative)
        whole = cache.full(sample, t, context)
        assert torch.equal(whole, imitative(sample, t, encoder_hidden_states=context).sample)
        shallow = cache.shallow(sample, t, context)
        torch.testing.assert_close(shallow, whole, rtol=1e-6, atol=1e-6)
        later = cache.shallow(sample, torch.tensor(650), context)  # another step: an approximation, not equal
        assert not torch.allclose(later, whole, atol=1e-4)
        with pytest.raises(MimicBrushError, match="same batch"):
            cache.shallow(sample[:1], t, context[:1])


def test_other_unet_layouts_are_refused(fixture_dir):
    config = json.loads((fixture_dir / "unet_config.json").read_text())
    with torch.device("meta"):
        centred = UNet2DConditionModel.from_config(dict(config, center_input_sample=True))
    with pytest.raises(MimicBrushError, match="deep_features_every to 1"):
        DeepFeatureCache(centred)


def test_deep_blocks_run_only_on_full_steps(tiny_pipeline, inputs):
    mid_block_runs = []
    hook = tiny_pipeline.models.unet.mid_block.register_forward_hook(lambda *args: mid_block_runs.append(1))
    try:
        tiny_pipeline.edit(*inputs, steps=7, seed=2, deep_features_every=3)
        assert len(mid_block_runs) == 3  # steps 1, 4 and 7
        mid_block_runs.clear()
        tiny_pipeline.edit(*inputs, steps=6, seed=2, deep_features_every=2, guided_fraction=0.5)
        assert len(mid_block_runs) == 4  # steps 1, 3, 5 and 4: the first unguided step has no kept features
    finally:
        hook.remove()
    with pytest.raises(InputError, match="deep_features_every must be at least 1"):
        tiny_pipeline.edit(*inputs, steps=1, deep_features_every=0)


def test_deep_feature_reuse_stays_within_its_stated_deviation_on_the_fixture(tiny_pipeline, inputs):
    exact = tiny_pipeline.edit(*inputs, steps=12, seed=9, keep_shape=True)
    reused = tiny_pipeline.edit(*inputs, steps=12, seed=9, keep_shape=True, deep_features_every=3)
    deviation = float(np.abs(reused.square.astype(np.float64) - exact.square.astype(np.float64)).mean())
    print(f"deep features every 3 steps: mean abs deviation {deviation:.3f}")
    assert 0 < deviation < DEEP_REUSE_BOUND
    assert torch.equal(tiny_pipeline.edit(*inputs, steps=3, seed=9, deep_features_every=1).latents,
                       tiny_pipeline.edit(*inputs, steps=3, seed=9).latents)
