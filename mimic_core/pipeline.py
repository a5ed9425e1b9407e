"""MimicBrush inference: the authors' demo path, computed with less work.

An edit pads source, mask and reference to squares, builds the collage (the source with the
masked pixels black), encodes collage and reference with the VAE, embeds the reference with the
CLIP image encoder, turns a depth map into the depth feature, and runs DDIM with classifier-free
guidance. At every step the reference U-Net runs on the clean reference latents (conditional
branch only, batch 1: its features are the same for every sample) and its recorded features
join the imitative U-Net's self-attention. The 512² result is resized back, cropped, and
blended into the source with a feathered mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from . import preprocess as pre
from .attention import install_reference_attention
from .errors import EditInterrupted, InputError, ModelFileError
from .models import MimicBrushModels
from .shape_control import blank_depth_map, square_depth_map

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
DEPTH_MODEL_HINT = (
    "Load Depth Anything (depth_model/depth_anything_vitb14.pth from the Hugging Face repository "
    "xichenhku/MimicBrush): the released model consumes a depth feature in every edit, with shape "
    "control on or off."
)

StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class EncodedReference:
    """A reference image prepared once and reusable for many edits.

    The VAE posterior is kept as mean and std rather than a sample, so each edit draws the
    posterior noise from its own seed in the authors' order and gives what a one-shot run gives.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    embeds_cond: torch.Tensor
    embeds_uncond: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> "EncodedReference":
        return EncodedReference(*(t.to(device=device, dtype=dtype) for t in
                                  (self.latent_mean, self.latent_std, self.embeds_cond, self.embeds_uncond)))


@dataclass
class EditResult:
    """``images``: ``[N, H, W, 3]`` edits at the source's size, 0..1. ``latents``: the final
    (scaled) latents ``[N, 4, 64, 64]``. ``square``: the ``N x 512 x 512 x 3`` uint8 model output
    before paste-back. ``depth_map``: the depth estimate the depth feature was made from."""

    images: torch.Tensor
    latents: torch.Tensor
    square: np.ndarray
    depth_map: torch.Tensor


def make_scheduler() -> DDIMScheduler:
    """DDIM exactly as the authors configure it (eta 0 is the step's default)."""
    return DDIMScheduler(**SCHEDULER_CONFIG)


class MimicBrushPipeline:
    """Runs edits with one set of loaded models.

    It holds no state between edits but the depth map of the blank input (what "shape control
    off" feeds the guider), computed once; pass ``blank_depth`` when it was computed elsewhere
    (then no depth model is needed for edits with shape control off).
    """

    def __init__(self, models: MimicBrushModels, working_size: int = pre.WORKING_SIZE,
                 blank_depth: torch.Tensor | None = None):
        self.models = models
        self.working_size = working_size
        self._blank_depth = blank_depth

    @property
    def latent_size(self) -> int:
        return self.working_size // (2 ** (len(self.models.vae.config.block_out_channels) - 1))

    @property
    def scaling_factor(self) -> float:
        return self.models.vae.config.scaling_factor

    def _to_model(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.models.device, dtype=self.models.dtype)

    @torch.inference_mode()
    def _posterior(self, image_uint8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self._to_model(pre.to_model_range(pre.resize_lanczos(image_uint8, self.working_size)))
        posterior = self.models.vae.encode(pixels.contiguous()).latent_dist
        return posterior.mean, posterior.std

    @torch.inference_mode()
    def encode_reference(self, reference: torch.Tensor) -> EncodedReference:
        """Prepare a reference image (``[1, H, W, C]`` or ``[H, W, C]``, 0..1) for any number of edits."""
        padded = pre.pad_to_square(pre.image_to_uint8(reference, "reference image"), 255)
        mean, std = self._posterior(padded)
        pixels = self._to_model(pre.clip_pixels(padded))
        embeds = []
        for clip_input in (pixels, torch.zeros_like(pixels)):
            hidden = self.models.image_encoder(clip_input, output_hidden_states=True).hidden_states[-2]
            embeds.append(self.models.image_proj(hidden))
        return EncodedReference(mean, std, embeds[0], embeds[1])

    @torch.inference_mode()
    def depth_map(self, source: torch.Tensor | None) -> torch.Tensor:
        """Depth of the square-padded source; ``None`` gives the depth of the blank input that
        the released model sees when shape control is off (not a zero map)."""
        if source is None and self._blank_depth is not None:
            return self._blank_depth
        if self.models.depth_model is None:
            raise ModelFileError("No depth model is loaded. " + DEPTH_MODEL_HINT)
        if source is None:
            self._blank_depth = blank_depth_map(self.models.depth_model)
            return self._blank_depth
        return square_depth_map(self.models.depth_model, pre.image_to_uint8(source, "source image"))

    @torch.inference_mode()
    def edit(self, source: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | EncodedReference, *,
             keep_shape: bool = False, depth_map: torch.Tensor | None = None, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, seed: int = 0, num_samples: int = 1,
             callback: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
             generator_device: torch.device | str | None = None) -> EditResult:
        """Regenerate the masked region of ``source`` by imitating ``reference``.

        ``source``: ``[1, H, W, C]`` 0..1; ``mask``: ``[H, W]`` or ``[1, H, W]``, 1 = edit (resized to
        the source if its size differs); ``reference``: an image or an :class:`EncodedReference`.
        ``keep_shape`` turns on shape control (the depth of the source guides the edit);
        ``depth_map`` supplies that depth (of the square-padded source) instead of estimating it.
        The seed drives one generator on ``generator_device`` (default: the models' device, as
        the authors' code) in the authors' order: reference posterior, initial noise, collage
        posterior. ``callback(step, total, latents)`` runs after each step; ``should_stop()`` is
        asked before each step and ends the edit with :class:`EditInterrupted`.
        """
        if steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}.")
        if num_samples < 1:
            raise InputError(f"num_samples must be at least 1, got {num_samples}.")
        source_uint8 = pre.image_to_uint8(source, "source image")
        height, width = source_uint8.shape[:2]
        binary_mask = pre.mask_to_binary(mask, height, width)
        if isinstance(reference, EncodedReference):
            encoded = reference.to(self.models.device, self.models.dtype)
        else:
            encoded = self.encode_reference(reference)

        padded_source = pre.pad_to_square(source_uint8, 255)
        padded_mask = pre.pad_to_square(binary_mask, 0)
        collage = pre.make_collage(padded_source, padded_mask)
        mask_at_size = pre.binary_mask_at(padded_mask, self.working_size)
        if depth_map is None:
            depth_map = self.depth_map(source if keep_shape else None)
        depth_feature = self.models.depth_guider(self._to_model(depth_map), size=self.working_size)

        device, dtype = self.models.device, self.models.dtype
        generator = torch.Generator(device=generator_device or device).manual_seed(int(seed))
        shape = (1, 4, self.latent_size, self.latent_size)
        reference_noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        noise = randn_tensor((num_samples,) + shape[1:], generator=generator, device=device, dtype=dtype)
        collage_mean, collage_std = self._posterior(collage)
        collage_noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)

        scale = self.scaling_factor
        reference_latents = (encoded.latent_mean + encoded.latent_std * reference_noise) * scale
        masked_latents = (collage_mean + collage_std * collage_noise) * scale
        latents = self._denoise(
            noise, reference_latents, masked_latents, self._to_model(pre.latent_mask(mask_at_size, self.latent_size)),
            depth_feature, encoded, steps, guidance, callback, should_stop,
        )
        square = np.stack([pre.output_to_uint8(self.models.vae.decode(latent[None] / scale).sample)[0]
                           for latent in latents])
        composites = np.stack([pre.paste_back(pre.crop_back(image, height, width), source_uint8, binary_mask)
                               for image in square])
        return EditResult(pre.uint8_to_image(composites), latents, square, depth_map)

    def _denoise(self, noise, reference_latents, masked_latents, latent_mask, depth_feature,
                 encoded: EncodedReference, steps, guidance, callback, should_stop) -> torch.Tensor:
        models = self.models
        scheduler = make_scheduler()
        scheduler.set_timesteps(steps, device=models.device)
        samples = noise.shape[0]
        guided = guidance > 1.0
        rows = 2 * samples if guided else samples
        cond = encoded.embeds_cond.expand(samples, -1, -1)
        context = torch.cat([encoded.embeds_uncond.expand(samples, -1, -1), cond]) if guided else cond
        conditioning = torch.cat([latent_mask, masked_latents, depth_feature], dim=1).expand(rows, -1, -1, -1)
        latents = noise * scheduler.init_noise_sigma
        total = len(scheduler.timesteps)
        with install_reference_attention(models.referencenet, models.unet) as handle:
            for index, timestep in enumerate(scheduler.timesteps):
                if should_stop is not None and should_stop():
                    raise EditInterrupted(f"Stopped before step {index + 1} of {total}.")
                handle.bank.clear()
                models.referencenet(reference_latents, timestep, encoder_hidden_states=encoded.embeds_cond)
                handle.bank.conditional_rows = samples
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, timestep)
                model_input = torch.cat([model_input, conditioning], dim=1)
                eps = models.unet(model_input, timestep, encoder_hidden_states=context).sample
                if guided:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + guidance * (eps_cond - eps_uncond)
                latents = scheduler.step(eps, timestep, latents).prev_sample
                if callback is not None:
                    callback(index + 1, total, latents)
        return latents
