"""The demo model's tiny architectures, at random initialisation.

They keep every structural trait the engine relies on and only shrink widths and depths:

- U-Nets: SD-1.5's block layout (cross-attention down blocks, a plain last down block, mirrored
  up blocks ending in a cross-attention block, a cross-attention mid block) at three levels of
  32/64/64 channels, one layer per block, two attention heads. The reference attention pairs the
  transformer blocks of the mid and up blocks, as in the released model.
- CLIP vision tower: image size 224 (what ``preprocess.clip_pixels`` feeds), patch 32, width 32,
  three layers (the penultimate hidden states are what MimicBrush uses).
- VAE: ``AutoencoderKL`` with four levels (8/16/32/64 channels) and no attention in its mid block
  (all convolutions), so it downsamples by 8 like the SD VAE. It must: the trainer's SD-1.5
  starting path builds the released depth guider, whose output is the working size / 8.
- Depth Anything: a random transformers model a few kilobytes in size. It is never trained; it
  only has to turn an image into a map the guider can read (the released model always consumes
  a depth feature).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, DepthAnythingConfig,
                          DepthAnythingForDepthEstimation, Dinov2Config)

WORKING_SIZE = 128
"""Square side the demo model works at (latents are WORKING_SIZE / 8 = 16 pixels square)."""

CROSS_ATTENTION_DIM = 32


def tiny_unet(in_channels: int) -> UNet2DConditionModel:
    """A tiny SD-1.5-layout U-Net: 9 input channels for the "inpainting" start, 4 for the reference."""
    return UNet2DConditionModel(
        sample_size=WORKING_SIZE // 8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=2, norm_num_groups=8,
    )


def tiny_clip() -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=32))


def tiny_vae() -> AutoencoderKL:
    """Untrained; :mod:`mimic_core.demo.autoencoder` trains it and sets its scaling factor."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=WORKING_SIZE,
        mid_block_add_attention=False)


def tiny_depth_model() -> DepthAnythingForDepthEstimation:
    backbone = Dinov2Config(hidden_size=8, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=518,
                            patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    return DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[4, 4, 4, 4], fusion_hidden_size=4, head_hidden_size=4,
        reassemble_hidden_size=8, patch_size=14))
