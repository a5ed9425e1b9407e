"""Loader nodes: MimicBrush itself and Depth Anything."""

from __future__ import annotations

import copy
import logging

import comfy.model_management as mm
import torch

from .comfy_bridge import PRECISIONS, choose_dtype, make_patcher
from .handles import DEPTH_MODEL_TYPE, MODEL_TYPE, DepthAnythingModel, MimicBrushModel
from .model_folders import DEMO_CHOICE, DEPTH_FOLDER, MIMICBRUSH_FOLDER, model_choices, resolve_model_path

CATEGORY = "MimicBrush"
logger = logging.getLogger(__name__)
PRECISION_TOOLTIP = ("Weight precision. auto: fp16 (or bf16) on a GPU that supports it, fp32 on the CPU. "
                     "fp32 is the exact reference; half precision halves memory. On a CPU with AVX512-BF16 or "
                     "AMX, bf16 runs a step about 1.6x faster than fp32 (not exact); elsewhere it is emulated, "
                     "and slower.")


class MimicBrushLoader:
    DESCRIPTION = ("Loads MimicBrush: the imitative and reference U-Nets, the CLIP image encoder with its "
                   "projection and the depth guider from one checkpoint (models/mimicbrush: the authors' "
                   "mimicbrush.bin or its converted .safetensors), plus the SD VAE from models/vae. "
                   "Loaded once and reused; ComfyUI decides what stays on the GPU.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("mimicbrush",)
    OUTPUT_TOOLTIPS = ("The loaded MimicBrush model, for the reference encoder and the imitative sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": (model_choices(MIMICBRUSH_FOLDER, with_demo=True), {
                "tooltip": "MimicBrush checkpoint in models/mimicbrush: mimicbrush.bin (9.4 GB, Hugging Face "
                           "xichenhku/MimicBrush) or its conversion by 'python -m mimic_core convert' (faster). "
                           f"'{DEMO_CHOICE}' is a toy trained on synthetic shapes at 128 px that ships with the "
                           "pack so it runs without downloads; it is not MimicBrush and is useless on photos."}),
            "vae": (model_choices("vae", with_demo=True), {
                "tooltip": "The SD 1.x VAE in models/vae; the authors use sd-vae-ft-mse. The demo checkpoint "
                           f"takes the demo VAE ('{DEMO_CHOICE}')."}),
            "depth_model": (DEPTH_MODEL_TYPE, {
                "tooltip": "Depth Anything from the Depth Anything loader. MimicBrush needs it even with shape "
                           "control off: the released model then sees the depth of a blank image."}),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
        }}

    def load(self, checkpoint, vae, depth_model, precision):
        from ..mimic_core.models import load_models
        from ..mimic_core.pipeline import MimicBrushPipeline
        from ..mimic_core.shape_control import blank_depth_map

        checkpoint_path, vae_path = _checkpoint_and_vae(checkpoint, vae)
        dtype = choose_dtype(precision, mm.get_torch_device())
        # cast here, on the offload device, a layer at a time: each file-backed float32 weight is given back
        # once its copy is made, so a half-precision load never holds both (the patcher's cast is then a no-op)
        models = load_models(checkpoint_path, vae_path, dtype=dtype, device=mm.unet_offload_device())
        blank_depth = blank_depth_map(depth_model.ready()).to("cpu", torch.float32)
        patcher = make_patcher(models.modules(), dtype)
        pipeline = MimicBrushPipeline(models, blank_depth=blank_depth)
        return (MimicBrushModel(pipeline, patcher, _preview_colours(checkpoint, pipeline)),)


def _preview_colours(checkpoint: str, pipeline) -> list[list[float]] | None:
    """The demo VAE's own latent-to-RGB matrix for the step previews, fitted on the demo's example
    pictures with a float32 copy of its tiny VAE on the CPU (about 0.1 s; the loaded one may be fp16,
    which the CPU runs slowly); None for a real checkpoint, whose SD VAE ComfyUI's previews know."""
    if checkpoint != DEMO_CHOICE:
        return None
    from ..mimic_core.demo import demo_example
    from ..mimic_core.image_files import read_rgb_uint8
    from ..mimic_core.latent_colours import fit_latent_rgb_factors

    example = demo_example()
    pictures = [read_rgb_uint8(example.source), read_rgb_uint8(example.reference)]
    vae = copy.deepcopy(pipeline.models.vae).to("cpu", torch.float32)
    return fit_latent_rgb_factors(vae, pictures, pipeline.scaling_factor)


def _checkpoint_and_vae(checkpoint: str, vae: str) -> tuple[str, str]:
    from ..mimic_core.errors import InputError
    from ..mimic_core.model_files import WHERE_TO_DOWNLOAD

    if (checkpoint == DEMO_CHOICE) != (vae == DEMO_CHOICE):
        raise InputError(f"The demo model and its VAE go together: choose '{DEMO_CHOICE}' for both checkpoint and "
                         "vae, or a real checkpoint with a real SD VAE (sd-vae-ft-mse).")
    if checkpoint == DEMO_CHOICE:
        from ..mimic_core.demo import DEMO_NOTICE, demo_model_files

        logger.warning(DEMO_NOTICE)
        files = demo_model_files()
        return str(files.checkpoint), str(files.vae)
    return (resolve_model_path(MIMICBRUSH_FOLDER, checkpoint, "MimicBrush checkpoint", WHERE_TO_DOWNLOAD["checkpoint"]),
            resolve_model_path("vae", vae, "VAE", WHERE_TO_DOWNLOAD["vae"]))


class MimicBrushDepthAnythingLoader:
    DESCRIPTION = ("Loads Depth Anything from models/depth_anything: the authors' depth_anything_vitb14.pth "
                   "(original layout) or a transformers-format folder (V1 or V2, any size; pick its "
                   "model.safetensors).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (DEPTH_MODEL_TYPE,)
    RETURN_NAMES = ("depth_model",)
    OUTPUT_TOOLTIPS = ("The depth model, for the MimicBrush loader and the depth node.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(DEPTH_FOLDER, with_demo=True), {
                "tooltip": "depth_anything_vitb14.pth (390 MB, from xichenhku/MimicBrush, folder depth_model/) "
                           "or the model.safetensors of a transformers Depth Anything folder. "
                           f"'{DEMO_CHOICE}' is the tiny random depth model that goes with the demo checkpoint."}),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
        }}

    def load(self, model, precision):
        from ..mimic_core.depth import load_depth_model
        from ..mimic_core.model_files import WHERE_TO_DOWNLOAD

        if model == DEMO_CHOICE:
            from ..mimic_core.demo import demo_model_files

            path = str(demo_model_files().depth_model)
        else:
            path = resolve_model_path(DEPTH_FOLDER, model, "Depth Anything model", WHERE_TO_DOWNLOAD["depth"])
        network = load_depth_model(path)
        dtype = choose_dtype(precision, mm.get_torch_device())
        return (DepthAnythingModel(network, make_patcher({"depth_model": network}, dtype)),)


class DepthAnythingLoader(MimicBrushDepthAnythingLoader):
    """The depth loader under its first node id, which lacked the pack's prefix (a name as generic as
    this one has been another pack's: early versions of comfyui_controlnet_aux registered it). Kept so
    that workflows saved with it still load and run; marked deprecated, so that today's ComfyUI leaves
    it out of the node library and new workflows get :class:`MimicBrushDepthAnythingLoader`."""

    DEPRECATED = True
