"""Where training starts: a MimicBrush checkpoint (fine-tuning), or the paper's SD-1.5 parts.

From SD-1.5 (the paper): the imitative U-Net is the SD-1.5 *inpainting* U-Net with its first conv
widened from 9 to 13 input channels, the 4 new ones (the depth feature) freshly initialised. The
depth guider starts fresh too, and its last conv starts at zero (ControlNet's conditioning
embedding), so at step 0 the depth feature is zero and the network computes exactly what SD
inpainting computes. The new channels must not start at zero as well: the guider's gradient
passes through them, and with both at zero neither would ever move. The reference U-Net is
SD-1.5's; the CLIP vision tower is any transformers CLIP vision checkpoint (the paper uses
ViT-H/14); the projection starts fresh. The VAE and Depth Anything are loaded by the engine's own
loaders and stay frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionModelWithProjection

from ..checkpoint import default_config
from ..components import DepthGuider, ImageProjection
from ..depth import load_depth_model
from ..errors import ModelFileError
from ..models import MimicBrushModels, load_models
from ..vae import load_vae
from .config import ModelConfig

INPAINTING_CHANNELS = 9
IMITATIVE_CHANNELS = 13


def load_starting_models(config: ModelConfig) -> MimicBrushModels:
    """All networks, float32 on the CPU, frozen (a checkpoint's tensors may still be memory-mapped:
    see :func:`own_memory`)."""
    return from_checkpoint(config) if config.init == "mimicbrush" else from_sd15(config)


def from_checkpoint(config: ModelConfig) -> MimicBrushModels:
    """The checkpoint's networks with stock layers (the engine's inference layers speed up CPU
    inference only)."""
    return load_models(config.checkpoint, config.vae, config.depth_model, config_dir=config.config_dir,
                       inference_layers=False)


def from_sd15(config: ModelConfig) -> MimicBrushModels:
    unet = widen_conv_in(_load_unet(config.sd15_inpainting, INPAINTING_CHANNELS, "model.sd15_inpainting"),
                         IMITATIVE_CHANNELS)
    referencenet = _load_unet(config.sd15, 4, "model.sd15")
    try:
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(config.image_encoder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelFileError(f"'{config.image_encoder}' (model.image_encoder) is not a transformers CLIP vision "
                             f"model folder: {str(err).splitlines()[0]}") from err
    guider_config = default_config("depth_guider")
    depth_guider = DepthGuider(conditioning_embedding_channels=guider_config["conditioning_embedding_channels"],
                               conditioning_channels=guider_config["conditioning_channels"],
                               block_out_channels=tuple(guider_config["block_out_channels"]))
    models = MimicBrushModels(
        unet=unet, referencenet=referencenet, image_encoder=image_encoder,
        image_proj=ImageProjection(image_encoder.config.hidden_size, unet.config.cross_attention_dim),
        depth_guider=depth_guider, vae=load_vae(config.vae or config.sd15),
        depth_model=load_depth_model(config.depth_model),
    )
    for module in models.modules().values():
        module.requires_grad_(False).eval()
    return models.to(dtype=torch.float32)


def _load_unet(path: str, channels: int, key: str) -> UNet2DConditionModel:
    folder = Path(path)
    subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ModelFileError(f"'{path}' ({key}) is not a diffusers U-Net or pipeline folder: "
                             f"{str(err).splitlines()[0]}") from err
    if unet.config.in_channels != channels:
        raise ModelFileError(f"The U-Net in '{path}' ({key}) takes {unet.config.in_channels} input channels; "
                             f"{channels} are expected (SD-1.5 {'inpainting' if channels == 9 else 'text-to-image'}).")
    return unet


def widen_conv_in(unet: UNet2DConditionModel, channels: int) -> UNet2DConditionModel:
    """The U-Net with ``channels`` input channels: the old ones keep their weights, the new ones get
    torch's default initialisation of such a conv."""
    old = unet.conv_in
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=channels)
    return unet


def own_memory(module: nn.Module) -> None:
    """Give every parameter and buffer its own storage (for training on the CPU).

    Loaded checkpoints are memory-mapped, a ``.safetensors`` as views of one shared mapping, and
    savers treat tensors sharing storage as tied weights. Moving to a GPU copies every tensor
    anyway; on the CPU each is copied out once here.
    """
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor.data = tensor.data.clone()
