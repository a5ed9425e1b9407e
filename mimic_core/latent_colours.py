"""A linear map from a VAE's latents to RGB, for cheap step previews.

ComfyUI's cheap preview multiplies each latent pixel by a 4x3 matrix. Its matrix for Stable
Diffusion 1.5's VAE suits the released model, whose VAE that is; another VAE's latents (the demo
model's) come out in the wrong colours, green where the result is purple. Such a VAE's matrix is
fitted here on a few pictures: least squares from their latents, as the sampler sees them (scaled),
to their colours at latent resolution in -1..1, the range the preview maps to 0..1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import to_model_range


@torch.inference_mode()
def fit_latent_rgb_factors(vae, pictures: list[np.ndarray], scaling_factor: float) -> list[list[float]]:
    """The ``latent channels x 3`` matrix that best maps ``vae``'s scaled latents of ``pictures``
    (``H x W x 3`` uint8) to their colours, as rows of floats (ComfyUI's ``latent_rgb_factors`` form)."""
    parameter = next(vae.parameters())
    latents, colours = [], []
    for picture in pictures:
        pixels = to_model_range(picture).to(parameter.device, parameter.dtype)
        latent = vae.encode(pixels).latent_dist.mean.double() * scaling_factor
        latents.append(latent.movedim(1, -1).reshape(-1, latent.shape[1]))
        shrunk = F.interpolate(pixels.double(), size=latent.shape[-2:], mode="area")
        colours.append(shrunk.movedim(1, -1).reshape(-1, 3))
    factors = torch.linalg.lstsq(torch.cat(latents).cpu(), torch.cat(colours).cpu()).solution
    return factors.float().tolist()
