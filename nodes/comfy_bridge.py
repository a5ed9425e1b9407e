"""What turns ComfyUI's services into the engine's hooks: device and precision choice, model
memory (ModelPatcher + load_models_gpu), and a per-step callback giving progress, previews and
cancel."""

from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import latent_preview

PRECISIONS = ["auto", "fp32", "fp16", "bf16"]


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        return torch.float32
    if mm.should_use_fp16(device):
        return torch.float16
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


class ManagedModules(torch.nn.ModuleDict):
    """Modules handed to ComfyUI's model management as one model, with the dtype it asks for."""

    def __init__(self, modules: dict[str, torch.nn.Module], dtype: torch.dtype):
        super().__init__(modules)
        self.managed_dtype = dtype

    def get_dtype(self) -> torch.dtype:
        return self.managed_dtype


def make_patcher(modules: dict[str, torch.nn.Module], dtype: torch.dtype):
    """A ModelPatcher over ``modules`` (kept on the offload device until ComfyUI loads it)."""
    managed = ManagedModules(modules, dtype)
    offload = mm.unet_offload_device()
    managed.to(device=offload, dtype=dtype)
    return comfy.model_patcher.ModelPatcher(managed, load_device=mm.get_torch_device(), offload_device=offload)


def load_to_device(patcher) -> None:
    """Ask ComfyUI for room and put the modules on its compute device; others are evicted only as needed."""
    mm.load_models_gpu([patcher])


class StepProgress:
    """A progress bar over every denoising step of a node run, with a small preview image.

    Each update is also ComfyUI's interrupt point: a cancel raises there, between two steps.
    Previews follow ComfyUI's preview setting, falling back to the cheap latent-to-RGB preview.
    """

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)
        self.done = 0
        self.previewer = latent_preview.get_previewer(mm.get_torch_device(), comfy.latent_formats.SD15()) or \
            latent_preview.Latent2RGBPreviewer(comfy.latent_formats.SD15().latent_rgb_factors)

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None:
        self.done += 1
        if self.done > self.bar.total:  # more masked regions than planned: extend by this region's steps
            self.bar.total = self.done + total - step
        preview = self.previewer.decode_latent_to_preview_image("JPEG", latents.float())
        self.bar.update_absolute(self.done, preview=preview)

    @staticmethod
    def check_cancel() -> None:
        mm.throw_exception_if_processing_interrupted()
