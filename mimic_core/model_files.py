"""Where the released model files live in a models folder, and what to say when one is missing.

The layout is the authors' (``mimicbrush/``, ``sd-vae-ft-mse/``, ``depth_model/``), so a folder
downloaded from their Hugging Face repositories works as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError

CHECKPOINT_CANDIDATES = ("mimicbrush/mimicbrush.safetensors", "mimicbrush/mimicbrush.bin",
                         "mimicbrush.safetensors", "mimicbrush.bin")
VAE_CANDIDATES = ("sd-vae-ft-mse", "vae")
DEPTH_CANDIDATES = ("depth_model/depth_anything_vitb14.pth", "depth_anything_vitb14.pth", "depth_model/config.json")
"""The authors' ``.pth``, or a transformers-format Depth Anything folder (found by its ``config.json``)."""

WHERE_TO_DOWNLOAD = {
    "checkpoint": "mimicbrush/mimicbrush.bin (9.4 GB) from the Hugging Face repository xichenhku/MimicBrush "
                  "or ModelScope xichen/MimicBrush",
    "vae": "the folder sd-vae-ft-mse/ from xichenhku/MimicBrush (or stabilityai/sd-vae-ft-mse)",
    "depth": "depth_model/depth_anything_vitb14.pth (390 MB) from xichenhku/MimicBrush",
}


@dataclass
class ModelFiles:
    checkpoint: Path
    vae: Path
    depth_model: Path


def _find(models_dir: Path | None, candidates: tuple[str, ...], explicit: str | Path | None, what: str) -> Path:
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise ModelFileError(f"The {what} file '{path}' does not exist. Get {WHERE_TO_DOWNLOAD[what]}.")
        return path
    if models_dir is None:
        option = {"checkpoint": "--checkpoint", "vae": "--vae", "depth": "--depth-model"}[what]
        raise ModelFileError(f"No models folder was given, so the {what} cannot be found. Pass {option} FILE, or "
                             f"--models DIR holding {candidates[0]} ({WHERE_TO_DOWNLOAD[what]}).")
    for candidate in candidates:
        if (models_dir / candidate).exists():
            found = models_dir / candidate
            return found.parent if found.name == "config.json" else found
    expected = [f"a transformers-format folder {name[:-len('config.json')]} (config.json, model.safetensors)"
                if name.endswith("config.json") else name for name in candidates]
    raise ModelFileError(
        f"The {what} was not found in '{models_dir}': expected {' or '.join(expected)}. "
        f"Download {WHERE_TO_DOWNLOAD[what]} and put it there."
    )


def find_model_files(models_dir: str | Path | None, *, checkpoint=None, vae=None, depth_model=None) -> ModelFiles:
    """Resolve the three model files, explicit paths first, then the authors' layout in ``models_dir``."""
    root = Path(models_dir) if models_dir is not None else None
    if root is not None and root.exists() and not root.is_dir():
        raise ModelFileError(f"The models folder '{root}' is a file, not a folder: give the folder that holds the "
                             "model files (mimicbrush/, sd-vae-ft-mse/, depth_model/).")
    if root is not None and not root.is_dir():
        raise ModelFileError(f"The models folder '{root}' does not exist.")
    return ModelFiles(
        checkpoint=_find(root, CHECKPOINT_CANDIDATES, checkpoint, "checkpoint"),
        vae=_find(root, VAE_CANDIDATES, vae, "vae"),
        depth_model=_find(root, DEPTH_CANDIDATES, depth_model, "depth"),
    )
