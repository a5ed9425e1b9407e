"""Reference attention as diffusers attention processors.

The reference U-Net gets a *write* processor on the self-attention (``attn1``) of every
transformer block in its mid and up blocks: it records what enters that attention (the block's
``norm1`` output) into a shared :class:`ReferenceBank`, then attends as usual. The imitative
U-Net gets a *read* processor at the same module paths. For the conditional rows of its batch
(the last ``bank.conditional_rows`` rows; classifier-free guidance puts them after the
unconditional ones) the self-attention becomes

    0.5 * Attn(Q=x, KV=[x ; r]) + 0.5 * Attn(Q=x, KV=x)

with ``x`` the block's own ``norm1`` output and ``r`` the recorded reference tokens; the other
rows get plain self-attention, so the reference never reaches the unconditional branch. A
reference strength s other than 1 adds log(s) to the logits of the ``r`` keys (0 leaves them out).
Several references, and the tokens a reference mask keeps, are joined into one ``r``. This is
the authors' function, computed with queries over the image tokens only (they attend with all
2N tokens as queries and drop half the rows) and with each projection computed once.

Attention over ``[x ; r]`` is a weighted mean of attention over ``x`` and over ``r``, with weights
from each part's log-sum-exp of scores. ``Attn(Q=x, KV=x)`` is computed anyway (it is the plain
half, and the unconditional rows), so where a kernel returns the log-sum-exp (PyTorch's CPU flash
attention) the reader only adds attention over ``r``: N keys per query instead of 2N, and no
concatenated key/value copies. Elsewhere, and whenever autograd records (the kernel's log-sum-exp
carries no gradient), it attends over the concatenation.

Both processors are installed and removed together by :func:`install_reference_attention`, which
gives every other attention of both U-Nets a :class:`ContextAttentionProcessor` for as long (the
same function, with each context's keys and values projected once instead of at every step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from .errors import MimicBrushError
from .prepacked import tensor_state


class ReferenceFeaturesComplete(Exception):
    """Raised by the writer once the last block that matters is recorded: nothing the reference
    U-Net computes after it can reach a recorded feature, so its forward pass stops there."""


class ReferenceBank:
    """Reference features keyed by transformer-block path, shared by the writer and the reader."""

    def __init__(self, final_block: str | None = None) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.conditional_rows = 0
        self.final_block = final_block
        self.reference_strength = 1.0
        """The reference keys' weight: ``log(strength)`` is added to their attention logits."""

    def clear(self) -> None:
        self.features.clear()
        self.conditional_rows = 0
        self.reference_strength = 1.0


def joined_reference_tokens(features: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The recorded tokens of R references (``[R, T, C]``) as one row ``[1, K, C]`` of reference keys.

    ``keep`` (``[R, 1, h, w]``, 0/1 on the latent grid, or None) says where on each reference to
    imitate: at this level's resolution (the block's T tokens are a square grid) a token is kept
    when its area holds any of it, so a small mask keeps at least one token at every level.
    """
    count, tokens, width = features.shape
    if keep is not None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise MimicBrushError(f"A reference mask needs square feature grids; this block has {tokens} tokens.")
        kept = F.adaptive_max_pool2d(keep.to(features.device, torch.float32), side).reshape(count, tokens) > 0
        if not bool(kept.all()):
            return features[kept].unsqueeze(0)
    return features if count == 1 else features.reshape(1, count * tokens, width)


def reference_block_names(unet: UNet2DConditionModel) -> list[str]:
    """Paths of the transformer blocks whose self-attention takes part (mid and up blocks).

    Ordered by channel width, descending (a stable sort, so module order is kept among equals),
    which is the order the authors pair blocks in; pairing here is by identical path.
    """
    names = [(unet.get_submodule(name).attn1.to_q.in_features, name) for name in _blocks_in_execution_order(unet)]
    return [name for _, name in sorted(names, key=lambda item: -item[0])]


def last_recorded_block(unet: UNet2DConditionModel) -> str:
    """Path of the reference U-Net's last transformer block to run whose self-attention input is
    recorded: its forward pass stops there (:class:`ReferenceFeaturesComplete`)."""
    return _blocks_in_execution_order(unet)[-1]


def _blocks_in_execution_order(unet: UNet2DConditionModel) -> list[str]:
    names = []
    for prefix in ("mid_block", "up_blocks"):
        for name, module in unet.get_submodule(prefix).named_modules(prefix=prefix):
            if name.endswith(".attn1") and isinstance(module, Attention):
                names.append(name[: -len(".attn1")])
    return names


def _heads_view(attn: Attention, tensor: torch.Tensor) -> torch.Tensor:
    batch, tokens, inner = tensor.shape
    return tensor.view(batch, tokens, attn.heads, inner // attn.heads).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def _check_plain_self_attention(attn: Attention, encoder_hidden_states, attention_mask, hidden_states) -> None:
    if encoder_hidden_states is not None:
        raise MimicBrushError("Reference attention serves self-attention; this block was given a context.")
    _check_sd15_attention(attn, attention_mask, hidden_states)


def _check_sd15_attention(attn: Attention, attention_mask, hidden_states) -> None:
    """These processors implement the SD-1.5 attention form and nothing else."""
    if (attention_mask is not None or hidden_states.ndim != 3 or attn.spatial_norm is not None
            or attn.group_norm is not None or attn.residual_connection or attn.norm_cross is not None
            or attn.norm_q is not None or attn.norm_k is not None):
        raise MimicBrushError(
            "The sampling loop's attention supports only the SD-1.5 attention form; "
            "this U-Net uses another attention form."
        )


def _plain_attention(attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
    """Self-attention; computed once for a batch whose two halves are equal, as classifier-free
    guidance's rows are until their contexts first differ (the first transformer block's
    self-attention, about 1.5% of a guided step at 512²)."""
    half = hidden_states.shape[0] // 2
    if half and 2 * half == hidden_states.shape[0] and torch.equal(hidden_states[:half], hidden_states[half:]):
        once = _plain_attention(attn, hidden_states[:half])
        return torch.cat([once, once])
    query = _heads_view(attn, attn.to_q(hidden_states))
    key = _heads_view(attn, attn.to_k(hidden_states))
    value = _heads_view(attn, attn.to_v(hidden_states))
    return _output(attn, _merge_heads(F.scaled_dot_product_attention(query, key, value)))


def _output(attn: Attention, mixed: torch.Tensor) -> torch.Tensor:
    """The output projection, and the rescale where it is not the identity (SD-1.5's is 1)."""
    output = attn.to_out[1](attn.to_out[0](mixed))
    return output if attn.rescale_output_factor == 1.0 else output / attn.rescale_output_factor


class ContextAttentionProcessor:
    """Every other attention of both U-Nets while reference attention is installed: plain
    self-attention, and cross-attention whose keys and values are projected once per context.

    A sampling loop passes the same context tensors at every step (the image embeddings do not
    change over a run), so their projections are reused while the context is the very tensor they
    were made from and the projection weights are unchanged; the context is held, so its memory
    cannot pass to another tensor. Contexts must not be written in place while the handle is
    installed. Nothing is kept while autograd records (training passes a new context each batch).
    """

    def __init__(self) -> None:
        self._projected: tuple[torch.Tensor, tuple, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        _check_sd15_attention(attn, attention_mask, hidden_states)
        if encoder_hidden_states is None:
            return _plain_attention(attn, hidden_states)
        key, value = self._context_projections(attn, encoder_hidden_states)
        query = _heads_view(attn, attn.to_q(hidden_states))
        return _output(attn, _merge_heads(F.scaled_dot_product_attention(query, key, value)))

    def _context_projections(self, attn: Attention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = tuple(tensor_state(t) for t in (attn.to_k.weight, attn.to_k.bias, attn.to_v.weight, attn.to_v.bias))
        cached = self._projected
        if cached is not None and cached[0] is context and cached[1] == weights:
            return cached[2], cached[3]
        key = _heads_view(attn, attn.to_k(context))
        value = _heads_view(attn, attn.to_v(context))
        self._projected = None if key.requires_grad else (context, weights, key, value)
        return key, value


class ReferenceWriteProcessor:
    """Records the self-attention input of one reference-U-Net block, then attends as usual."""

    def __init__(self, bank: ReferenceBank, name: str):
        self.bank = bank
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        _check_plain_self_attention(attn, encoder_hidden_states, attention_mask, hidden_states)
        self.bank.features[self.name] = hidden_states
        if self.name == self.bank.final_block:
            raise ReferenceFeaturesComplete
        return _plain_attention(attn, hidden_states)


class ReferenceReadProcessor:
    """Self-attention of one imitative-U-Net block, with the reference tokens for conditional rows."""

    def __init__(self, bank: ReferenceBank, name: str):
        self.bank = bank
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        _check_plain_self_attention(attn, encoder_hidden_states, attention_mask, hidden_states)
        conditional = self.bank.conditional_rows
        if conditional == 0 or self.bank.reference_strength == 0:
            return _plain_attention(attn, hidden_states)
        reference = self.bank.features.get(self.name)
        batch = hidden_states.shape[0]
        if reference is None:
            raise MimicBrushError(f"No reference features were recorded for '{self.name}'; run the reference U-Net first.")
        if not conditional <= batch or reference.shape[0] not in (1, conditional):
            raise MimicBrushError(
                f"Reference features for {reference.shape[0]} rows cannot serve {conditional} "
                f"conditional rows of a batch of {batch}."
            )
        query = _heads_view(attn, attn.to_q(hidden_states))
        key = _heads_view(attn, attn.to_k(hidden_states))
        value = _heads_view(attn, attn.to_v(hidden_states))
        first = batch - conditional
        reference = reference.to(hidden_states.dtype)
        ref_key = _heads_view(attn, attn.to_k(reference)).expand(conditional, -1, -1, -1)
        ref_value = _heads_view(attn, attn.to_v(reference)).expand(conditional, -1, -1, -1)
        strength = self.bank.reference_strength
        if _merge_by_log_sum_exp(query, ref_key):
            plain, plain_lse = _attention_with_lse(query, key, value)
            on_reference, reference_lse = _attention_with_lse(query[first:], ref_key, ref_value)
            if strength != 1.0:
                reference_lse = reference_lse + math.log(strength)
            weight = torch.sigmoid(plain_lse[first:] - reference_lse).unsqueeze(-1).to(on_reference.dtype)
            with_reference = torch.lerp(on_reference, plain[first:], weight)
        else:
            plain = F.scaled_dot_product_attention(query, key, value)
            with_reference = F.scaled_dot_product_attention(
                query[first:], torch.cat([key[first:], ref_key], dim=2), torch.cat([value[first:], ref_value], dim=2),
                attn_mask=_reference_key_bias(key.shape[2], ref_key.shape[2], strength, query))
        # to_out[0] is affine, so the half-and-half mix can be taken before it: one projection per row
        conditional_mix = 0.5 * (with_reference + plain[first:])
        return _output(attn, _merge_heads(torch.cat([plain[:first], conditional_mix], dim=0)))


def _reference_key_bias(own: int, references: int, strength: float, query: torch.Tensor) -> torch.Tensor | None:
    """The logit bias over ``[own keys ; reference keys]``: 0, then log(strength) (None at strength 1)."""
    if strength == 1.0:
        return None
    bias = torch.zeros(1, own + references, device=query.device, dtype=query.dtype)
    bias[:, own:] = math.log(strength)
    return bias


def _merge_by_log_sum_exp(query: torch.Tensor, ref_key: torch.Tensor) -> bool:
    """Whether the log-sum-exp merge applies: a CPU kernel that returns it, and no autograd."""
    return (query.device.type == "cpu"
            and not (torch.is_grad_enabled() and (query.requires_grad or ref_key.requires_grad)))


def _attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """Scaled-dot-product attention and the log-sum-exp of each query's scores (PyTorch's CPU
    flash-attention kernel, the one ``F.scaled_dot_product_attention`` runs here)."""
    output, log_sum_exp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False)
    return output, log_sum_exp


class ReferenceAttentionHandle:
    """The installed writer/reader pair; :meth:`remove` restores both U-Nets' previous processors."""

    def __init__(self, reference_unet: UNet2DConditionModel, imitative_unet: UNet2DConditionModel,
                 bank: ReferenceBank, names: list[str]):
        self.reference_unet = reference_unet
        self.imitative_unet = imitative_unet
        self.bank = bank
        self.names = names
        self._saved = {unet: dict(unet.attn_processors) for unet in (reference_unet, imitative_unet)}
        reference_unet.set_attn_processor(self._with(reference_unet, ReferenceWriteProcessor))
        imitative_unet.set_attn_processor(self._with(imitative_unet, ReferenceReadProcessor))

    def record(self, reference_latents: torch.Tensor, timestep, context: torch.Tensor,
               keep: torch.Tensor | None = None) -> None:
        """Run the reference U-Net up to its last recorded block, filling the bank: on R references
        (``[R, 4, h, w]`` latents, each with its own ``context`` row), whose tokens are joined into
        one row of reference keys, those outside ``keep`` left out (:func:`joined_reference_tokens`)."""
        self.bank.features.clear()
        try:
            self.reference_unet(reference_latents, timestep, encoder_hidden_states=context)
        except ReferenceFeaturesComplete:
            pass
        for name, features in self.bank.features.items():
            self.bank.features[name] = joined_reference_tokens(features, keep)

    def _with(self, unet: UNet2DConditionModel, kind) -> dict:
        processors = {name: ContextAttentionProcessor() for name in self._saved[unet]}
        for name in self.names:
            processors[f"{name}.attn1.processor"] = kind(self.bank, name)
        return processors

    def remove(self) -> None:
        for unet, processors in self._saved.items():
            unet.set_attn_processor(dict(processors))
        self.bank.clear()

    def __enter__(self) -> "ReferenceAttentionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def install_reference_attention(reference_unet: UNet2DConditionModel,
                                imitative_unet: UNet2DConditionModel) -> ReferenceAttentionHandle:
    """Pair the two U-Nets' mid/up self-attentions by module path; returns the removable handle."""
    names = reference_block_names(reference_unet)
    if names != reference_block_names(imitative_unet):
        raise MimicBrushError("The reference and imitative U-Nets do not have the same mid/up transformer blocks.")
    for name in names:
        ref_width = reference_unet.get_submodule(name).attn1.to_q.in_features
        own_width = imitative_unet.get_submodule(name).attn1.to_q.in_features
        if ref_width != own_width:
            raise MimicBrushError(f"Block '{name}' is {ref_width} wide in the reference U-Net, {own_width} here.")
    bank = ReferenceBank(final_block=last_recorded_block(reference_unet))
    return ReferenceAttentionHandle(reference_unet, imitative_unet, bank, names)
