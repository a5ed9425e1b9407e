"""Everything an edit needs, loaded from the user's weight files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionModelWithProjection

from .checkpoint import read_checkpoint
from .components import DepthGuider, ImageProjection, build_components
from .depth import load_depth_model
from .files import release_mapped_pages
from .vae import load_vae


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

    def modules(self) -> dict[str, nn.Module]:
        names = ("unet", "referencenet", "image_encoder", "image_proj", "depth_guider", "vae", "depth_model")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def use_channels_last(self) -> "MimicBrushModels":
        """Store the U-Nets' convolution weights channels-last (:func:`use_channels_last`).

        Not the VAE's: channels-last would save about 15% of its time at 512², but its encoder's
        rounding then departs from the authors' by up to 4e-3 on the golden fixture's latents, 40
        times the fixture's stage tolerance; the U-Nets stay within it."""
        for module in (self.unet, self.referencenet):
            use_channels_last(module)
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MimicBrushModels":
        for module in self.modules().values():
            module.to(device=device, dtype=dtype)
        return self


def load_models(checkpoint: str | Path, vae: str | Path, depth_model: str | Path | None = None, *,
                config_dir: str | Path | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", channels_last: bool = True) -> MimicBrushModels:
    """Load MimicBrush from the released files (or their conversions).

    ``checkpoint`` is ``mimicbrush.bin`` or its converted ``.safetensors``; ``vae`` the SD VAE (a
    diffusers folder or a single file); ``depth_model`` Depth Anything (the authors' ``.pth`` or a
    transformers folder), needed for every edit since the released model always consumes a depth
    feature. ``config_dir`` holds ``<part>_config.json`` files for non-released architectures.
    ``channels_last`` stores the U-Nets' convolution weights channels-last
    (:meth:`MimicBrushModels.use_channels_last`).
    """
    parts = build_components(read_checkpoint(checkpoint, config_dir))
    vae_config = Path(config_dir) / "vae_config.json" if config_dir is not None else None
    models = MimicBrushModels(
        **parts,
        vae=load_vae(vae, config=vae_config if vae_config is not None and vae_config.is_file() else None),
        depth_model=load_depth_model(depth_model) if depth_model is not None else None,
    ).to(device=device, dtype=dtype)
    return models.use_channels_last() if channels_last else models


def use_channels_last(module: nn.Module) -> None:
    """Store the module's convolution weights in channels-last order.

    oneDNN's CPU convolutions run faster on it (the two U-Nets spend about half their time in
    convolutions), and the results equal the default layout's up to float rounding. The weights
    the module held before, views of a memory-mapped file when they were loaded from
    ``.safetensors``, are released rather than left resident beside their copies.
    """
    before = [parameter.data for parameter in module.parameters() if parameter.dim() == 4]
    module.to(memory_format=torch.channels_last)
    release_mapped_pages(before)
