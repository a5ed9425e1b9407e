"""The example-image node: the pictures that ship with the pack, loaded from the pack itself.

The shipped workflows use it instead of ComfyUI's Load Image, whose choices come from ComfyUI's
``input/`` folder: a workflow opened from the template browser on a fresh install then runs as
shipped, with nothing copied by hand. It gives what Load Image gives (IMAGE and MASK = 1 - alpha,
the mask editor's convention), so swapping in Load Image for one's own picture changes nothing
downstream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .loaders import CATEGORY

EXAMPLES = Path(__file__).resolve().parents[1] / "workflows" / "inputs"


def example_names() -> list[str]:
    return sorted(path.name for path in EXAMPLES.glob("*.png"))


class MimicBrushExampleImage:
    DESCRIPTION = ("One of the example pictures that ship with the pack (in its workflows/inputs folder), so that "
                   "the shipped workflows run without copying files into ComfyUI's input folder. For your own "
                   "picture use Load Image instead: it gives the same outputs.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The picture (RGB).",
                       "Where its alpha channel is transparent, as Load Image gives it: the sources carry their "
                       "mask there, as ComfyUI's mask editor saves it. All zeros when the picture has no alpha.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": (example_names(), {"tooltip": "An example picture of the pack. Sources carry their mask in the "
                                                   "alpha channel (transparent: the region to repaint), which the mask "
                                                   "output gives. To paint a mask of your own, load a picture with Load "
                                                   "Image and open it in the mask editor."}),
        }}

    def load(self, image):
        from ..mimic_core.errors import InputError
        from ..mimic_core.image_files import read_alpha, read_image_array

        if image not in example_names():
            raise InputError(f"'{image}' is not one of the pack's example pictures ({', '.join(example_names())}); "
                             "pick one from the list, or use Load Image for a picture of your own.")
        rgb = read_image_array(EXAMPLES / image, "RGB")
        alpha = read_alpha(EXAMPLES / image)
        opaque = np.ones(rgb.shape[:2], np.float32) if alpha is None else alpha
        return torch.from_numpy(rgb[None].copy()), torch.from_numpy(1.0 - opaque[None])
