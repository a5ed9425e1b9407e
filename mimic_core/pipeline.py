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

import contextlib
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from . import preprocess as pre
from .attention import install_reference_attention
from .blank_embedding import compute_blank_embedding, expected_shape, weights_state
from .crop import CropBox, cut, plan_crop, region_masks, stitch, whole_image_box
from .deep_cache import DeepFeatureCache, whole_steps
from .edit_options import SAMPLERS, RegionOptions, SamplingOptions, check_sampler
from .errors import EditInterrupted, InputError, ModelFileError
from .files import mapped_pages_released_as_used
from .models import MimicBrushModels
from .shape_control import blank_depth_map, square_depth_map
from .winograd import workspace_released_after

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
ImageInput = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class EncodedReference:
    """A reference prepared once and reusable for many edits: one image, or several taken together.

    The VAE posterior is kept as mean and std (per working size, ``[R, 4, h, w]`` for R images)
    rather than a sample, so each edit draws the posterior noise from its own seed in the
    authors' order (several images: the first there, the others from a stream of their own;
    :class:`SeedStreams`) and gives what a one-shot run gives. ``images`` are the square-padded
    references, kept to encode them at another working size when an edit asks for one;
    ``masks`` their square-padded 0/1 reference masks (1 = imitate), or None: imitate all.
    ``embeds_cond`` is ``[R, T, C]``, each image's own embedding (the reference U-Net runs on
    each with its own); the imitative U-Net's context joins them (:meth:`contexts`).
    """

    images: list[np.ndarray]
    embeds_cond: torch.Tensor
    embeds_uncond: torch.Tensor
    masks: list[np.ndarray] | None = None
    posteriors: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    imitates: bool = True
    """False for :meth:`MimicBrushPipeline.no_reference`: nothing to imitate."""

    def contexts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The imitative U-Net's conditional and unconditional contexts, ``[1, R*T, C]`` each: the
        images' embeddings one after another, and the blank embedding as many times (the same
        attention as one copy; the two must have one length to share a guided batch)."""
        count, tokens, width = self.embeds_cond.shape
        return self.embeds_cond.reshape(1, count * tokens, width), self.embeds_uncond.repeat(1, count, 1)

    def latent_channels(self) -> set[int]:
        """The channel counts of the VAE latents it holds (none before any working size is encoded)."""
        return {mean.shape[1] for mean, _ in self.posteriors.values()}

    def keep_at(self, working_size: int, latent_size: int) -> torch.Tensor | None:
        """``[R, 1, h, w]`` 0/1 on the latent grid: where on each image to imitate (None: everywhere)."""
        if self.masks is None:
            return None
        return torch.cat([pre.latent_mask(pre.binary_mask_at(mask, working_size), latent_size) for mask in self.masks])

    @classmethod
    def joined(cls, references: Sequence[EncodedReference]) -> EncodedReference:
        """Several encoded references taken together as one, as if their images had been encoded
        in one :meth:`MimicBrushPipeline.encode_reference` call; each keeps its own mask, and one
        encoded without a mask is imitated whole (its square's padding included, as alone).
        This lets each image be encoded on its own, at its own size, with or without a mask."""
        if not references:
            raise InputError("No reference was given to join: give at least one encoded reference.")
        if not all(reference.imitates for reference in references):
            raise InputError("An edit without a reference cannot be joined with references: leave it out.")
        embeddings = {tuple(reference.embeds_cond.shape[1:]) for reference in references}
        if len(embeddings) > 1 or len(set().union(*(reference.latent_channels() for reference in references))) > 1:
            raise InputError("The references to join were encoded by MimicBrush models of different architectures: "
                             "encode every reference with the model that edits.")
        images = [image for reference in references for image in reference.images]
        masks = None
        if any(reference.masks is not None for reference in references):
            masks = [mask for reference in references for mask in (
                reference.masks if reference.masks is not None
                else [np.ones(image.shape[:2], np.uint8) for image in reference.images])]
        shared_sizes = set.intersection(*(set(reference.posteriors) for reference in references))
        posteriors = {size: tuple(torch.cat([reference.posteriors[size][part] for reference in references])
                                  for part in range(2)) for size in shared_sizes}
        return cls(images, torch.cat([reference.embeds_cond for reference in references]),
                   references[0].embeds_uncond, masks, posteriors)


EXTRA_VIEWS_SEED_OFFSET = 2**63
"""The stream of further reference images' noise is seeded with ``(seed + this) mod 2**64``: another
stream than the seed's own for every seed."""


@dataclass(frozen=True)
class SeedStreams:
    """The random streams of one edit, both from its seed. ``main`` draws in the authors' order, per
    edited square: the (first) reference image's posterior noise, the initial noise, the collage's
    posterior noise. ``extra_views`` draws the posterior noise of the second and further reference
    images, so the main stream never depends on how many views an edit has: one seed starts every
    square from the same noise with one view or several."""

    main: torch.Generator
    extra_views: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device | str) -> SeedStreams:
        return cls(torch.Generator(device=device).manual_seed(seed),
                   torch.Generator(device=device).manual_seed((seed + EXTRA_VIEWS_SEED_OFFSET) % 2**64))


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

    It holds no state between edits but what the blank inputs give, each a function of the weights
    alone: the depth map of the blank input (what "shape control off" feeds the guider), computed
    once (pass ``blank_depth`` when it was computed elsewhere; then no depth model is needed for
    edits with shape control off), and the CLIP embedding of the blank input (the unconditional
    context), kept while the image encoder's and projection's weights stay what and where they were.

    ``release_encoders``: as the image encoder embeds a reference and the depth model estimates a
    depth, give back the memory their weights hold on the CPU where they are mapped from their file
    (a ``.safetensors`` file or a zip-format torch file such as the authors' ``.pth``), layer by layer
    (:func:`~mimic_core.files.mapped_pages_released_as_used`; they are read in again when next used).
    A transformers depth folder is read otherwise, and keeps its memory.
    For callers that own the models (the CLI); a host that manages model memory itself, as
    ComfyUI does, leaves it off.
    """

    def __init__(self, models: MimicBrushModels, working_size: int = pre.WORKING_SIZE,
                 blank_depth: torch.Tensor | None = None, release_encoders: bool = False):
        self.models = models
        self.working_size = working_size
        self._blank_depth = blank_depth
        self._blank_embedding: tuple[tuple, torch.Tensor] | None = None
        """The blank input's projected embedding and the :func:`~mimic_core.blank_embedding.weights_state` it came from."""
        self.release_encoders = release_encoders

    def _running_once(self, module: torch.nn.Module | None):
        """Context for a pass of the image encoder or depth model: with ``release_encoders``, its
        weights' pages are given back layer by layer as it runs
        (:func:`~mimic_core.files.mapped_pages_released_as_used`)."""
        if self.release_encoders and module is not None:
            return mapped_pages_released_as_used(module)
        return contextlib.nullcontext()

    @property
    def scaling_factor(self) -> float:
        return self.models.vae.config.scaling_factor

    def _to_model(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.models.device, dtype=self.models.dtype)

    @torch.inference_mode()
    def _posterior(self, images_uint8: list[np.ndarray], working_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.cat([pre.to_model_range(pre.resize_lanczos(image, working_size)) for image in images_uint8])
        posterior = self.models.vae.encode(self._to_model(pixels).contiguous()).latent_dist
        return posterior.mean, posterior.std

    @torch.inference_mode()
    @workspace_released_after()
    def encode_reference(self, reference: ImageInput, mask: ImageInput | None = None) -> EncodedReference:
        """Prepare a reference for any number of edits.

        ``reference``: one image (``[1, H, W, C]`` or ``[H, W, C]``, 0..1), or a list of them taken
        together as one reference (two views of one object): the reference U-Net runs on all of
        them and the edit attends to all their tokens and embeddings. ``mask``: optional, one per
        image (``[H, W]``, 1 = imitate, resized to its image like the edit mask): what on the
        reference is imitated. Attention keys outside it (the square's padding included) are left
        out, and the CLIP input has the rest blanked to white (as the paper's baselines use their
        reference masks); masks covering their whole images are the same as none.
        """
        images = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        if not images:
            raise InputError("No reference image was given: give one image, or a list of images of one reference.")
        masks = None if mask is None else list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if masks is not None and len(masks) != len(images):
            raise InputError(f"{len(masks)} reference masks were given for {len(images)} reference images: give one "
                             "mask per reference image, or none.")
        pictures = [pre.image_to_uint8(image, "reference image") for image in images]
        padded = [pre.pad_to_square(picture, 255) for picture in pictures]
        binary = None if masks is None else [pre.mask_to_binary(mask, *picture.shape[:2], of="reference")
                                             for mask, picture in zip(masks, pictures)]
        # masks that cover their whole images restrict nothing: the edit is the one without them
        padded_masks = None if binary is None or all(m.all() for m in binary) else [
            pre.pad_to_square(m, 0) for m in binary]
        seen = padded if padded_masks is None else [
            np.where(mask[..., None] > 0, image, np.uint8(255)) for image, mask in zip(padded, padded_masks)]
        pixels = self._to_model(torch.cat([pre.clip_pixels(image) for image in seen]))
        blank = self.blank_embedding()  # first, so that only the last pass gives the weights back
        with self._running_once(self.models.image_encoder):
            hidden = self.models.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
            embeds = self.models.image_proj(hidden)
        encoded = EncodedReference(padded, embeds, blank, padded_masks)
        encoded.posteriors[self.working_size] = self._posterior(padded, self.working_size)
        return encoded

    @torch.inference_mode()
    def no_reference(self) -> EncodedReference:
        """The conditioning of an edit with no reference: the model's unconditional branch alone
        (all-zero CLIP input, no reference attention, no guidance), which training's reference
        dropout teaches. It makes MimicBrush a plain inpainter: a baseline, not an edit mode."""
        with self._running_once(self.models.image_encoder):
            embeds = self.blank_embedding()
        return EncodedReference([], embeds, embeds, imitates=False)

    @torch.inference_mode()
    def blank_embedding(self) -> torch.Tensor:
        """The projected CLIP embedding ``[1, T, C]`` of the all-zero input: the unconditional context.
        Taken from the checkpoint file where it carries one for these very weights, else computed
        (a whole image-encoder pass, 2.4 s of a 12 s reference encoding at the released size on a
        2-core CPU); kept while every weight of the image encoder and projection is the tensor it was
        (a move, cast or in-place write takes or computes it again)."""
        encoder, projection = self.models.image_encoder, self.models.image_proj
        weights = weights_state(encoder, projection)
        if self._blank_embedding is None or self._blank_embedding[0] != weights:
            stored = self.models.stored_blank_embedding
            embedding = (stored.embedding.clone() if stored is not None and stored.weights == weights
                         else compute_blank_embedding(encoder, projection))
            self._blank_embedding = (weights, embedding)
        return self._blank_embedding[1]

    def _require_own_encoding(self, reference: EncodedReference) -> None:
        """Refuse, before any network runs, a reference encoded by a MimicBrush model of another
        architecture: its image embeddings (tokens by width) or VAE latents (channels) are not this
        model's, and the U-Nets would fail on them deep inside a step."""
        expected = expected_shape(self.models.image_encoder, self.models.image_proj)[1:]
        embeddings = {tuple(reference.embeds_cond.shape[1:]), tuple(reference.embeds_uncond.shape[1:])}
        channels = reference.latent_channels()
        latent_channels = self.models.vae.config.latent_channels
        if embeddings != {expected}:
            tokens, width = next(iter(embeddings - {expected}))
            found = f"image embeddings of {tokens} tokens of {width}, where this model's are {expected[0]} of {expected[1]}"
        elif channels - {latent_channels}:
            found = f"VAE latents of {max(channels - {latent_channels})} channels, where this model's have {latent_channels}"
        else:
            return
        raise InputError(f"The encoded reference was made by a MimicBrush model of another architecture ({found}): "
                         "encode the reference with the model that edits (in ComfyUI, connect MimicBrush Encode "
                         "Reference to the MimicBrush Loader the sampler uses).")

    def _reference_posterior(self, encoded: EncodedReference, working_size: int):
        if working_size not in encoded.posteriors:
            encoded.posteriors[working_size] = self._posterior(encoded.images, working_size)
        return tuple(t.to(self.models.device, self.models.dtype) for t in encoded.posteriors[working_size])

    @torch.inference_mode()
    def depth_map(self, source: torch.Tensor | None) -> torch.Tensor:
        """Depth of the square-padded source; ``None`` gives the depth of the blank input that
        the released model sees when shape control is off (not a zero map)."""
        if source is None and self._blank_depth is not None:
            return self._blank_depth
        if self.models.depth_model is None:
            raise ModelFileError("No depth model is loaded. " + DEPTH_MODEL_HINT)
        with self._running_once(self.models.depth_model):
            if source is None:
                self._blank_depth = depth = blank_depth_map(self.models.depth_model)
            else:
                depth = square_depth_map(self.models.depth_model, pre.image_to_uint8(source, "source image"))
        return depth

    def edit_options(self, sampling: SamplingOptions | None = None, regions: RegionOptions | None = None,
                     **settings) -> tuple[SamplingOptions, RegionOptions]:
        """The options of one edit, checked: ``sampling`` and ``regions`` as given (their defaults where
        not), with any single setting named in ``settings`` (a field of either, e.g. ``steps=25``) put
        in its place, and this pipeline's working size where none is given."""
        sampling_names = {option.name for option in fields(SamplingOptions)}
        region_names = {option.name for option in fields(RegionOptions)}
        unknown = sorted(set(settings) - sampling_names - region_names)
        if unknown:
            raise TypeError(f"edit() got unknown settings {unknown}; the settings are {sorted(sampling_names)} "
                            f"and {sorted(region_names)}.")
        sampling = sampling or SamplingOptions()
        regions = regions or RegionOptions()
        sampling = replace(sampling, **{k: v for k, v in settings.items() if k in sampling_names})
        if sampling.working_size is None:
            sampling = replace(sampling, working_size=self.working_size)
        regions = replace(regions, **{k: v for k, v in settings.items() if k in region_names})
        return sampling, regions

    @torch.inference_mode()
    @workspace_released_after()
    def edit(self, source: torch.Tensor, mask: torch.Tensor, reference: ImageInput | EncodedReference, *,
             keep_shape: bool = False, depth_map: torch.Tensor | None = None,
             sampling: SamplingOptions | None = None, regions: RegionOptions | None = None,
             callback: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
             generator_device: torch.device | str | None = None, **settings) -> EditResult:
        """Regenerate the masked region of ``source`` by imitating ``reference``.

        ``source``: ``[1, H, W, C]`` 0..1; ``mask``: ``[H, W]`` or ``[1, H, W]``, 1 = edit (resized to
        the source if it is the same shape at another size); ``reference``: an image, a list of
        images of one reference, or an :class:`EncodedReference` (:meth:`encode_reference`, which
        also takes a reference mask; :meth:`no_reference` for the plain-inpainting baseline).
        ``keep_shape`` turns on shape control (the depth of the source guides the edit);
        ``depth_map`` supplies that depth (of the square-padded source) instead of estimating it.

        ``sampling`` (:class:`~mimic_core.edit_options.SamplingOptions`) says how the model samples
        and ``regions`` (:class:`~mimic_core.edit_options.RegionOptions`) what it works on; any of
        their fields may instead be given by name (``steps=25, region="crop"``). Their defaults are
        the authors' edit of the whole padded image.

        The seed drives one generator on ``generator_device`` (default: the models' device, as
        the authors' code) in the authors' order: reference posterior, initial noise, collage
        posterior (repeated per region); with several reference images that order holds for the
        first, and the others' posterior noise comes from a stream of its own
        (:class:`SeedStreams`), so the same seed starts from the same noise whatever views are added.
        ``callback(step, total, latents)`` runs after each step; ``should_stop()`` is asked before
        each step and ends the edit with :class:`EditInterrupted`.
        """
        sampling, regions = self.edit_options(sampling, regions, **settings)
        if depth_map is not None and not torch.isfinite(depth_map).all():
            raise InputError("The depth map holds NaN or infinite values: give the depth of the square-padded "
                             "source, or leave it out to estimate it.")
        source_uint8 = pre.image_to_uint8(source, "source image")
        height, width = source_uint8.shape[:2]
        binary_mask = pre.mask_to_binary(mask, height, width)
        if isinstance(reference, EncodedReference):
            self._require_own_encoding(reference)
            encoded = reference if not reference.imitates else replace(
                reference, embeds_cond=self._to_model(reference.embeds_cond),
                embeds_uncond=self._to_model(reference.embeds_uncond))
        else:
            encoded = self.encode_reference(reference)

        if regions.region == "whole":
            squares = [(whole_image_box(height, width), binary_mask)]
        elif regions.region == "crop":
            squares = [(plan_crop(binary_mask, regions.context, regions.min_side), binary_mask)]
        else:
            squares = [(plan_crop(part, regions.context, regions.min_side), part) for part in region_masks(binary_mask)]
        streams = SeedStreams.from_seed(int(sampling.seed), generator_device or self.models.device)
        outputs = np.repeat(source_uint8[None], sampling.num_samples, axis=0)
        for box, region_mask in squares:
            if keep_shape and depth_map is None:
                region_depth = self.depth_map(pre.uint8_to_image(cut(source_uint8, box, 255)))
            elif keep_shape:
                region_depth = crop_depth_map(depth_map, box, height, width)
            else:
                region_depth = self.depth_map(None)
            latents, square = self._edit_square(cut(source_uint8, box, 255), cut(region_mask, box, 0), encoded,
                                                region_depth, streams, sampling, callback, should_stop)
            outputs = np.stack([stitch(output, region_mask, box, image) for output, image in zip(outputs, square)])
        return EditResult(pre.uint8_to_image(outputs), latents, square, region_depth)

    def _edit_square(self, square_source: np.ndarray, square_mask: np.ndarray, encoded: EncodedReference,
                     depth_map: torch.Tensor, streams: SeedStreams, sampling: SamplingOptions,
                     callback, should_stop) -> tuple[torch.Tensor, np.ndarray]:
        """One square (padded image or crop) through the model: final latents and the uint8 output."""
        device, dtype = self.models.device, self.models.dtype
        working_size = sampling.working_size
        latent_size = self.models.latent_size(working_size)
        collage = pre.make_collage(square_source, square_mask)
        mask_at_size = pre.binary_mask_at(square_mask, working_size)
        depth_feature = self.models.depth_guider(self._to_model(depth_map), size=working_size)

        # the sampling state (noise, latents, the solver's arithmetic) is float32 whatever the networks'
        # precision, as ComfyUI's samplers keep it: in fp16 or bf16 only the networks round
        shape = (1, 4, latent_size, latent_size)
        generator = streams.main
        # drawn with no reference image too (an edit of no_reference()), so its noise is a one-reference edit's
        reference_noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        noise = randn_tensor((sampling.num_samples,) + shape[1:], generator=generator, device=device,
                             dtype=torch.float32)
        collage_mean, collage_std = self._posterior([collage], working_size)
        collage_noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if len(encoded.images) > 1:  # further views from their own stream: adding one moves no other draw
            reference_noise = torch.cat([reference_noise, randn_tensor(
                (len(encoded.images) - 1,) + shape[1:], generator=streams.extra_views, device=device,
                dtype=torch.float32)])

        scale = self.scaling_factor
        reference_latents = None
        if encoded.imitates:
            reference_mean, reference_std = self._reference_posterior(encoded, working_size)
            reference_latents = ((reference_mean + reference_std * reference_noise) * scale).to(dtype)
        masked_latents = ((collage_mean + collage_std * collage_noise) * scale).to(dtype)
        source_latents = (self._posterior([square_source], working_size)[0].float() * scale
                          if sampling.denoise < 1 else None)
        # before the first step, side by side, not layer after layer inside it; the reference U-Net only if it runs
        self.models.pack_for(working_size, reference=encoded.imitates)
        latents = self._denoise(
            noise, reference_latents, masked_latents, self._to_model(pre.latent_mask(mask_at_size, latent_size)),
            depth_feature, encoded, sampling, callback, should_stop, source_latents)
        square = np.stack([pre.output_to_uint8(self.models.vae.decode((latent[None] / scale).to(dtype)).sample)[0]
                           for latent in latents])
        return latents, square

    def _denoise(self, noise, reference_latents, masked_latents, latent_mask, depth_feature,
                 encoded: EncodedReference, sampling: SamplingOptions, callback=None, should_stop=None,
                 source_latents: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling loop.

        Fast mode, not exact: ``reference_every`` k > 1 recomputes the reference features every k
        steps (0: once, at the first step) instead of at every step; ``guided_fraction`` < 1 guides
        only the first ``round(guided_fraction * steps)`` steps; ``deep_features_every`` k > 1 runs
        the whole imitative U-Net every k steps and only its outermost level between (a step after
        guidance ends runs whole: its batch is another).

        ``denoise`` < 1 runs the last ``steps`` of a longer schedule from ``source_latents`` noised
        to its first level; ``reference_strength`` weighs the reference keys (0: not attended,
        nor computed).
        """
        models = self.models
        scheduler = make_scheduler(sampling.sampler)
        scheduler.set_timesteps(sampling.schedule_steps, device=models.device)
        first_step = len(scheduler.timesteps) - sampling.steps
        timesteps = scheduler.timesteps[first_step:]
        if first_step:
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(first_step)
            latents = scheduler.add_noise(source_latents, noise, timesteps[:1])
        else:
            latents = noise * scheduler.init_noise_sigma
        samples = noise.shape[0]
        total = len(timesteps)
        imitates = encoded.imitates and sampling.reference_strength > 0
        guided_steps = (round(sampling.guided_fraction * total)
                        if sampling.guidance > 1.0 and encoded.imitates else 0)
        cond_context, uncond_context = encoded.contexts()
        cond = cond_context.expand(samples, -1, -1)
        guided_context = torch.cat([uncond_context.expand(samples, -1, -1), cond])
        conditioning = torch.cat([latent_mask, masked_latents, depth_feature], dim=1)
        reference_keep = encoded.keep_at(sampling.working_size, latents.shape[-1]) if imitates else None
        deep = DeepFeatureCache(models.unet) if sampling.deep_features_every > 1 else None
        whole = whole_steps(total, guided_steps, sampling.deep_features_every)
        every = sampling.reference_every
        with install_reference_attention(models.referencenet, models.unet) as handle, workspace_released_after():
            handle.bank.reference_strength = sampling.reference_strength
            for index, timestep in enumerate(timesteps):
                if should_stop is not None and should_stop():
                    raise EditInterrupted(f"Stopped before step {index + 1} of {total}.")
                if imitates and (index == 0 or (every > 0 and index % every == 0)):
                    handle.record(reference_latents, timestep, encoded.embeds_cond, reference_keep)
                handle.bank.conditional_rows = samples if imitates else 0
                guided = index < guided_steps
                rows = 2 * samples if guided else samples
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, timestep)
                model_input = torch.cat([model_input.to(conditioning.dtype), conditioning.expand(rows, -1, -1, -1)],
                                        dim=1)
                context = guided_context if guided else cond
                if deep is None:
                    eps = models.unet(model_input, timestep, encoder_hidden_states=context).sample
                elif whole[index]:
                    eps = deep.full(model_input, timestep, context)
                else:
                    eps = deep.shallow(model_input, timestep, context)
                eps = eps.float()
                if guided:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + sampling.guidance * (eps_cond - eps_uncond)
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
