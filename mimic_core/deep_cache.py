"""Reuse of the imitative U-Net's deep features between sampling steps (fast mode, not exact).

Between adjacent steps the deep, low-resolution part of a U-Net changes little; what changes is
carried by the outermost level (Ma et al., "DeepCache", 2023). So on a *full* step the U-Net runs
as usual and the hidden state entering its last up block is kept; on a *shallow* step only the
outermost level runs: the time embedding, ``conv_in``, the first down block (for its skip
connections), the last up block on the kept hidden state, and the output convolution. In SD-1.5
that is about a third of a U-Net pass. The last up block holds reference attention, so shallow
steps still read the reference.

Only the plain SD-1.5 form of ``UNet2DConditionModel`` is supported (no class or added
embeddings, no input centring, no encoder-state projection); :class:`DeepFeatureCache` refuses
anything else rather than compute another function.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from .errors import MimicBrushError


def whole_steps(total: int, guided_steps: int, deep_every: int) -> list[bool]:
    """Which of ``total`` steps run the whole U-Net: every ``deep_every``-th, and the first step
    after guidance ends (the first ``guided_steps`` steps have twice the batch, so nothing kept
    before fits it)."""
    return [index % deep_every == 0 or index == guided_steps for index in range(total)]


class DeepFeatureCache:
    """Runs a U-Net in full (keeping its deep features) or shallowly (reusing them)."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        config = unet.config
        first, last = unet.down_blocks[0], unet.up_blocks[-1]
        if (config.class_embed_type is not None or config.addition_embed_type is not None
                or config.center_input_sample or unet.encoder_hid_proj is not None or len(unet.up_blocks) < 2
                or len(last.resnets) != len(first.resnets) + 1):
            raise MimicBrushError("Reusing deep features supports only the SD-1.5 U-Net layout; "
                                  "set deep_features_every to 1 for this model.")
        self.unet = unet
        self.features: torch.Tensor | None = None

    def full(self, sample: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        """A whole U-Net pass; the hidden state entering the last up block is kept for shallow steps."""
        def keep(module, inputs, output):
            self.features = output

        hook = self.unet.up_blocks[-2].register_forward_hook(keep)
        try:
            return self.unet(sample, timestep, encoder_hidden_states=context).sample
        finally:
            hook.remove()

    def shallow(self, sample: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        """The outermost level of the U-Net on the kept deep features; mirrors the stock forward pass."""
        if self.features is None or self.features.shape[0] != sample.shape[0]:
            raise MimicBrushError("A shallow U-Net step needs deep features from a full step on the same batch.")
        unet = self.unet
        embedding = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
        if unet.time_embed_act is not None:
            embedding = unet.time_embed_act(embedding)
        hidden = unet.conv_in(sample)
        first, last = unet.down_blocks[0], unet.up_blocks[-1]
        if getattr(first, "has_cross_attention", False):
            _, skips = first(hidden_states=hidden, temb=embedding, encoder_hidden_states=context)
        else:
            _, skips = first(hidden_states=hidden, temb=embedding)
        # the last up block takes the first skips: conv_in's output and each first-block resnet's
        skips = ((hidden,) + tuple(skips))[:len(last.resnets)]
        if getattr(last, "has_cross_attention", False):
            out = last(hidden_states=self.features, temb=embedding, res_hidden_states_tuple=skips,
                       encoder_hidden_states=context)
        else:
            out = last(hidden_states=self.features, temb=embedding, res_hidden_states_tuple=skips)
        if unet.conv_norm_out is not None:
            out = unet.conv_act(unet.conv_norm_out(out))
        return unet.conv_out(out)
