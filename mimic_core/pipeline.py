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

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from . import preprocess as pre
from .attention import install_reference_attention
from .crop import CropBox, cut, plan_crop, region_masks, stitch, whole_image_box
from .deep_cache import DeepFeatureCache, whole_steps
from .edit_options import SAMPLERS, RegionOptions, SamplingOptions, check_sampler
from .errors import EditInterrupted, InputError, ModelFileError
from .files import release_mapped_pages
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

    The VAE posterior is kept as mean and std (per working size) rather than a sample, so each
    edit draws the posterior noise from its own seed in the authors' order and gives what a
    one-shot run gives. ``image`` is the square-padded reference, kept to encode it at another
    working size when an edit asks for one.
    """

    image: np.ndarray | None
    embeds_cond: torch.Tensor
    embeds_uncond: torch.Tensor
    posteriors: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    imitates: bool = True
    """False for :meth:`MimicBrushPipeline.no_reference`: nothing to imitate."""


@dataclass
class EditResult:
    """``images``: ``[N, H, W, 3]`` edits at the source's size, 0..1. ``latents``: the final
    (scaled) latents ``[N, 4, s/8, s/8]`` of the square that was edited (the last one when each
    masked region is edited on its own). ``square``: that square's ``N x s x s x 3`` uint8 model
    output before stitching. ``depth_map``: the depth the (last) depth feature was made from."""

    images: torch.Tensor
    latents: torch.Tensor
    square: np.ndarray
    depth_map: torch.Tensor


def make_scheduler(sampler: str = "ddim"):
    """DDIM exactly as the authors configure it (eta 0 is the step's default), or a fewer-step
    solver from diffusers on the same noise schedule (fast mode: not the authors' sampler)."""
    check_sampler(sampler)
    ddim = DDIMScheduler(**SCHEDULER_CONFIG)
    if sampler == "ddim":
        return ddim
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if sampler == "dpmpp_2m" else {}
    return SAMPLERS[sampler].from_config(ddim.config, **extra)


class MimicBrushPipeline:
    """Runs edits with one set of loaded models.

    It holds no state between edits but the depth map of the blank input (what "shape control
    off" feeds the guider), computed once; pass ``blank_depth`` when it was computed elsewhere
    (then no depth model is needed for edits with shape control off).

    ``release_encoders``: once the image encoder has embedded a reference and the depth model
    has estimated a depth, give back the memory their memory-mapped weights hold on the CPU
    (:func:`~mimic_core.files.release_mapped_pages`; they are read in again when next used).
    For callers that own the models (the CLI); a host that manages model memory itself, as
    ComfyUI does, leaves it off.
    """

    def __init__(self, models: MimicBrushModels, working_size: int = pre.WORKING_SIZE,
                 blank_depth: torch.Tensor | None = None, release_encoders: bool = False):
        self.models = models
        self.working_size = working_size
        self._blank_depth = blank_depth
        self.release_encoders = release_encoders

    def _done_with(self, module: torch.nn.Module | None) -> None:
        if self.release_encoders and module is not None:
            release_mapped_pages(module.parameters())

    def latent_size(self, working_size: int) -> int:
        return working_size // (2 ** (len(self.models.vae.config.block_out_channels) - 1))

    @property
    def scaling_factor(self) -> float:
        return self.models.vae.config.scaling_factor

    def _to_model(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.models.device, dtype=self.models.dtype)

    @torch.inference_mode()
    def _posterior(self, image_uint8: np.ndarray, working_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self._to_model(pre.to_model_range(pre.resize_lanczos(image_uint8, working_size)))
        posterior = self.models.vae.encode(pixels.contiguous()).latent_dist
        return posterior.mean, posterior.std

    @torch.inference_mode()
    def encode_reference(self, reference: torch.Tensor) -> EncodedReference:
        """Prepare a reference image (``[1, H, W, C]`` or ``[H, W, C]``, 0..1) for any number of edits."""
        padded = pre.pad_to_square(pre.image_to_uint8(reference, "reference image"), 255)
        pixels = self._to_model(pre.clip_pixels(padded))
        embeds = []
        for clip_input in (pixels, torch.zeros_like(pixels)):
            hidden = self.models.image_encoder(clip_input, output_hidden_states=True).hidden_states[-2]
            embeds.append(self.models.image_proj(hidden))
        self._done_with(self.models.image_encoder)
        encoded = EncodedReference(padded, embeds[0], embeds[1])
        encoded.posteriors[self.working_size] = self._posterior(padded, self.working_size)
        return encoded

    @torch.inference_mode()
    def no_reference(self) -> EncodedReference:
        """The conditioning of an edit with no reference: the model's unconditional branch alone
        (all-zero CLIP input, no reference attention, no guidance), which training's reference
        dropout teaches. It makes MimicBrush a plain inpainter: a baseline, not an edit mode."""
        side = self.models.image_encoder.config.image_size
        blank = self._to_model(torch.zeros(1, 3, side, side))
        hidden = self.models.image_encoder(blank, output_hidden_states=True).hidden_states[-2]
        embeds = self.models.image_proj(hidden)
        self._done_with(self.models.image_encoder)
        return EncodedReference(None, embeds, embeds, imitates=False)

    def _reference_posterior(self, encoded: EncodedReference, working_size: int):
        if working_size not in encoded.posteriors:
            encoded.posteriors[working_size] = self._posterior(encoded.image, working_size)
        return tuple(t.to(self.models.device, self.models.dtype) for t in encoded.posteriors[working_size])

    @torch.inference_mode()
    def depth_map(self, source: torch.Tensor | None) -> torch.Tensor:
        """Depth of the square-padded source; ``None`` gives the depth of the blank input that
        the released model sees when shape control is off (not a zero map)."""
        if source is None and self._blank_depth is not None:
            return self._blank_depth
        if self.models.depth_model is None:
            raise ModelFileError("No depth model is loaded. " + DEPTH_MODEL_HINT)
        if source is None:
            self._blank_depth = depth = blank_depth_map(self.models.depth_model)
        else:
            depth = square_depth_map(self.models.depth_model, pre.image_to_uint8(source, "source image"))
        self._done_with(self.models.depth_model)
        return depth

    @torch.inference_mode()
    def edit(self, source: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | EncodedReference, *,
             keep_shape: bool = False, depth_map: torch.Tensor | None = None, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, seed: int = 0, num_samples: int = 1,
             region: str = "whole", context: float = 2.0, min_side: int = 256, working_size: int | None = None,
             sampler: str = "ddim", reference_every: int = 1, guided_fraction: float = 1.0,
             deep_features_every: int = 1, callback: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
             generator_device: torch.device | str | None = None) -> EditResult:
        """Regenerate the masked region of ``source`` by imitating ``reference``.

        ``source``: ``[1, H, W, C]`` 0..1; ``mask``: ``[H, W]`` or ``[1, H, W]``, 1 = edit (resized to
        the source if it is the same shape at another size); ``reference``: an image or an
        :class:`EncodedReference` (:meth:`no_reference` for the plain-inpainting baseline).
        ``keep_shape`` turns on shape control (the depth of the source guides the edit);
        ``depth_map`` supplies that depth (of the square-padded source) instead of estimating it.

        ``region`` says what is edited at ``working_size`` (default 512; a multiple of 64 up to
        1024): ``"whole"`` the whole image padded to a square, as the authors do; ``"crop"`` a
        square around all masked pixels (``context`` times the mask's extent, at least
        ``min_side`` source pixels), stitched back into the untouched original; ``"crop_each"``
        one such crop per connected masked region.

        Fast mode, trading exactness for speed: ``sampler`` "dpmpp_2m", "unipc" or "euler" (diffusers'
        solvers on the same schedule; 20-25 steps instead of DDIM's 50) and ``reference_every`` k > 1
        (reference features recomputed every k steps; 0: computed once) and ``guided_fraction`` f < 1
        (classifier-free guidance on the first f of the steps only; the later ones, which refine
        detail, run the conditional branch alone at half the imitative U-Net's cost) and
        ``deep_features_every`` k > 1 (the imitative U-Net's deep features recomputed every k steps;
        between, only its outermost level runs: :mod:`mimic_core.deep_cache`). The defaults
        ("ddim", 1, 1.0, 1) are the authors' sampling.

        The seed drives one generator on ``generator_device`` (default: the models' device, as
        the authors' code) in the authors' order: reference posterior, initial noise, collage
        posterior (repeated per region). ``callback(step, total, latents)`` runs after each step;
        ``should_stop()`` is asked before each step and ends the edit with :class:`EditInterrupted`.
        """
        working_size = working_size or self.working_size
        SamplingOptions(steps, guidance, seed, num_samples, working_size, sampler, reference_every, guided_fraction,
                        deep_features_every)
        RegionOptions(region, context, min_side)
        if depth_map is not None and not torch.isfinite(depth_map).all():
            raise InputError("The depth map holds NaN or infinite values: give the depth of the square-padded "
                             "source, or leave it out to estimate it.")
        source_uint8 = pre.image_to_uint8(source, "source image")
        height, width = source_uint8.shape[:2]
        binary_mask = pre.mask_to_binary(mask, height, width)
        if isinstance(reference, EncodedReference) and not reference.imitates:
            encoded = reference
        elif isinstance(reference, EncodedReference):
            encoded = EncodedReference(reference.image, reference.embeds_cond.to(self.models.device, self.models.dtype),
                                       reference.embeds_uncond.to(self.models.device, self.models.dtype),
                                       reference.posteriors)
        else:
            encoded = self.encode_reference(reference)

        if region == "whole":
            regions = [(whole_image_box(height, width), binary_mask)]
        elif region == "crop":
            regions = [(plan_crop(binary_mask, context, min_side), binary_mask)]
        else:
            regions = [(plan_crop(part, context, min_side), part) for part in region_masks(binary_mask)]
        generator = torch.Generator(device=generator_device or self.models.device).manual_seed(int(seed))
        outputs = np.repeat(source_uint8[None], num_samples, axis=0)
        for box, region_mask in regions:
            if keep_shape and depth_map is None:
                region_depth = self.depth_map(pre.uint8_to_image(cut(source_uint8, box, 255)))
            elif keep_shape:
                region_depth = crop_depth_map(depth_map, box, height, width)
            else:
                region_depth = self.depth_map(None)
            latents, square = self._edit_square(
                cut(source_uint8, box, 255), cut(region_mask, box, 0), encoded, region_depth, working_size,
                generator, num_samples, steps, guidance, callback, should_stop, sampler, reference_every,
                guided_fraction, deep_features_every)
            outputs = np.stack([stitch(output, region_mask, box, image) for output, image in zip(outputs, square)])
        return EditResult(pre.uint8_to_image(outputs), latents, square, region_depth)

    def _edit_square(self, square_source: np.ndarray, square_mask: np.ndarray, encoded: EncodedReference,
                     depth_map: torch.Tensor, working_size: int, generator: torch.Generator, num_samples: int,
                     steps: int, guidance: float, callback, should_stop, sampler: str = "ddim",
                     reference_every: int = 1, guided_fraction: float = 1.0,
                     deep_features_every: int = 1) -> tuple[torch.Tensor, np.ndarray]:
        """One square (padded image or crop) through the model: final latents and the uint8 output."""
        device, dtype = self.models.device, self.models.dtype
        latent_size = self.latent_size(working_size)
        collage = pre.make_collage(square_source, square_mask)
        mask_at_size = pre.binary_mask_at(square_mask, working_size)
        depth_feature = self.models.depth_guider(self._to_model(depth_map), size=working_size)

        shape = (1, 4, latent_size, latent_size)
        reference_noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        noise = randn_tensor((num_samples,) + shape[1:], generator=generator, device=device, dtype=dtype)
        collage_mean, collage_std = self._posterior(collage, working_size)
        collage_noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)

        scale = self.scaling_factor
        reference_latents = None
        if encoded.imitates:
            reference_mean, reference_std = self._reference_posterior(encoded, working_size)
            reference_latents = (reference_mean + reference_std * reference_noise) * scale
        masked_latents = (collage_mean + collage_std * collage_noise) * scale
        latents = self._denoise(
            noise, reference_latents, masked_latents, self._to_model(pre.latent_mask(mask_at_size, latent_size)),
            depth_feature, encoded, steps, guidance, callback, should_stop, sampler, reference_every, guided_fraction,
            deep_features_every,
        )
        square = np.stack([pre.output_to_uint8(self.models.vae.decode(latent[None] / scale).sample)[0]
                           for latent in latents])
        return latents, square

    def _denoise(self, noise, reference_latents, masked_latents, latent_mask, depth_feature,
                 encoded: EncodedReference, steps, guidance, callback, should_stop,
                 sampler: str = "ddim", reference_every: int = 1, guided_fraction: float = 1.0,
                 deep_features_every: int = 1) -> torch.Tensor:
        """The sampling loop. Fast mode, not exact: ``reference_every`` k > 1 recomputes the reference
        features every k steps (0: once, at the first step) instead of at every step;
        ``guided_fraction`` < 1 guides only the first ``round(guided_fraction * steps)`` steps;
        ``deep_features_every`` k > 1 runs the whole imitative U-Net every k steps and only its
        outermost level between (a step after guidance ends runs whole: its batch is another)."""
        models = self.models
        scheduler = make_scheduler(sampler)
        scheduler.set_timesteps(steps, device=models.device)
        samples = noise.shape[0]
        total = len(scheduler.timesteps)
        guided_steps = round(guided_fraction * total) if guidance > 1.0 and encoded.imitates else 0
        cond = encoded.embeds_cond.expand(samples, -1, -1)
        guided_context = torch.cat([encoded.embeds_uncond.expand(samples, -1, -1), cond])
        conditioning = torch.cat([latent_mask, masked_latents, depth_feature], dim=1)
        latents = noise * scheduler.init_noise_sigma
        deep = DeepFeatureCache(models.unet) if deep_features_every > 1 else None
        whole = whole_steps(total, guided_steps, deep_features_every)
        with install_reference_attention(models.referencenet, models.unet) as handle:
            for index, timestep in enumerate(scheduler.timesteps):
                if should_stop is not None and should_stop():
                    raise EditInterrupted(f"Stopped before step {index + 1} of {total}.")
                if encoded.imitates and (index == 0 or (reference_every > 0 and index % reference_every == 0)):
                    handle.record(reference_latents, timestep, encoded.embeds_cond)
                handle.bank.conditional_rows = samples if encoded.imitates else 0
                guided = index < guided_steps
                rows = 2 * samples if guided else samples
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, timestep)
                model_input = torch.cat([model_input, conditioning.expand(rows, -1, -1, -1)], dim=1)
                context = guided_context if guided else cond
                if deep is None:
                    eps = models.unet(model_input, timestep, encoder_hidden_states=context).sample
                elif whole[index]:
                    eps = deep.full(model_input, timestep, context)
                else:
                    eps = deep.shallow(model_input, timestep, context)
                if guided:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + guidance * (eps_cond - eps_uncond)
                latents = scheduler.step(eps, timestep, latents).prev_sample
                if callback is not None:
                    callback(index + 1, total, latents)
        return latents


def crop_depth_map(depth_map: torch.Tensor, box: CropBox, height: int, width: int) -> torch.Tensor:
    """The part of a depth map of the square-padded image that a crop box covers, resampled."""
    whole = whole_image_box(height, width)
    if box == whole:
        return depth_map
    depth = depth_map.reshape(1, 1, *depth_map.shape[-2:]).float()
    scale = depth.shape[-1] / whole.side
    top, left = (box.top - whole.top) * scale, (box.left - whole.left) * scale
    side = box.side * scale
    size = depth.shape[-1]
    ys = torch.linspace(top, top + side, size) / max(size - 1, 1) * 2 - 1
    xs = torch.linspace(left, left + side, size) / max(size - 1, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None].to(depth.device)
    return torch.nn.functional.grid_sample(depth, grid, mode="bilinear", padding_mode="border",
                                           align_corners=True)[0]
