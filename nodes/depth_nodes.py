"""The depth node: any IMAGE to a viewable depth image and MimicBrush's shape-control input."""

from __future__ import annotations

import torch

from .handles import DEPTH_MODEL_TYPE, SHAPE_DEPTH_TYPE, ShapeDepth
from .loaders import CATEGORY


class MimicBrushDepth:
    DESCRIPTION = ("Estimates depth with Depth Anything, as MimicBrush's shape control needs it (the image "
                   "padded to a square, the authors' preprocessing). Gives a viewable depth image (near = "
                   "white) usable by any graph, and the shape-control input of the imitative sampler.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", SHAPE_DEPTH_TYPE)
    RETURN_NAMES = ("depth_image", "shape_depth")
    OUTPUT_TOOLTIPS = ("Depth as a grey image at the input's size (normalised per image).",
                       "Shape control for the imitative sampler: keeps the source's shape in the edit.")
    FUNCTION = "estimate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "depth_model": (DEPTH_MODEL_TYPE, {"tooltip": "Depth Anything, from the Depth Anything loader."}),
            "image": ("IMAGE", {"tooltip": "The image to estimate depth of; for shape control, the source image "
                                           "you will edit."}),
        }}

    def estimate(self, depth_model, image):
        from ..mimic_core.preprocess import image_to_uint8
        from ..mimic_core.shape_control import depth_picture, square_depth_map

        network = depth_model.ready()
        maps, pictures = [], []
        height, width = image.shape[1:3]
        for single in image:
            depth = square_depth_map(network, image_to_uint8(single, "image")).to("cpu", torch.float32)
            maps.append(depth)
            pictures.append(depth_picture(depth, height, width))
        return torch.stack(pictures), ShapeDepth(maps, [(height, width)] * len(maps))
