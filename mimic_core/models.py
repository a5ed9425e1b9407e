"""Everything an edit needs, loaded from the user's weight files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionModelWithProjection

from .blank_embedding import StoredBlankEmbedding, stored_blank_embedding
from .checkpoint import read_checkpoint
from .components import DepthGuider, ImageProjection, build_components
from .depth import load_depth_model
from .feed_forward import chunk_feed_forwards
from .files import release_mapped_pages
from .pointwise_conv import pointwise_convolutions
from .prepacked import prepack_convolutions, prepack_linears
from .resnet_blocks import in_place_resnet_blocks
from .vae import load_vae
from .upsampling import winograd_upsamplers
from .weight_packing import U_NETS, pack_for_working_size
from .winograd import winograd_convolutions


@dataclass
class MimicBrushModels:
    """The networks of MimicBrush. ``depth_model`` may be ``None`` when no edit needs it."""

    unet: UNet2DConditionModel
    referencenet: UNet2DConditionModel
    image_encoder: CLIPVisionModelWithProjection
    image_proj: ImageProjection
    depth_guider: DepthGuider
    vae: AutoencoderKL
    depth_model: nn.Module | None = None
    stored_blank_embedding: StoredBlankEmbedding | None = field(default=None, repr=False, compare=False)
    """The blank input's embedding the checkpoint file carries, while it serves (:mod:`mimic_core.blank_embedding`)."""
    packed_for: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False, compare=False)
    """The U-Nets (``"unet"``, ``"referencenet"``) and working sizes whose weights were packed ahead of an
    edit (:meth:`pack_for`)."""

    def modules(self) -> dict[str, nn.Module]:
        names = ("unet", "referencenet", "image_encoder", "image_proj", "depth_guider", "vae", "depth_model")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def latent_size(self, working_size: int) -> int:
        """The latents' side for images of ``working_size``: the VAE halves it at each of its levels but the last."""
        return working_size // (2 ** (len(self.vae.config.block_out_channels) - 1))

    def use_inference_layers(self) -> "MimicBrushModels":
        """Give the U-Nets and the VAE layers that compute the same function faster in CPU
        inference: in the U-Nets, convolutions and linear layers on weights packed once for oneDNN
        (:mod:`mimic_core.prepacked`; convolutions 1.5-2.6x faster at the low resolutions) and
        feed-forwards computed a block of rows at a time (:mod:`mimic_core.feed_forward`); in both,
        3x3 convolutions by Winograd's F(4x4, 3x3) at the sizes where that is faster
        (:mod:`mimic_core.winograd`, float32 only); in the VAE, ResNet blocks that write their SiLUs
        and additions into the tensors they have just made (:mod:`mimic_core.resnet_blocks`; the
        U-Nets' activations are small enough that a U-Net pass measured no faster with them),
        upsamplers that convolve their input without making its upsampled copy
        (:mod:`mimic_core.upsampling`), and 1x1 convolutions as matrix products
        (:mod:`mimic_core.pointwise_conv`). All
        take the stock path for autograd; the packed, Winograd and 1x1 layers also for other dtypes and
        devices.

        The VAE's convolutions are not packed: they are at high resolution, where packing gains
        little, and a packed convolution returns channels-last activations, on which the CPU's
        GroupNorm rounds differently; that moves the VAE encoder's latents from the authors' by up
        to 4e-3 on the golden fixture, 40 times its stage tolerance, where the U-Nets stay within
        theirs. A Winograd convolution returns the stock layout."""
        for module in (self.unet, self.referencenet):
            prepack_convolutions(module)
            prepack_linears(module)
            chunk_feed_forwards(module)
        for module in (self.unet, self.referencenet, self.vae):
            winograd_convolutions(module)
        in_place_resnet_blocks(self.vae)
        winograd_upsamplers(self.vae)
        pointwise_convolutions(self.vae)
        self.packed_for.clear()
        return self

    def pack_for(self, working_size: int, reference: bool = True) -> None:
        """Pack the U-Nets' weights for edits at ``working_size``, side by side, before the first such
        edit's first step (:func:`~mimic_core.weight_packing.pack_for_working_size`; on the CPU), once per
        U-Net and size; the reference U-Net's only for an edit that runs it (``reference``: not one of
        :meth:`~mimic_core.pipeline.MimicBrushPipeline.no_reference`). A layer whose weight is replaced,
        moved or written afterwards packs again at its next call."""
        parts = [part for part in (U_NETS if reference else ("unet",)) if (part, working_size) not in self.packed_for]
        if parts:
            pack_for_working_size(self, working_size, parts=parts)
            self.packed_for.update((part, working_size) for part in parts)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MimicBrushModels":
        """Move or cast every network, a layer at a time: a memory-mapped weight's pages are given
        back as soon as its layer has its copy (:func:`~mimic_core.files.release_mapped_pages`), so a
        cast of the released checkpoint to bf16 peaks at about the bf16 copies rather than those
        plus every float32 weight read to make them."""
        for module in self.modules().values():
            # leaves first (reversed pre-order puts every layer after all of its own layers), so each
            # call casts only that layer's own tensors: its layers' are cast already and pass unchanged
            for layer in reversed(list(module.modules())):
                # aliases of the weights as they are: a cast swaps each parameter's data in place
                before = [t.detach() for t in _own_tensors(layer)]
                # torch's own move: diffusers' ModelMixin.to adds only checks for quantized and
                # device-mapped models (ours are neither) and a warning on every cast about modules to
                # keep in float32, of which these networks have none.
                torch.nn.Module.to(layer, device=device, dtype=dtype)
                kept = {t.data_ptr() for t in _own_tensors(layer)}
                release_mapped_pages([t for t in before if t.data_ptr() not in kept])
        self.packed_for.clear()
        return self


def _own_tensors(layer: nn.Module) -> list[torch.Tensor]:
    return [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]


def load_models(checkpoint: str | Path, vae: str | Path, depth_model: str | Path | None = None, *,
                config_dir: str | Path | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", inference_layers: bool = True) -> MimicBrushModels:
    """Load MimicBrush from the released files (or their conversions).

    ``checkpoint`` is ``mimicbrush.bin`` or its converted ``.safetensors``; ``vae`` the SD VAE (a
    diffusers folder or a single file); ``depth_model`` Depth Anything (the authors' ``.pth`` or a
    transformers folder), needed for every edit since the released model always consumes a depth
    feature. ``config_dir`` holds ``<part>_config.json`` files for non-released architectures.
    With ``inference_layers`` the U-Nets and the VAE get layers that compute the same function
    faster in CPU inference (:meth:`MimicBrushModels.use_inference_layers`); training wants the
    stock ones.
    """
    read = read_checkpoint(checkpoint, config_dir)
    parts = build_components(read)
    stored = stored_blank_embedding(read.blank_embedding, parts["image_encoder"], parts["image_proj"], read.path)
    vae_config = Path(config_dir) / "vae_config.json" if config_dir is not None else None
    models = MimicBrushModels(
        **parts,
        stored_blank_embedding=stored,
        vae=load_vae(vae, config=vae_config if vae_config is not None and vae_config.is_file() else None),
        depth_model=load_depth_model(depth_model) if depth_model is not None else None,
    ).to(device=device, dtype=dtype)
    return models.use_inference_layers() if inference_layers else models

