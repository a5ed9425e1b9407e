"""The reference encoder node: encode a reference once, use it for many edits."""

from __future__ import annotations

import torch

from .handles import MODEL_TYPE, REFERENCE_TYPE, EncodedReferences
from .loaders import CATEGORY

BATCH_USES = {"one reference per image": "each", "all images as one reference": "together"}


class MimicBrushEncodeReference:
    DESCRIPTION = ("Prepares a reference for MimicBrush (CLIP image embeddings and VAE latents). Encode once and "
                   "connect it to several samplers: each edit then skips this work. A batch of images is either "
                   "several references (one per image, cycled over the sources) or several views of one reference "
                   "(imitated together). A reference mask restricts what is imitated.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (REFERENCE_TYPE,)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The encoded reference(s).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mimicbrush": (MODEL_TYPE, {"tooltip": "The model from the MimicBrush loader."}),
                "image": ("IMAGE", {"tooltip": "The reference whose matching part the edit imitates; no mask "
                                               "needed. Any size; it is padded to a square."}),
            },
            "optional": {
                "reference_mask": ("MASK", {
                    "tooltip": "Where on the reference to imitate (white), e.g. one object of several in the photo. "
                               "Left open, the whole reference is imitated. One mask per image (a single mask "
                               "serves every image of its size)."}),
                "batch": (list(BATCH_USES), {
                    "default": "one reference per image",
                    "tooltip": "How a batch of reference images is used: one reference per image (each edit "
                               "takes the next), or all images as one reference (two views of the same object, "
                               "imitated together; costs more per step)."}),
            },
        }

    def encode(self, mimicbrush, image, reference_mask=None, batch="one reference per image"):
        from ..mimic_core.errors import InputError
        from ..mimic_core.preprocess import image_to_uint8, mask_to_binary

        if batch not in BATCH_USES:
            raise InputError(f"batch must be one of {', '.join(BATCH_USES)}, got {batch!r}.")
        images = list(image)
        for single in images:  # every image and mask checked before the models load
            image_to_uint8(single, "reference image")
        masks = None
        if reference_mask is not None:
            stacked = reference_mask if reference_mask.ndim == 3 else reference_mask.unsqueeze(0)
            if stacked.shape[0] not in (1, len(images)):
                raise InputError(f"{stacked.shape[0]} reference masks for {len(images)} reference "
                                 f"image{'s' if len(images) != 1 else ''}: give one mask per image, or a single mask "
                                 "for all.")
            # once per mask, at the batch's one size: a resize warns once, and the engine gets them ready
            binary = [torch.from_numpy(mask_to_binary(mask, *image.shape[1:3], of="reference")).float()
                      for mask in stacked]
            masks = [binary[index % len(binary)] for index in range(len(images))]
        pipeline = mimicbrush.ready()
        if BATCH_USES[batch] == "together":
            return (EncodedReferences([pipeline.encode_reference(images, masks)]),)
        return (EncodedReferences([pipeline.encode_reference(single, None if masks is None else masks[index])
                                   for index, single in enumerate(images)]),)


class MimicBrushJoinReferences:
    DESCRIPTION = ("Takes two encoded references together as one: the edit imitates both (two views of the same "
                   "object, say, one of them masked to the object). Each is encoded on its own, at its own size, "
                   "with or without a reference mask; chain this node to join more. When an input holds several "
                   "references (one per image), they are joined pairwise, the shorter list cycled.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (REFERENCE_TYPE,)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The joined reference(s): connect to a sampler, or to another join.",)
    FUNCTION = "join"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "reference_a": (REFERENCE_TYPE, {"tooltip": "An encoded reference (from MimicBrush Encode Reference)."}),
            "reference_b": (REFERENCE_TYPE, {"tooltip": "Another encoded reference, imitated together with the first; "
                                                        "each costs a reference pass per step."}),
        }}

    def join(self, reference_a, reference_b):
        from ..mimic_core.pipeline import EncodedReference

        count = max(len(reference_a.items), len(reference_b.items))
        return (EncodedReferences([
            EncodedReference.joined([reference_a.items[index % len(reference_a.items)],
                                     reference_b.items[index % len(reference_b.items)]])
            for index in range(count)]),)
