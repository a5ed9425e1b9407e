"""The options beyond the authors': several references, a reference mask, reference strength and
partial denoise. Each is exact at its neutral value (bit-identical to an edit without it), and
each does what it says at the level where it acts: attention, the recorded tokens, the schedule.
What they do to an edit's quality is measured on the demo model (``bench/edit_options_quality.py``,
checked on fewer pairs in ``tests/test_demo_model.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from mimic_core import preprocess as pre
from mimic_core.attention import ReferenceBank, ReferenceReadProcessor, joined_reference_tokens
from mimic_core.edit_options import OptionError, SamplingOptions
from mimic_core.errors import InputError
from mimic_core.pipeline import EncodedReference

STEPS = 2


# --- attention ---------------------------------------------------------------------------------------

def _attention() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=32, heads=2, dim_head=16).eval()


def _expected(attn: Attention, hidden: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """The definition: half plain self-attention, half attention over [x ; r] with log(strength)
    added to the logits of the r keys, for every row (all conditional)."""
    def heads(t):
        return t.view(t.shape[0], t.shape[1], 2, 16).transpose(1, 2)
    query, key, value = (heads(attn.to_q(hidden)), heads(attn.to_k(hidden)), heads(attn.to_v(hidden)))
    ref_key = heads(attn.to_k(reference)).expand(hidden.shape[0], -1, -1, -1)
    ref_value = heads(attn.to_v(reference)).expand(hidden.shape[0], -1, -1, -1)
    keys, values = torch.cat([key, ref_key], 2), torch.cat([value, ref_value], 2)
    logits = query @ keys.transpose(-1, -2) / math.sqrt(16)
    logits[..., key.shape[2]:] += math.log(strength) if strength > 0 else -math.inf
    with_reference = logits.softmax(-1) @ values
    plain = F.scaled_dot_product_attention(query, key, value)
    mixed = (0.5 * (with_reference + plain)).transpose(1, 2).reshape(hidden.shape[0], -1, 32)
    return attn.to_out[1](attn.to_out[0](mixed))


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0, 1.7])
@pytest.mark.parametrize("autograd", [False, True], ids=["log-sum-exp merge", "concatenated keys"])
def test_reference_strength_adds_its_log_to_the_reference_logits(strength, autograd):
    attn = _attention()
    hidden, reference = torch.randn(2, 12, 32), torch.randn(1, 20, 32)
    bank = ReferenceBank()
    bank.features["block"], bank.conditional_rows, bank.reference_strength = reference, 2, strength
    reader = ReferenceReadProcessor(bank, "block")
    with torch.set_grad_enabled(autograd):
        got = reader(attn, hidden.requires_grad_(autograd))
        torch.testing.assert_close(got, _expected(attn, hidden, reference, strength), atol=1e-5, rtol=1e-5)


# --- the recorded reference tokens -------------------------------------------------------------------

def test_several_references_are_joined_into_one_row_of_keys():
    features = torch.randn(3, 16, 8)
    joined = joined_reference_tokens(features, None)
    assert joined.shape == (1, 48, 8)
    assert torch.equal(joined[0, 16:32], features[1])
    single = features[:1]
    assert joined_reference_tokens(single, None) is single


def test_a_reference_mask_keeps_the_tokens_whose_area_it_touches_at_each_level():
    features = torch.randn(2, 16, 8)  # a 4x4 grid per reference
    keep = torch.zeros(2, 1, 8, 8)
    keep[0, :, 0:2, 0:2] = 1  # the first reference's top-left token at 4x4
    keep[1, :, 7, 7] = 1  # one latent pixel of the second's bottom-right token
    joined = joined_reference_tokens(features, keep)
    assert joined.shape == (1, 2, 8)
    assert torch.equal(joined[0, 0], features[0, 0]) and torch.equal(joined[0, 1], features[1, 15])
    coarse = joined_reference_tokens(torch.randn(2, 1, 8), keep)  # 1x1: any touch keeps the token
    assert coarse.shape == (1, 2, 8)
    whole = torch.ones(2, 1, 8, 8)
    assert torch.equal(joined_reference_tokens(features, whole), joined_reference_tokens(features, None))


# --- options ----------------------------------------------------------------------------------------

def test_denoise_runs_the_last_steps_of_the_longer_schedule_comfyui_counts():
    options = SamplingOptions(steps=10, denoise=0.3)
    assert options.schedule_steps == 33  # ComfyUI's int(steps / denoise)
    assert SamplingOptions(steps=10).schedule_steps == 10
    with pytest.raises(OptionError, match="raise denoise to at least 0.05"):
        SamplingOptions(steps=50, denoise=0.04)
    with pytest.raises(OptionError, match="must be above 0"):
        SamplingOptions(denoise=0.0)


# --- whole edits on the fixture's models ----------------------------------------------------------

def test_every_option_at_its_neutral_value_is_bit_identical(tiny_pipeline, inputs):
    source, mask, reference = inputs
    today = tiny_pipeline.edit(source, mask, reference, steps=STEPS, seed=5)
    full_mask = torch.ones(reference.shape[1:3])
    variants = {
        "strength 1, denoise 1": tiny_pipeline.edit(source, mask, reference, steps=STEPS, seed=5,
                                                     reference_strength=1.0, denoise=1.0),
        "a list of one reference": tiny_pipeline.edit(source, mask, [reference], steps=STEPS, seed=5),
        "a full reference mask": tiny_pipeline.edit(source, mask, tiny_pipeline.encode_reference(reference, full_mask),
                                                    steps=STEPS, seed=5),
        "the options as objects": tiny_pipeline.edit(source, mask, reference, sampling=SamplingOptions(
            steps=STEPS, seed=5, working_size=tiny_pipeline.working_size)),
    }
    for name, result in variants.items():
        assert torch.equal(result.latents, today.latents), name
        assert torch.equal(result.images, today.images), name


def test_strength_zero_runs_no_reference_pass_and_keeps_the_embedding(tiny_pipeline, inputs):
    calls = []
    hook = tiny_pipeline.models.referencenet.register_forward_hook(lambda *args: calls.append(1))
    try:
        unweighted = tiny_pipeline.edit(*inputs, steps=STEPS, seed=5, reference_strength=0.0)
    finally:
        hook.remove()
    assert calls == []
    blank = tiny_pipeline.edit(*inputs[:2], tiny_pipeline.no_reference(), steps=STEPS, seed=5)
    assert not torch.equal(unweighted.latents, blank.latents)  # the CLIP embedding still conditions it
    assert not torch.equal(unweighted.latents, tiny_pipeline.edit(*inputs, steps=STEPS, seed=5).latents)


def test_several_references_run_batched_and_join_their_contexts(tiny_pipeline, inputs):
    source, mask, reference = inputs
    batches, contexts = [], []
    models = tiny_pipeline.models
    hooks = [models.referencenet.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0])),
             models.unet.register_forward_pre_hook(lambda m, a, kw: contexts.append(kw["encoder_hidden_states"].shape),
                                                   with_kwargs=True)]
    try:
        two = tiny_pipeline.edit(source, mask, [reference, reference.flip(2)], steps=STEPS, seed=5)
    finally:
        for hook in hooks:
            hook.remove()
    tokens = tiny_pipeline.encode_reference(reference).embeds_cond.shape[1]
    assert batches == [2] * STEPS
    assert all(shape[1] == 2 * tokens for shape in contexts)
    assert not torch.equal(two.latents, tiny_pipeline.edit(source, mask, reference, steps=STEPS, seed=5).latents)


@pytest.mark.parametrize("region", ["whole", "crop_each"])
def test_adding_a_view_keeps_the_seeds_initial_noise_and_the_first_views_latents(tiny_pipeline, inputs, monkeypatch,
                                                                                  region):
    """With one seed, an edit of [A, B] starts each square from the noise of the edit of A alone (and of
    an edit without a reference), with the same collage sample and A's same posterior sample: adding a
    view changes what is imitated, not the starting point. ``crop_each`` edits two regions in turn."""
    source, mask, reference = inputs
    if region == "crop_each":  # two islands
        mask = torch.zeros_like(mask)
        mask[4:20, 4:20] = 1
        mask[-20:-4, -20:-4] = 1
    started = []
    denoise = type(tiny_pipeline)._denoise

    def recording(self, noise, reference_latents, masked_latents, *args, **kwargs):
        started.append((noise, reference_latents, masked_latents))
        return denoise(self, noise, reference_latents, masked_latents, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipeline), "_denoise", recording)
    squares = 2 if region == "crop_each" else 1
    edits = {}
    for name, references in {"alone": [reference], "two views": [reference, reference.flip(2)],
                             "three views": [reference, reference.flip(2), reference],
                             "no reference": tiny_pipeline.no_reference()}.items():
        tiny_pipeline.edit(source, mask, references, steps=1, seed=5, region=region)
        edits[name], started[:] = list(started), []
    assert len(edits["alone"]) == squares
    for name, views in (("two views", 2), ("three views", 3), ("no reference", None)):
        for (noise, alone, masked), (other_noise, together, other_masked) in zip(edits["alone"], edits[name]):
            assert torch.equal(other_noise, noise) and torch.equal(other_masked, masked), name
            if views:
                assert together.shape[0] == views
                # the same posterior sample, up to the rounding of a batched VAE encode
                torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)
    if squares == 2:  # each square draws noise of its own
        assert not torch.equal(edits["alone"][0][0], edits["alone"][1][0])


def test_partial_denoise_starts_from_the_noised_source(tiny_pipeline, inputs):
    source, mask, reference = inputs
    seen = []
    nearly_none = tiny_pipeline.edit(source, mask, reference, steps=STEPS, seed=5, denoise=STEPS / 1000,
                                     callback=lambda step, total, latents: seen.append((step, total)))
    assert seen == [(1, STEPS), (2, STEPS)]
    padded = pre.pad_to_square(pre.image_to_uint8(source), 255)
    source_latents = tiny_pipeline._posterior([padded], tiny_pipeline.working_size)[0] * tiny_pipeline.scaling_factor
    from_noise = tiny_pipeline.edit(source, mask, reference, steps=STEPS, seed=5)
    near = (nearly_none.latents - source_latents).abs().mean()
    far = (from_noise.latents - source_latents).abs().mean()
    assert near < 0.2 * far, (near, far)


def test_reference_masks_are_checked_against_their_images(tiny_pipeline, inputs):
    _, _, reference = inputs
    with pytest.raises(InputError, match="The reference mask is empty"):
        tiny_pipeline.encode_reference(reference, torch.zeros(reference.shape[1:3]))
    with pytest.raises(InputError, match="2 reference masks were given for 1 reference images"):
        tiny_pipeline.encode_reference([reference], [torch.ones(reference.shape[1:3])] * 2)


def test_references_encoded_apart_and_joined_edit_as_if_encoded_together(tiny_pipeline, inputs):
    source, mask, reference = inputs
    side = min(reference.shape[1:3])
    reference = reference[:, :side, :side]  # square: no padding, so a full mask is the same as none
    other = reference.flip(2)
    left_half = torch.zeros(reference.shape[1:3])
    left_half[:, : reference.shape[2] // 2] = 1
    joined = EncodedReference.joined(
        [tiny_pipeline.encode_reference(reference, left_half), tiny_pipeline.encode_reference(other)])
    together = tiny_pipeline.encode_reference([reference, other], [left_half, torch.ones(reference.shape[1:3])])
    assert len(joined.images) == 2 and [m.all() for m in joined.masks] == [False, True]
    torch.testing.assert_close(joined.embeds_cond, together.embeds_cond, atol=1e-5, rtol=1e-5)
    edits = [tiny_pipeline.edit(source, mask, encoded, steps=STEPS, seed=5).latents for encoded in (joined, together)]
    torch.testing.assert_close(*edits, atol=1e-4, rtol=1e-4)
    alone = tiny_pipeline.edit(source, mask, tiny_pipeline.encode_reference(reference, left_half), steps=STEPS, seed=5)
    assert not torch.equal(edits[0], alone.latents)
    with pytest.raises(InputError, match="cannot be joined"):
        EncodedReference.joined([joined, tiny_pipeline.no_reference()])


def _encoded(tokens: int = 5, latent_channels: int | None = 4) -> EncodedReference:
    encoded = EncodedReference([np.full((16, 16, 3), 255, np.uint8)], torch.zeros(1, tokens, 7), torch.zeros(1, tokens, 7))
    if latent_channels is not None:
        encoded.posteriors[64] = (torch.zeros(1, latent_channels, 8, 8), torch.ones(1, latent_channels, 8, 8))
    return encoded


@pytest.mark.parametrize("other", [_encoded(tokens=9), _encoded(latent_channels=8)], ids=["embeddings", "latents"])
def test_references_encoded_by_models_of_different_architectures_are_not_joined(other):
    with pytest.raises(InputError, match="encoded by MimicBrush models of different architectures"):
        EncodedReference.joined([_encoded(), other])


def test_references_of_one_architecture_join_with_or_without_a_shared_working_size():
    assert EncodedReference.joined([_encoded(), _encoded()]).embeds_cond.shape == (2, 5, 7)
    # a reference holding no latents yet (joined from others encoded at different sizes) joins too
    assert EncodedReference.joined([_encoded(), _encoded(latent_channels=None)]).posteriors == {}
