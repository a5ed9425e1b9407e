"""The ComfyUI node layer: thin adapters from ComfyUI types and services to ``mimic_core``.

Each node module is imported on its own, so that one failing import (a missing optional
dependency, say) is logged and the rest of the pack still loads.
"""

from __future__ import annotations

import importlib
import logging

from .model_folders import register_model_folders

logger = logging.getLogger(__name__)

NODE_MODULES = {
    "example_nodes": {"MimicBrushExampleImage": "MimicBrush Example Image"},
    "loaders": {"MimicBrushLoader": "MimicBrush Loader",
                "MimicBrushDepthAnythingLoader": "Depth Anything Loader (MimicBrush)",
                "DepthAnythingLoader": "Depth Anything Loader (MimicBrush, old id)"},
    "depth_nodes": {"MimicBrushDepth": "MimicBrush Depth (shape control)"},
    "reference_nodes": {"MimicBrushEncodeReference": "MimicBrush Encode Reference",
                        "MimicBrushJoinReferences": "MimicBrush Join References"},
    "sampler_nodes": {"MimicBrushSampler": "MimicBrush Imitative Sampler"},
    "crop_nodes": {"MimicBrushCropAroundMask": "MimicBrush Crop Around Mask", "MimicBrushStitch": "MimicBrush Stitch"},
}

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

register_model_folders()
for module_name, nodes in NODE_MODULES.items():
    try:
        module = importlib.import_module(f".{module_name}", __name__)
    except Exception:  # one broken module must not take the whole pack down
        logger.exception("MimicBrush: could not load the nodes of '%s'", module_name)
        continue
    for class_name, display_name in nodes.items():
        NODE_CLASS_MAPPINGS[class_name] = getattr(module, class_name)
        NODE_DISPLAY_NAME_MAPPINGS[class_name] = display_name
