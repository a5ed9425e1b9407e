"""What turns ComfyUI's services into the engine's hooks: device and precision choice, model
memory (ModelPatcher + load_models_gpu), and a per-step callback giving progress, previews and
cancel."""

from __future__ import annotations

import inspect
import itertools
import logging

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import latent_preview

from ..mimic_core.errors import MimicBrushError

logger = logging.getLogger(__name__)
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The precision asked for (a half precision the CPU only emulates is warned about), or auto's."""
    if precision != "auto":
        from ..mimic_core.cpu_precision import slow_precision_warning

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if (warning := slow_precision_warning(dtype, device)) is not None:
            logger.warning(warning)
        return dtype
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


class DeviceMemoryError(MimicBrushError, torch.OutOfMemoryError):
    """The compute device cannot hold the networks whole. Still an out-of-memory error, so that
    ComfyUI unloads its models after the failed run as it does for any other."""


def load_to_device(patcher) -> None:
    """Put every parameter and buffer of the patcher's modules on ComfyUI's compute device.

    ComfyUI evicts other models only as needed. Its partial loading (a GPU short of memory) keeps
    on the CPU what does not fit of modules without its cast-weights layers, which is all of ours:
    a step would then mix devices. So the load is whole: ``force_full_load`` where the host has it
    (0.3.75 frees room first, then moves everything); the 2024 host's low-VRAM path moves only
    modules that have a ``weight``, and the rest (CLIP's class embedding, buffers) follows here.
    """
    whole = {"force_full_load": True} if "force_full_load" in inspect.signature(mm.load_models_gpu).parameters else {}
    device = patcher.load_device
    try:
        mm.load_models_gpu([patcher], **whole)
        if off_device(patcher.model, device):
            patcher.model.to(device)
    except torch.OutOfMemoryError as error:
        raise DeviceMemoryError(
            f"MimicBrush needs its {patcher.model_size() / 2**20:.0f} MB of {patcher.model.get_dtype()} weights "
            f"whole on {device} (its networks cannot run partly offloaded), and they did not fit even after "
            "ComfyUI unloaded its other models. Choose precision fp16 in the MimicBrush and Depth Anything loaders "
            "(half the memory), close other programs that use the GPU, or start ComfyUI with --cpu (slow)."
        ) from error


def off_device(module: torch.nn.Module, device: torch.device) -> list[str]:
    """Names of the parameters and buffers of ``module`` that are not on ``device``."""
    tensors = itertools.chain(module.named_parameters(), module.named_buffers())
    return [name for name, tensor in tensors if not _same_device(tensor.device, device)]


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    wanted = torch.device(wanted)
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


class StepProgress:
    """A progress bar over every denoising step of a node run, with a small preview image.

    Each update is also ComfyUI's interrupt point: a cancel raises there, between two steps.
    Previews follow ComfyUI's preview setting, falling back to the cheap latent-to-RGB preview; a model
    whose VAE is not SD's (the demo's) previews with its own latent-to-RGB matrix.
    """

    def __init__(self, total: int, latent_rgb_factors: list[list[float]] | None = None):
        self.bar = comfy.utils.ProgressBar(total)
        self.done = 0
        if latent_rgb_factors is not None:  # a VAE other than SD's: its own colours, in the cheap preview
            self.previewer = latent_preview.Latent2RGBPreviewer(latent_rgb_factors)
        else:
            self.previewer = latent_preview.get_previewer(mm.get_torch_device(), comfy.latent_formats.SD15()) or \
                latent_preview.Latent2RGBPreviewer(comfy.latent_formats.SD15().latent_rgb_factors)

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None:
        self.done += 1
        preview = self.previewer.decode_latent_to_preview_image("JPEG", latents.float())
        self.bar.update_absolute(self.done, preview=preview)

    @staticmethod
    def check_cancel() -> None:
        mm.throw_exception_if_processing_interrupted()
