"""One training step's loss: noise prediction on the source latents, fed as inference feeds it.

Per sample, as ``pipeline._edit_square``/``_denoise`` do at sampling time: the imitative U-Net gets
``cat([noisy source latents, latent mask, masked-image latents, depth feature])`` with the projected
CLIP penultimate states of the reference as context, and its mid/up self-attention sees the
features the reference U-Net records from the *clean* reference latents at the *same* timestep,
with the same context. Latents are VAE posterior samples times the scaling factor; the noise
schedule is the sampler's (``pipeline.SCHEDULER_CONFIG``), applied with DDPM's ``add_noise``.

A sample whose reference is dropped is the unconditional branch of classifier-free guidance: its
CLIP input is all zero (made by the dataset) and it gets plain self-attention. The reference
attention serves the *last* ``bank.conditional_rows`` rows of the batch, so each batch is
reordered with the reference-dropped rows first; the reference U-Net runs on the kept rows only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from ..attention import install_reference_attention
from ..components import reference_unet_optional_keys
from ..depth import estimate_depth
from ..pipeline import SCHEDULER_CONFIG

SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample")


def noise_scheduler() -> DDPMScheduler:
    """DDPM noising on the sampler's schedule (1000 steps, scaled-linear 0.00085 -> 0.012)."""
    return DDPMScheduler(**{key: SCHEDULER_CONFIG[key] for key in SCHEDULE_KEYS}, prediction_type="epsilon")


def unused_parameters(part: str, module: nn.Module) -> set[str]:
    """Parameter names of ``part`` that cannot influence the loss; they are frozen.

    The reference U-Net's output and everything after the self-attention input of its last
    transformer block is discarded (the same keys the authors' checkpoint lacks). The CLIP
    encoder's penultimate states are used, so its last layer, post-layernorm and projection
    head are unused. Freezing them keeps DDP from waiting for gradients that never come and
    leaves the optimiser no state for them.
    """
    if part == "referencenet":
        return reference_unet_optional_keys(module)
    if part == "image_encoder":
        last = f"vision_model.encoder.layers.{module.config.num_hidden_layers - 1}."
        prefixes = (last, "vision_model.post_layernorm.", "visual_projection.")
        return {name for name, _ in module.named_parameters() if name.startswith(prefixes)}
    return set()


class TrainingNetworks(nn.Module):
    """The five networks that can train, as one module whose forward is the noise prediction.

    One module so that data parallelism wraps them together. The reference attention is
    installed for the module's life. With gradient checkpointing the reference U-Net runs to its
    end (``bank.final_block = None``): its early stop is an exception raised after the last
    recorded block, which the recomputation in the backward pass would raise again.
    """

    def __init__(self, unet, referencenet, image_encoder, image_proj, depth_guider, resolution: int,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.unet = unet
        self.referencenet = referencenet
        self.image_encoder = image_encoder
        self.image_proj = image_proj
        self.depth_guider = depth_guider
        self.resolution = resolution
        self.reference = install_reference_attention(referencenet, unet)
        if gradient_checkpointing:
            self.reference.bank.final_block = None
            unet.enable_gradient_checkpointing()
            referencenet.enable_gradient_checkpointing()
            _checkpoint_encoder(image_encoder)

    def parts(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "referencenet": self.referencenet, "image_encoder": self.image_encoder,
                "image_proj": self.image_proj, "depth_guider": self.depth_guider}

    def forward(self, noisy_latents, timesteps, latent_mask, masked_latents, depth_map, clip_pixels,
                reference_latents) -> torch.Tensor:
        """Predicted noise. The last ``len(reference_latents)`` rows keep their reference."""
        kept = reference_latents.shape[0]
        depth_feature = self.depth_guider(depth_map, size=self.resolution)
        hidden = self.image_encoder(clip_pixels, output_hidden_states=True).hidden_states[-2]
        context = self.image_proj(hidden)
        bank = self.reference.bank
        if kept:
            self.reference.record(reference_latents, timesteps[-kept:], context[-kept:])
        else:
            bank.features.clear()
        bank.conditional_rows = kept
        sample = torch.cat([noisy_latents, latent_mask, masked_latents, depth_feature], dim=1)
        return self.unet(sample, timesteps, encoder_hidden_states=context).sample


def _checkpoint_encoder(encoder) -> None:
    """transformers 5 renamed gradient checkpointing (the old name warns); 4.x has only the old one."""
    if hasattr(encoder, "activation_checkpointing_enable"):
        encoder.activation_checkpointing_enable({"use_reentrant": False})
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _encode(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if not len(pixels):
        return pixels.new_zeros((0, vae.config.latent_channels, 1, 1))
    latents = vae.encode(pixels.to(vae.dtype).contiguous()).latent_dist.sample(generator)
    return latents.float() * vae.config.scaling_factor


def depth_maps(depth_model, pixels: torch.Tensor, keep_depth: torch.Tensor, blank_depth: torch.Tensor) -> torch.Tensor:
    """Depth maps ``[B, h, w]``: of the source where depth is kept, else ``blank_depth``.

    ``blank_depth`` is ``shape_control.blank_depth_map``, the depth of the all-zero input that
    inference feeds the guider when shape control is off; the dataset zeroes the depth input of
    dropped rows, and their depth is that same map, computed once instead of per row.
    """
    maps = blank_depth.float().reshape(1, *blank_depth.shape[-2:]).repeat(len(pixels), 1, 1)
    if keep_depth.any():
        maps[keep_depth] = estimate_depth(depth_model, pixels[keep_depth]).float()
    return maps


def sample_timesteps(rows: int, total: int, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps in ``[0, total)``: uniform (the paper), or cubic, ``(1 - u^3) * total``,
    which puts about 80% of the samples in the noisier half (T2I-Adapter's non-uniform sampling)."""
    if sampling == "uniform":
        return torch.randint(0, total, (rows,), generator=generator, device=generator.device)
    if sampling == "cubic":
        u = torch.rand((rows,), generator=generator, device=generator.device, dtype=torch.float64)
        return ((1 - u ** 3) * total).long().clamp_(0, total - 1)
    raise ValueError(f"unknown timestep sampling '{sampling}'")


def training_noise(shape: torch.Size, offset: float, region: torch.Tensor | None,
                   generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise, plus "offset noise" when ``offset`` > 0: a per-sample, per-channel constant
    of standard deviation ``offset``, over the whole latent (``region`` None, as diffusers'
    ``--noise_offset``) or only where ``region`` (the latent mask) is 1.

    Why: the noise schedule never quite erases an image (at the last step sqrt(0.0047) = 7% of
    the latents is left), and over a region of many latent pixels the mean of that residue stands
    out of the averaged noise. A model being trained can therefore read the masked region's colour
    from the noisy latents themselves instead of from the reference, and at sampling time, which
    starts from pure noise, it reads random colours instead. A random constant in the masked region
    hides that mean: its colour can then only come from the reference. Over the whole latent the
    constant could be measured on the known background and subtracted, so it hides less.
    """
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if offset:
        constant = torch.randn(tuple(shape[:2]) + (1, 1), generator=generator, device=generator.device)
        noise = noise + offset * constant * (1.0 if region is None else region.to(noise.device))
    return noise


def prepare_inputs(batch: dict[str, torch.Tensor], vae, depth_model, blank_depth: torch.Tensor,
                   scheduler: DDPMScheduler, generator: torch.Generator,
                   timestep_sampling: str = "uniform", noise_offset: float = 0.0,
                   noise_offset_region: str = "image") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The forward inputs of :class:`TrainingNetworks` and the noise to predict, for one batch.

    Rows are reordered with the reference-dropped ones first. The VAE and the depth model are
    frozen and run without gradients; all random draws come from ``generator``; the noise is
    :func:`training_noise`'s.
    """
    order = torch.argsort(batch["keep_reference"].to(torch.int8), stable=True)
    batch = {key: value[order] for key, value in batch.items()}
    kept = int(batch["keep_reference"].sum())
    rows = len(order)
    with torch.no_grad():
        latents = _encode(vae, batch["source"], generator)
        masked_latents = _encode(vae, batch["collage"], generator)
        reference_latents = _encode(vae, batch["reference"][rows - kept:], generator)
        depth_map = depth_maps(depth_model, batch["depth_pixels"], batch["keep_depth"], blank_depth)
    latent_mask = F.interpolate(batch["mask"].float(), size=latents.shape[-2:])  # nearest, as inference
    region = latent_mask if noise_offset_region == "mask" else None
    noise = training_noise(latents.shape, noise_offset, region, generator).to(latents.device)
    timesteps = sample_timesteps(rows, scheduler.config.num_train_timesteps, timestep_sampling,
                                 generator).to(latents.device)
    inputs = {
        "noisy_latents": scheduler.add_noise(latents, noise, timesteps),
        "timesteps": timesteps,
        "latent_mask": latent_mask,
        "masked_latents": masked_latents,
        "depth_map": depth_map,
        "clip_pixels": batch["clip_pixels"],
        "reference_latents": reference_latents,
    }
    return inputs, noise


def batch_loss(networks: nn.Module, batch: dict[str, torch.Tensor], vae, depth_model, blank_depth: torch.Tensor,
               scheduler: DDPMScheduler, generator: torch.Generator, timestep_sampling: str = "uniform",
               noise_offset: float = 0.0, noise_offset_region: str = "image") -> torch.Tensor:
    """Mean squared error between the predicted and the added noise over the whole latent."""
    inputs, noise = prepare_inputs(batch, vae, depth_model, blank_depth, scheduler, generator, timestep_sampling,
                                   noise_offset, noise_offset_region)
    prediction = networks(**inputs)
    return F.mse_loss(prediction.float(), noise.float())
