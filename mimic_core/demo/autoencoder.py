"""Training the demo model's VAE to reconstruct the synthetic images.

The MimicBrush trainer keeps the VAE frozen (the paper uses SD's), so a random VAE would leave
the diffusion model nothing to learn. This is a plain reconstruction loop, not MimicBrush
training: mean squared plus mean absolute error of the decoded posterior sample (the absolute
error keeps pulling once the errors are small), extra weight on the colour differences and on the
mean colour of each 8x8 block (one latent pixel's area), plus a small KL term that keeps the
posterior from collapsing to a point. Batches mix views of objects, collages (the object's mask
painted black, which the VAE encodes in every edit), rotated views with black corners (what the
trainer's augmentation brings in) and random colour fields. Afterwards the scaling factor is set
to 1 / the standard deviation of the latents, the role 0.18215 plays for the SD VAE.

Colour is the hard part for so small a VAE: unsure where the edges of a pattern lie, the
reconstruction that minimises the error is blurred towards grey, and it stays grey for hundreds
of steps. Hence the colour terms of the loss, the colour fields, and a start on plain colour
squares (``colour_steps``), which it learns to reproduce within a hundred steps.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL

from .synthetic import TEST_SEED_OFFSET, make_pair, render, object_mask, random_scene, random_view

logger = logging.getLogger(__name__)

KL_WEIGHT = 1e-4
CHROMA_WEIGHT = 4.0
BLOCK_WEIGHT = 4.0
BLOCK = 8


def block_means(pixels: torch.Tensor) -> torch.Tensor:
    """Mean colour of each 8x8 block: what one latent pixel covers."""
    return torch.nn.functional.avg_pool2d(pixels, BLOCK)


def chroma(pixels: torch.Tensor) -> torch.Tensor:
    """The colour of each pixel without its brightness (each channel minus the channels' mean)."""
    return pixels - pixels.mean(dim=1, keepdim=True)


def vae_batch(rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
    """``[count, 3, size, size]`` in -1..1: colour fields (a random colour grid, blocky or
    smooth: colour everywhere, which a small VAE otherwise learns late), collages, rotated
    views and plain views (seeds drawn from ``rng``, all below the held-out seeds)."""
    images = []
    for _ in range(count):
        scene_rng = np.random.default_rng([int(rng.integers(TEST_SEED_OFFSET)), 2])
        image, coverage = render(random_scene(scene_rng), random_view(scene_rng, size), size)
        kind = rng.random()
        if kind < 0.25:
            cells = int(rng.integers(2, 9))
            image = cv2.resize(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8), (size, size),
                               interpolation=cv2.INTER_NEAREST if rng.random() < 0.5 else cv2.INTER_CUBIC)
        elif kind < 0.45:
            image = np.where(object_mask(coverage)[..., None] > 0, 0, image).astype(np.uint8)
        elif kind < 0.6:
            turn = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-30, 30), rng.uniform(0.8, 1.3))
            image = cv2.warpAffine(image, turn, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        images.append(image)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def random_crops(pixels: torch.Tensor, crop: int, rng: np.random.Generator) -> torch.Tensor:
    """One ``crop``-pixel square of each image, at a random place."""
    side = pixels.shape[-1]
    corners = rng.integers(0, side - crop + 1, (len(pixels), 2))
    return torch.stack([image[:, top:top + crop, left:left + crop] for image, (top, left) in zip(pixels, corners)])


def start_with_small_posterior_noise(vae: AutoencoderKL, log_variance: float = -6.0) -> None:
    """Start the encoder's log-variance outputs near ``log_variance`` (std 0.05) instead of 0 (std 1).

    At std 1 the sampled latents are mostly noise and the decoder learns little until the encoder
    has learnt to shrink it; starting small lets reconstruction begin at once.
    """
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.encoder.conv_out.weight[channels:] *= 0.1
        vae.encoder.conv_out.bias[channels:] = log_variance


def train_vae(vae: AutoencoderKL, steps: int, batch_size: int, size: int, crop: int, seed: int = 0,
              learning_rate: float = 1e-3, colour_steps: int = 100) -> list[float]:
    """Train ``vae`` in place on ``crop``-pixel crops of ``size`` renders (the VAE is all
    convolutions, so crops teach it the same function for a quarter of the work), after
    ``colour_steps`` steps on plain colour squares; returns each step's reconstruction MSE. Sets
    ``scaling_factor`` at the end."""
    rng = np.random.default_rng([seed, 3])
    generator = torch.Generator().manual_seed(seed)
    start_with_small_posterior_noise(vae)
    optimizer = torch.optim.Adam(vae.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=learning_rate / 10)
    vae.train().requires_grad_(True)
    losses = []
    started = time.monotonic()
    for step in range(steps):
        if step < colour_steps:
            pixels = (torch.rand(batch_size, 3, 1, 1, generator=generator) * 2 - 1).expand(-1, -1, crop, crop)
        else:
            pixels = random_crops(vae_batch(rng, batch_size, size), crop, rng)
        posterior = vae.encode(pixels.contiguous()).latent_dist
        decoded = vae.decode(posterior.sample(generator)).sample
        reconstruction = torch.nn.functional.mse_loss(decoded, pixels)
        loss = (reconstruction + torch.nn.functional.l1_loss(decoded, pixels)
                + CHROMA_WEIGHT * torch.nn.functional.mse_loss(chroma(decoded), chroma(pixels))
                + BLOCK_WEIGHT * torch.nn.functional.mse_loss(block_means(decoded), block_means(pixels))
                + KL_WEIGHT * posterior.kl().mean() / posterior.mean[0].numel())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(reconstruction.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("VAE step %d/%d: reconstruction MSE %.5f (%.0f s)", step + 1, steps,
                        float(np.mean(losses[-50:])), time.monotonic() - started)
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, size))
    return losses


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, size: int, count: int = 64) -> float:
    """1 / the standard deviation of posterior samples of held-out views."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.stack([torch.from_numpy(make_pair(TEST_SEED_OFFSET + 500_000 + k, size).source)
                          for k in range(count)]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = vae.encode(pixels).latent_dist.sample(generator)
    return float(1.0 / latents.std())


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, size: int, count: int = 32) -> float:
    """Mean PSNR (dB, 0..1 range) of posterior-sample reconstructions of held-out sources."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.stack([torch.from_numpy(make_pair(TEST_SEED_OFFSET + 600_000 + k, size).source)
                          for k in range(count)]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    decoded = vae.decode(vae.encode(pixels).latent_dist.sample(generator)).sample.clamp(-1, 1)
    mse = ((decoded - pixels) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((-10 * torch.log10(mse)).mean())
