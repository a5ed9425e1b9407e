"""Crop and stitch nodes: edit a region of a large image at full detail, with any nodes in between."""

from __future__ import annotations

import torch

from .handles import CROP_TYPE, CropInfo
from .loaders import CATEGORY

WORKING_SIZE = ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64,
                        "tooltip": "Side of the square the model works on; 512 is what MimicBrush was trained at "
                                   "(the built-in demo model: 128)."})
CONTEXT = ("FLOAT", {"default": 2.0, "min": 1.0, "max": 8.0, "step": 0.1,
                     "tooltip": "Crop side as a multiple of the mask's extent: more context, less detail."})
MIN_SIDE = ("INT", {"default": 256, "min": 16, "max": 8192, "step": 16,
                    "tooltip": "Smallest crop side in source pixels, so a tiny mask still gets some context."})


class MimicBrushCropAroundMask:
    DESCRIPTION = ("Cuts a square around the mask (several islands share one crop) and scales it to the working "
                   "size, so a small edit on a large photo is generated at full detail. Edit the crop with any "
                   "nodes, then put it back with MimicBrush Stitch.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", CROP_TYPE)
    RETURN_NAMES = ("image", "mask", "crop")
    OUTPUT_TOOLTIPS = ("The crop at the working size.", "The mask of the crop at the working size.",
                       "Where the crop came from, for MimicBrush Stitch.")
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The full image to edit."}),
            "mask": ("MASK", {"tooltip": "Where to edit (white). Batches cycle to the longer one."}),
            "working_size": WORKING_SIZE,
            "context": CONTEXT,
            "min_side": MIN_SIDE,
        }}

    def crop(self, image, mask, working_size, context, min_side):
        from ..mimic_core.crop import crop_for_editing
        from ..mimic_core.preprocess import image_to_uint8, mask_to_binary, uint8_to_image

        masks = mask if mask.ndim == 3 else mask.unsqueeze(0)
        count = max(image.shape[0], masks.shape[0])
        info, crops, crop_masks = CropInfo([], [], []), [], []
        for index in range(count):
            original = image_to_uint8(image[index % image.shape[0]], "image")
            binary = mask_to_binary(masks[index % masks.shape[0]], *original.shape[:2])
            crop, crop_mask, box = crop_for_editing(original, binary, working_size, context, min_side)
            info.originals.append(original)
            info.masks.append(binary)
            info.boxes.append(box)
            crops.append(uint8_to_image(crop))
            crop_masks.append(torch.from_numpy(crop_mask.astype("float32")))
        return torch.cat(crops), torch.stack(crop_masks), info


class MimicBrushStitch:
    DESCRIPTION = ("Puts an edited crop back into the untouched full-resolution original, blended with a "
                   "feathered mask a few pixels wide at the original's scale; everything else stays bit for bit.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The full image with the edit stitched in.",)
    FUNCTION = "stitch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "crop": (CROP_TYPE, {"tooltip": "From MimicBrush Crop Around Mask."}),
            "image": ("IMAGE", {"tooltip": "The edited crop (any square size). A batch of results per crop is fine: "
                                           "results are matched to crops in turn."}),
        }}

    def stitch(self, crop, image):
        from ..mimic_core.crop import stitch
        from ..mimic_core.errors import InputError
        from ..mimic_core.preprocess import image_to_uint8, uint8_to_image

        height, width = image.shape[1:3]
        if height != width:
            raise InputError(f"The image to stitch back is {width}x{height}, not square: connect the edit of this "
                             "crop (the MimicBrush Sampler's image, made from the crop node's square image).")
        results = []
        for index in range(max(image.shape[0], len(crop.boxes))):
            item = index % len(crop.boxes)
            edited = image_to_uint8(image[index % image.shape[0]], "edited crop")
            results.append(uint8_to_image(stitch(crop.originals[item], crop.masks[item], crop.boxes[item], edited)))
        return (torch.cat(results),)
