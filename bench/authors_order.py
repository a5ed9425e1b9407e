"""The authors' computation order, re-created from the SPEC as a measuring stick (not product code).

Per step their code runs the reference U-Net on both guidance halves ([uncond, cond] context,
batch 2, to the end), and in every mid/up self-attention of the imitative U-Net attends with all
2N tokens of [x ; r] as queries for both halves, keeps the first N rows, computes plain
self-attention as well, and keeps the reference mix only for the conditional half. Their depth
pass runs with autograd on. The function is the same as the engine's exact mode.

Their loading (:func:`load_like_authors`) reads the ``.bin`` into memory with ``torch.load`` and
copies it into networks built beforehand, so every weight is in memory before their first edit;
:func:`read_every_weight` puts networks loaded by the engine's memory-mapping reader in that state.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mimic_core.attention import reference_block_names
from mimic_core.blank_embedding import compute_blank_embedding
from mimic_core.checkpoint import PARTS, default_config
from mimic_core.components import DepthGuider, ImageProjection, build_image_encoder
from mimic_core.depth import depth_input_from_image
from mimic_core.files import read_json
from mimic_core.preprocess import image_to_uint8, pad_to_square
from mimic_core.pipeline import EditInterrupted, MimicBrushPipeline, make_scheduler


def load_like_authors(path, config_dir) -> dict[str, torch.nn.Module]:
    """The five networks the authors' way: ``torch.load`` of the whole ``.bin`` into memory, then
    ``load_state_dict`` copies into networks built from their configs. They build those networks
    with ``from_pretrained`` on base weights read from disk; here they are built on the meta device
    and given empty storage, a cheaper stand-in, so this stick measures them on the fast side."""
    from diffusers import UNet2DConditionModel

    state_dicts = torch.load(path, map_location="cpu", weights_only=True)
    configs = read_checkpoint_configs(config_dir)
    with torch.device("meta"):
        networks = {"unet": UNet2DConditionModel.from_config(configs["unet"]),
                    "referencenet": UNet2DConditionModel.from_config(configs["referencenet"]),
                    "image_proj": ImageProjection(*reversed(state_dicts["image_proj"]["projector.weight"].shape)),
                    "depth_guider": DepthGuider(configs["depth_guider"]["conditioning_embedding_channels"],
                                                configs["depth_guider"]["conditioning_channels"],
                                                tuple(configs["depth_guider"]["block_out_channels"]))}
    networks = {name: network.to_empty(device="cpu") for name, network in networks.items()}
    for name, network in networks.items():
        network.load_state_dict(state_dicts[name], strict=name != "referencenet")
    # CLIP's derived buffers need the engine's builder; its weights are copied in the same way
    networks["image_encoder"] = build_image_encoder(
        configs["image_encoder"], {k: torch.empty_like(v) for k, v in state_dicts["image_encoder"].items()})
    networks["image_encoder"].load_state_dict(
        {k: v for k, v in state_dicts["image_encoder"].items() if not k.endswith("position_ids")}, strict=False)
    return networks


def read_every_weight(networks) -> None:
    """Read every parameter and buffer of ``networks`` once, as a first forward pass would: memory-mapped
    weights are then in this process's memory (the authors' state after their ``torch.load``) rather
    than paged in during the first pass that uses them."""
    for network in networks:
        for tensor in [*network.parameters(), *network.buffers()]:
            tensor.detach().sum()


def read_checkpoint_configs(config_dir) -> dict:
    """The five parts' configs, as the engine resolves them (without reading any weights)."""
    files = {part: Path(config_dir) / f"{part}_config.json" for part in PARTS}
    return {part: read_json(file) if file.is_file() else default_config(part) for part, file in files.items()}


def _attend(attn, queries, keys_values):
    def split(t):
        return t.view(t.shape[0], t.shape[1], attn.heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(attn.to_q(queries)), split(attn.to_k(keys_values)),
                                         split(attn.to_v(keys_values)))
    return attn.to_out[0](out.transpose(1, 2).reshape(queries.shape[0], queries.shape[1], -1))


class AuthorsWriter:
    def __init__(self, bank: dict, name: str):
        self.bank, self.name = bank, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        self.bank[self.name] = hidden_states.clone()  # their bank keeps copies
        return _attend(attn, hidden_states, hidden_states)


class AuthorsReader:
    def __init__(self, bank: dict, name: str):
        self.bank, self.name = bank, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        tokens = hidden_states.shape[1]
        joined = torch.cat([hidden_states, self.bank[self.name]], dim=1)
        with_reference = _attend(attn, joined, joined)[:, :tokens]
        plain = _attend(attn, hidden_states, hidden_states)
        half = hidden_states.shape[0] // 2
        conditional = 0.5 * with_reference[half:] + 0.5 * plain[half:]
        return torch.cat([plain[:half], conditional])


class AuthorsOrderPipeline(MimicBrushPipeline):
    """The engine with the authors' per-step computation (guided sampling only)."""

    @torch.inference_mode()
    def blank_embedding(self):
        """Their pipeline embeds the all-zero CLIP input at every call (IP-Adapter's way), keeping
        nothing between edits and reading none from the file."""
        return compute_blank_embedding(self.models.image_encoder, self.models.image_proj)

    def depth_map(self, source):
        """Their depth pass keeps autograd on (parameters requiring grad): it builds a graph."""
        if source is None:
            return super().depth_map(None)
        depth_model = self.models.depth_model.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            padded = pad_to_square(image_to_uint8(source), 255)
            depth = depth_model(pixel_values=depth_input_from_image(padded)).predicted_depth
        return depth.detach()

    def _denoise(self, noise, reference_latents, masked_latents, latent_mask, depth_feature, encoded, sampling,
                 callback=None, should_stop=None, source_latents=None):
        """Their loop guides every step: the bench only ever runs it with the exact defaults."""
        models = self.models
        guidance = sampling.guidance
        scheduler = make_scheduler(sampling.sampler)
        scheduler.set_timesteps(sampling.steps, device=models.device)
        samples = noise.shape[0]
        context = torch.cat([encoded.embeds_uncond.expand(samples, -1, -1), encoded.embeds_cond.expand(samples, -1, -1)])
        conditioning = torch.cat([latent_mask, masked_latents, depth_feature], dim=1).expand(2 * samples, -1, -1, -1)
        names = reference_block_names(models.unet)
        bank: dict = {}
        saved = {unet: dict(unet.attn_processors) for unet in (models.referencenet, models.unet)}
        for unet, kind in ((models.referencenet, AuthorsWriter), (models.unet, AuthorsReader)):
            processors = dict(saved[unet])
            processors.update({f"{name}.attn1.processor": kind(bank, name) for name in names})
            unet.set_attn_processor(processors)
        latents = noise * scheduler.init_noise_sigma
        try:
            for index, timestep in enumerate(scheduler.timesteps):
                if should_stop is not None and should_stop():
                    raise EditInterrupted("stopped")
                models.referencenet(torch.cat([reference_latents] * 2 * samples), timestep,
                                    encoder_hidden_states=context)
                # the engine's float32 sampling state, so that both run in fp16 or bf16 too (bench/gpu_check.py)
                scaled = scheduler.scale_model_input(torch.cat([latents] * 2), timestep).to(conditioning.dtype)
                model_input = torch.cat([scaled, conditioning], 1)
                output = models.unet(model_input, timestep, encoder_hidden_states=context).sample
                eps_uncond, eps_cond = output.float().chunk(2)
                latents = scheduler.step(eps_uncond + guidance * (eps_cond - eps_uncond), timestep, latents).prev_sample
                if callback is not None:
                    callback(index + 1, len(scheduler.timesteps), latents)
        finally:
            for unet, processors in saved.items():
                unet.set_attn_processor(processors)
        return latents
