"""The values that travel along this pack's custom wires, one concept each."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .comfy_bridge import load_to_device

MODEL_TYPE = "MIMICBRUSH_MODEL"
DEPTH_MODEL_TYPE = "DEPTH_ANYTHING"
REFERENCE_TYPE = "MIMICBRUSH_REFERENCE"
SHAPE_DEPTH_TYPE = "MIMICBRUSH_DEPTH"
CROP_TYPE = "MIMICBRUSH_CROP"


@dataclass
class MimicBrushModel:
    """MIMICBRUSH_MODEL: the loaded networks, their ComfyUI model patcher, and the pipeline; and the
    step previews' latent-to-RGB matrix where the VAE is not SD's (None: ComfyUI's SD 1.5 one)."""

    pipeline: object
    patcher: object
    latent_rgb_factors: list[list[float]] | None = None

    def ready(self):
        """The pipeline, with its networks on ComfyUI's compute device."""
        load_to_device(self.patcher)
        return self.pipeline


@dataclass
class DepthAnythingModel:
    """DEPTH_ANYTHING: a Depth Anything network and its ComfyUI model patcher."""

    model: torch.nn.Module
    patcher: object

    def ready(self) -> torch.nn.Module:
        load_to_device(self.patcher)
        return self.model


@dataclass
class EncodedReferences:
    """MIMICBRUSH_REFERENCE: one encoded reference per image of the reference batch."""

    items: list = field(default_factory=list)


@dataclass
class ShapeDepth:
    """MIMICBRUSH_DEPTH: per image, the depth of the square-padded image and the image's size."""

    maps: list[torch.Tensor]
    sizes: list[tuple[int, int]]


@dataclass
class CropInfo:
    """MIMICBRUSH_CROP: per image, the untouched original (uint8), its 0/1 mask and the crop box."""

    originals: list
    masks: list
    boxes: list
