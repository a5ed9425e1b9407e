"""The reference encoder node: encode a reference once, use it for many edits."""

from __future__ import annotations

from .handles import MODEL_TYPE, REFERENCE_TYPE, EncodedReferences
from .loaders import CATEGORY


class MimicBrushEncodeReference:
    DESCRIPTION = ("Prepares a reference image for MimicBrush (CLIP image embeddings and VAE latents). "
                   "Encode once and connect it to several samplers: each edit then skips this work.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (REFERENCE_TYPE,)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The encoded reference, one per image of the batch.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mimicbrush": (MODEL_TYPE, {"tooltip": "The model from the MimicBrush loader."}),
            "image": ("IMAGE", {"tooltip": "The reference whose matching part the edit imitates; no mask "
                                           "needed. Any size; it is padded to a square."}),
        }}

    def encode(self, mimicbrush, image):
        pipeline = mimicbrush.ready()
        return (EncodedReferences([pipeline.encode_reference(single) for single in image]),)
