"""MimicBrush inference engine: zero-shot image editing with reference imitation.

A plain library on torch, diffusers and transformers (no ComfyUI). Names are imported lazily so
that ``import mimic_core`` stays cheap until a model is actually used.
"""

from importlib import import_module

_EXPORTS = {
    "MimicBrushError": "errors", "ModelFileError": "errors", "InputError": "errors", "EditInterrupted": "errors",
    "MimicBrushModels": "models", "load_models": "models",
    "MimicBrushPipeline": "pipeline", "EncodedReference": "pipeline", "EditResult": "pipeline",
    "read_checkpoint": "checkpoint", "convert_checkpoint": "checkpoint",
    "install_reference_attention": "attention",
    "find_model_files": "model_files",
    "load_vae": "vae", "load_depth_model": "depth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mimic_core' has no attribute '{name}'")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
