"""Reference attention: the processors compute the authors' function, and only where they should."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mimic_core.attention import install_reference_attention, reference_block_names


def _inputs(seed: int, rows: int = 2):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(rows, 13, 32, 32, generator=generator)
    context = torch.randn(rows, 7, 32, generator=generator)
    reference = torch.randn(1, 4, 32, 32, generator=generator)
    return sample, context, reference


def _guided_forward(imitative, reference_unet, sample, context, reference_latents, t=torch.tensor(500)):
    with torch.no_grad(), install_reference_attention(reference_unet, imitative) as handle:
        handle.record(reference_latents, t, context[-1:])
        handle.bank.conditional_rows = sample.shape[0] // 2
        return imitative(sample, t, encoder_hidden_states=context).sample


def test_block_names_are_the_mid_and_up_transformer_blocks(unets, golden):
    imitative, _ = unets
    names = reference_block_names(imitative)
    assert names == list(json.loads(_refbank_order(golden)))
    assert all(not name.startswith("down_blocks") for name in names)


def _refbank_order(golden):
    from safetensors import safe_open

    from tests.support import require_fixture
    with safe_open(str(require_fixture() / "golden_refbank_step0.safetensors"), "pt") as handle:
        return json.dumps(json.loads(handle.metadata()["fixture"])["order"])


def test_removed_handle_restores_a_bit_identical_stock_forward(unets):
    imitative, reference = unets
    sample, context, reference_latents = _inputs(1)
    t = torch.tensor(300)
    before_processors = dict(imitative.attn_processors)
    with torch.no_grad():
        stock = imitative(sample, t, encoder_hidden_states=context).sample
    guided = _guided_forward(imitative, reference, sample, context, reference_latents)
    with torch.no_grad():
        after = imitative(sample, t, encoder_hidden_states=context).sample
    assert not torch.equal(guided, stock)
    assert torch.equal(after, stock)
    assert all(type(p) is type(before_processors[k]) for k, p in imitative.attn_processors.items())


def test_unconditional_half_ignores_the_reference_and_conditional_half_uses_it(unets):
    imitative, reference = unets
    sample, context, first_reference = _inputs(2)
    second_reference = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(99))
    out_a = _guided_forward(imitative, reference, sample, context, first_reference)
    out_b = _guided_forward(imitative, reference, sample, context, second_reference)
    assert torch.equal(out_a[0], out_b[0])
    assert (out_a[1] - out_b[1]).abs().max() > 1e-3
    with torch.no_grad():
        stock = imitative(sample, torch.tensor(500), encoder_hidden_states=context).sample
    assert torch.allclose(out_a[0], stock[0], atol=1e-5)


def _authors_self_attention(attn, hidden, reference):
    """The authors' form, written plainly: every token of [x ; r] as a query, half the rows kept."""
    joined = torch.cat([hidden, reference], dim=1)
    heads = attn.heads

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    def attend(q_in, kv_in):
        out = F.scaled_dot_product_attention(split(attn.to_q(q_in)), split(attn.to_k(kv_in)), split(attn.to_v(kv_in)))
        return attn.to_out[0](out.transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1))

    with_reference = attend(joined, joined)[:, : hidden.shape[1]]
    return 0.5 * with_reference + 0.5 * attend(hidden, hidden)


@pytest.mark.parametrize("route", ["log-sum-exp merge", "concatenated keys (autograd)"])
def test_read_processor_equals_the_authors_computation(unets, route):
    imitative, reference_unet = unets
    name = reference_block_names(imitative)[3]
    attn = imitative.get_submodule(name).attn1
    generator = torch.Generator().manual_seed(5)
    width = attn.to_q.in_features
    hidden = torch.randn(3, 64, width, generator=generator)  # 1 unconditional row, 2 conditional
    recorded = torch.randn(1, 64, width, generator=generator)
    training = route.endswith("(autograd)")
    with torch.set_grad_enabled(training), install_reference_attention(reference_unet, imitative) as handle:
        handle.bank.features[name] = recorded.requires_grad_(training)
        handle.bank.conditional_rows = 2
        ours = attn(hidden)
        if training:
            ours.sum().backward()
            assert recorded.grad is not None and recorded.grad.abs().sum() > 0
            ours = ours.detach()
    with torch.no_grad():
        expected_cond = _authors_self_attention(attn, hidden[1:], recorded.expand(2, -1, -1))
        expected_uncond = attn(hidden[:1])
    torch.testing.assert_close(ours[1:], expected_cond, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[:1], expected_uncond, atol=1e-6, rtol=0)


def test_write_processor_records_the_norm1_output(unets):
    imitative, reference_unet = unets
    _, context, reference_latents = _inputs(3)
    names = reference_block_names(reference_unet)
    seen = {}
    hooks = [reference_unet.get_submodule(n).norm1.register_forward_hook(
        lambda module, args, output, n=n: seen.__setitem__(n, output)) for n in names]
    try:
        with torch.no_grad(), install_reference_attention(reference_unet, imitative) as handle:
            handle.record(reference_latents, torch.tensor(10), context[:1])
            recorded = dict(handle.bank.features)
    finally:
        for hook in hooks:
            hook.remove()
    assert list(recorded) == sorted(recorded, key=names.index) and set(recorded) == set(names)
    for name in names:
        assert torch.equal(recorded[name], seen[name])


def test_missing_reference_features_are_an_error_not_a_silent_plain_attention(unets):
    imitative, reference_unet = unets
    sample, context, _ = _inputs(4)
    with torch.no_grad(), install_reference_attention(reference_unet, imitative) as handle:
        handle.bank.conditional_rows = 1
        with pytest.raises(Exception, match="No reference features"):
            imitative(sample, torch.tensor(1), encoder_hidden_states=context)


def test_stopping_the_reference_unet_after_its_last_block_records_the_same_features(unets):
    imitative, reference_unet = unets
    _, context, reference_latents = _inputs(6)
    with torch.no_grad(), install_reference_attention(reference_unet, imitative) as handle:
        handle.record(reference_latents, torch.tensor(20), context[:1])
        stopped = dict(handle.bank.features)
        handle.bank.final_block = None  # run the whole forward pass instead
        handle.record(reference_latents, torch.tensor(20), context[:1])
        full = dict(handle.bank.features)
    assert stopped.keys() == full.keys() and len(full) == 10
    assert all(torch.equal(stopped[name], full[name]) for name in full)


def _first_cross_attention(unet):
    return next(module for name, module in unet.named_modules() if name.endswith("attn2"))


def test_context_attention_is_the_stock_attention(unets):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from mimic_core.attention import ContextAttentionProcessor
    imitative, _ = unets
    generator = torch.Generator().manual_seed(3)
    cross = _first_cross_attention(imitative)
    own = imitative.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1")  # no reference
    x = torch.randn(2, 16, cross.to_q.in_features, generator=generator)
    context = torch.randn(2, 7, cross.to_k.in_features, generator=generator)
    with torch.no_grad():
        for attn, given in ((cross, context), (own, None)):
            torch.testing.assert_close(ContextAttentionProcessor()(attn, x, given), AttnProcessor2_0()(attn, x, given),
                                       rtol=1e-6, atol=1e-6)


def test_context_projections_are_made_once_per_context_tensor_and_weights(unets):
    imitative, reference = unets
    sample, context, reference_latents = _inputs(2)
    attn = _first_cross_attention(imitative)
    projected = []
    hook = attn.to_k.register_forward_hook(lambda *args: projected.append(1))
    saved = attn.to_k.weight.detach().clone()
    t = torch.tensor(500)
    try:
        with torch.no_grad(), install_reference_attention(reference, imitative) as handle:
            handle.record(reference_latents, t, context[-1:])
            handle.bank.conditional_rows = 1
            first = imitative(sample, t, encoder_hidden_states=context).sample
            assert torch.equal(imitative(sample, t, encoder_hidden_states=context).sample, first)
            assert len(projected) == 1  # the second step reused the first's keys
            other = context.clone()
            assert torch.equal(imitative(sample, t, encoder_hidden_states=other).sample, first)
            assert len(projected) == 2  # another tensor, though equal: projected afresh
            attn.to_k.weight.mul_(2)
            assert not torch.equal(imitative(sample, t, encoder_hidden_states=other).sample, first)
            assert len(projected) == 3  # the weight was written in place: projected afresh
        with install_reference_attention(reference, imitative) as handle:
            handle.bank.conditional_rows = 1
            for _ in range(2):
                handle.record(reference_latents, t, context[-1:])
                imitative(sample, t, encoder_hidden_states=context).sample.sum().backward()
            assert len(projected) == 5  # autograd records: nothing kept, each pass has its own graph
    finally:
        hook.remove()
        with torch.no_grad():
            attn.to_k.weight.copy_(saved)
        imitative.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)


def test_self_attention_of_a_batch_with_equal_halves_is_computed_once(unets):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from mimic_core.attention import ContextAttentionProcessor
    imitative, _ = unets
    attn = imitative.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1")
    rows = []
    hook = attn.to_q.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    generator = torch.Generator().manual_seed(4)
    one = torch.randn(1, 16, attn.to_q.in_features, generator=generator)
    other = torch.randn(1, 16, attn.to_q.in_features, generator=generator)
    try:
        with torch.no_grad():
            for batch, computed_rows in ((torch.cat([one, one]), 1), (torch.cat([one, other]), 2)):
                expected = AttnProcessor2_0()(attn, batch)
                torch.testing.assert_close(ContextAttentionProcessor()(attn, batch), expected, rtol=1e-6, atol=1e-6)
                assert rows[-1] == computed_rows
    finally:
        hook.remove()
